"""`--serve HOST:PORT`: the annotated stream as MJPEG over HTTP, for a headless Pi.

Standard library only (http.server's ThreadingHTTPServer) plus cv2.imencode.

    GET /             a page with the stream and the current attributes (polls /state.json)
    GET /stream.mjpg  multipart/x-mixed-replace JPEG stream (any browser, VLC, ffplay)
    GET /frame.jpg    the latest frame, once
    GET /state.json   {"frame", "timestamp_ms", "fps", "faces": [...]} of the latest frame
    HEAD              any of them, headers only

The main loop calls `publish(frame, state)`; the frame is copied only while someone is
watching, and JPEG encoding happens in the client threads (once per frame, shared by all
clients), so an unwatched server costs the loop almost nothing.

What keeps it standing on a network (docs/live.md, "Serving"):
- every connection has a socket timeout (`timeout`, 10 s), and a request's line and headers
  must be in within `request_timeout` (15 s) however slowly they trickle: a client that
  sends half a request, or stops reading its stream, loses its connection instead of
  holding a thread;
- at most `max_connections` connections at once (256; more are closed at once) and at most
  `max_clients` streams (8; more get 503), with a listen backlog of `backlog` (128);
- the `Host` header must name this server (its bound address, localhost, an IP address,
  this machine's name, or a name given in `allowed_hosts`), else 421: a web page on another
  site cannot reach it by DNS rebinding;
- with `token` set, every request needs it: `?token=T` (which sets a cookie for the page's
  own requests), `Authorization: Bearer T`, or basic auth with T as the password (else 401).
  `server_from_args` refuses to serve beyond loopback without a token unless told `--no-auth`.
Binds 127.0.0.1 unless told otherwise; IPv6 as `[::1]:8080` or `[::]:8080`. `stop()` closes
the socket and every open connection, streams and half-sent requests alike.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
BOUNDARY = "facemtlframe"
TOKEN_ENV = "FACEMTL_AUTH_TOKEN"
COOKIE = "facemtl_token"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>facemtl live</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body { font-family: system-ui, sans-serif; background: #111; color: #ddd; margin: 1em; }
 .wrap { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
 img { max-width: 100%; border: 1px solid #333; }
 table { border-collapse: collapse; } td, th { padding: 2px 8px; text-align: left; }
 th { color: #8c8; } .muted { color: #777; }
</style></head>
<body><h3>facemtl live</h3>
<div class="wrap"><img src="stream.mjpg" alt="stream">
<div><div id="info" class="muted">waiting for frames</div><div id="faces"></div></div></div>
<script>
async function poll() {
  try {
    const r = await fetch("state.json", {cache: "no-store"});
    const s = await r.json();
    document.getElementById("info").textContent =
      `frame ${s.frame ?? "-"}  ${s.fps ? s.fps.toFixed(1) + " FPS" : ""}  ${s.faces ? s.faces.length : 0} face(s)`;
    let html = "";
    for (const f of (s.faces || [])) {
      html += `<table><tr><th colspan=2>face ${f.id ?? ""}</th></tr>`;
      for (const [head, c] of Object.entries(f.attributes || {}))
        html += `<tr><td>${head}</td><td>${c.label} ${c.score.toFixed(2)}</td></tr>`;
      html += "</table>";
    }
    document.getElementById("faces").innerHTML = html;
  } catch (e) { document.getElementById("info").textContent = "disconnected"; }
  setTimeout(poll, 500);
}
poll();
</script></body></html>
"""


def parse_address(text: str | None) -> tuple[str, int]:
    """`HOST:PORT`, `[IPV6]:PORT`, `:PORT` or `PORT` (host 127.0.0.1), or empty (127.0.0.1:8080)."""
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    text = str(text).strip()
    if text.startswith("[") and text.endswith("]"):  # an IPv6 address alone: the default port
        text = f"{text}:{DEFAULT_PORT}"
    host, sep, port = text.rpartition(":")
    if not sep or (text.startswith("[") and "]" not in text) or (not text.startswith("[") and ":" in host):
        if text.startswith("[") or ":" in host:
            raise ValueError(f"--serve wants HOST:PORT with an IPv6 host in brackets ([::1]:8080), got {text!r}")
        host, port = "", text
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"--serve: unbalanced brackets in {text!r}")
    host = host.strip("[]") or DEFAULT_HOST
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--serve wants HOST:PORT, :PORT or PORT, got {text!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} is out of range 0..65535")
    return host, p


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    """The host part of a Host header (`name`, `name:port`, `[v6]:port`), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a larger backlog, IPv6, a bound on open connections, and a
    record of them so `stop()` can end every one."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler, max_connections: int, backlog: int):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_queue_size = int(backlog)
        self.max_connections = int(max_connections)
        self.connections: set[socket.socket] = set()
        self.refused = 0
        self.reaped = 0
        # sockets still sending their request line and headers -> when they must be done: the
        # socket timeout alone lets a client that sends a byte every few seconds hold a thread
        # for ever (slowloris)
        self.deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        super().__init__(address, handler)

    def arm(self, request, seconds: float) -> None:
        with self._lock:
            self.deadlines[request] = time.monotonic() + seconds

    def disarm(self, request) -> None:
        with self._lock:
            self.deadlines.pop(request, None)

    def reap(self) -> None:
        """Shut down every connection whose request is not in by its deadline."""
        now = time.monotonic()
        with self._lock:
            late = [r for r, t in self.deadlines.items() if t < now]
            for r in late:
                del self.deadlines[r]
            self.reaped += len(late)
        for r in late:
            try:
                r.shutdown(socket.SHUT_RDWR)  # its thread's read returns at once; the handler ends
            except OSError:
                pass

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            # "::" serves IPv4 too where the system allows it; "::1" only loopback v6
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except (OSError, AttributeError):
                pass
        super().server_bind()

    def process_request(self, request, client_address) -> None:
        with self._lock:
            if len(self.connections) >= self.max_connections:
                self.refused += 1
                full = True
            else:
                self.connections.add(request)
                full = False
        if full:  # no thread for it: the cheapest answer to a flood is a closed socket
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._lock:
            self.connections.discard(request)
            self.deadlines.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # a client that went away mid-answer is routine on a network; socketserver's default
        # prints a traceback per connection, which would flood a journal under a flood
        import sys

        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, OSError)):
            log.debug("client %s: %s", client_address, error)
        else:
            log.warning("client %s: %s: %s", client_address, type(error).__name__, error)

    def close_connections(self) -> None:
        with self._lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv or send
            except OSError:
                pass


def local_names() -> set[str]:
    """This machine's names and addresses, for the Host check of a wildcard bind."""
    names = {"localhost"}
    try:
        hn = socket.gethostname().lower()
        names.update({hn, f"{hn}.local", socket.getfqdn().lower()})
    except OSError:
        pass
    return {n.rstrip(".") for n in names if n}


class MjpegServer:
    """The HTTP server on a daemon thread. `start()`, then `publish()` per frame, `stop()`."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quality: int = 80, *,
                 max_clients: int = 8, max_connections: int = 256, timeout: float = 10.0,
                 request_timeout: float = 15.0, backlog: int = 128,
                 allowed_hosts: list[str] | tuple[str, ...] = (), token: str | None = None):
        if max_clients < 1 or max_connections < 1 or timeout <= 0 or request_timeout <= 0 or backlog < 1:
            raise ValueError("max_clients, max_connections and backlog must be >= 1, timeouts > 0")
        if token is not None and not token.strip():
            raise ValueError("the auth token is empty")
        self.host = host
        self.quality = int(quality)
        self.max_clients = int(max_clients)
        self.timeout = float(timeout)
        self.request_timeout = float(request_timeout)
        self.token = token
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        # (seq, JPEG, multipart part) of the last encoding: each stream client sends the same
        # part bytes, built once per frame rather than once per client
        self._jpeg: tuple[int, bytes, bytes] | None = None
        self._state: dict = {"frame": None, "faces": []}
        self._stopping = False
        self.clients = 0     # viewers waiting for frames (streams and /frame.jpg): frames are copied for them
        self.streams = 0     # open /stream.mjpg connections, at most max_clients
        self.rejected = {"host": 0, "auth": 0, "busy": 0}
        self.sent = 0        # stream parts (frames) written, over all clients
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = self.timeout  # StreamRequestHandler puts it on the socket: reads and writes

            def log_message(self, *args) -> None:  # quiet: one line per frame would flood a journal
                pass

            def handle_one_request(self) -> None:
                # the request line and headers must be in within request_timeout, however slowly
                # they trickle; _route disarms once they are
                self.server.arm(self.connection, server.request_timeout)
                super().handle_one_request()

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                self.server.disarm(self.connection)
                self._head = head
                url = urlsplit(self.path)
                path = url.path
                if not server._host_ok(self.headers.get("Host")):
                    server._count("host")
                    self._send(421, "text/plain", b"this server is not reached by that name: use its address, "
                                                  b"or start it with --allow-host NAME\n")
                    return
                cookie = None
                if server.token is not None:
                    query_token = parse_qs(url.query).get("token", [None])[0]
                    if not server._authorized(self.headers, query_token):
                        server._count("auth")
                        self._send(401, "text/plain", b"this server needs its token: open /?token=TOKEN\n",
                                   extra={"WWW-Authenticate": 'Basic realm="facemtl", charset="UTF-8"'})
                        return
                    if query_token is not None:
                        cookie = f"{COOKIE}={server.token}; Path=/; HttpOnly; SameSite=Strict"
                extra = {"Set-Cookie": cookie} if cookie else {}
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode(), extra)
                elif path == "/state.json":
                    with server._cond:
                        body = json.dumps(server._state).encode()
                    self._send(200, "application/json", body, extra)
                elif path == "/frame.jpg":
                    if head:
                        self._send(200, "image/jpeg", b"", extra, length=False)
                        return
                    with server._cond:   # counts as a viewer until the next frame comes
                        server.clients += 1
                        after = server._seq
                    try:
                        jpeg = server._encoded(after, timeout=2.0) or server._encoded(0, timeout=0.0)
                    finally:
                        with server._cond:
                            server.clients -= 1
                    if jpeg is None:
                        self._send(503, "text/plain", b"no frame yet\n")
                    else:
                        self._send(200, "image/jpeg", jpeg[1], extra)
                elif path == "/stream.mjpg":
                    self._stream(extra)
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

            def _send(self, code: int, ctype: str, body: bytes, extra: dict | None = None,
                      length: bool = True) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                if code >= 400 and code != 404:
                    self.close_connection = True
                    self.send_header("Connection", "close")
                self.end_headers()
                if not self._head:
                    self.wfile.write(body)

            def _stream(self, extra: dict) -> None:
                self.close_connection = True
                with server._cond:
                    busy = server.streams >= server.max_clients
                    if not busy and not self._head:
                        server.streams += 1
                        server.clients += 1
                if busy:
                    server._count("busy")
                    self._send(503, "text/plain", f"busy: {server.max_clients} streams already; try again later\n"
                               .encode(), {"Retry-After": "5"})
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if self._head:
                    return
                seq = 0
                try:
                    while True:
                        jpeg = server._encoded(seq, timeout=1.0)
                        if server._stopping:
                            return
                        if jpeg is None:
                            continue
                        seq = jpeg[0]
                        self.wfile.write(jpeg[2])
                        self.wfile.flush()
                        server.sent += 1
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, OSError):
                    return  # the viewer went away, or stopped reading for `timeout` seconds
                finally:
                    with server._cond:
                        server.streams -= 1
                        server.clients -= 1

        self._allowed = {_host_name(h) for h in allowed_hosts if h.strip()}
        self._allowed.add(_host_name(host) if ":" not in host else host.lower())
        self._allowed.add("localhost")
        if host in ("0.0.0.0", "::", ""):
            self._allowed |= local_names()
        self._httpd = _Server((host, port), Handler, max_connections=max_connections, backlog=backlog)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="facemtl-mjpeg", daemon=True)
        self._reaper_stop = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="facemtl-mjpeg-reaper", daemon=True)

    # --- checks -----------------------------------------------------------------------------
    def _count(self, what: str) -> None:
        with self._cond:
            self.rejected[what] += 1

    def _host_ok(self, header: str | None) -> bool:
        """An IP address, or a name this server answers to. A request without a Host header
        (HTTP/1.0 tools) passes: browsers, which DNS rebinding needs, always send one."""
        if header is None:
            return True
        name = _host_name(header)
        if name in self._allowed:
            return True
        try:
            ipaddress.ip_address(name)  # an address cannot be rebound to another machine
            return True
        except ValueError:
            return False

    def _authorized(self, headers, query_token: str | None) -> bool:
        want = self.token.encode()
        candidates = []
        if query_token is not None:
            candidates.append(query_token)
        auth = headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            candidates.append(value.strip())
        elif scheme.lower() == "basic":
            try:
                candidates.append(base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2])
            except (ValueError, UnicodeDecodeError):
                pass
        for raw in headers.get_all("Cookie") or ():
            try:
                jar = SimpleCookie(raw)
            except Exception:  # noqa: BLE001 - a malformed cookie is no cookie
                continue
            if COOKIE in jar:
                candidates.append(jar[COOKIE].value)
        # compare_digest on every candidate: no early exit that times the token
        ok = False
        for c in candidates:
            ok |= hmac.compare_digest(c.encode("utf-8", "replace"), want)
        return ok

    # --- serving ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        # "localhost" may resolve to 127.0.0.1 alone: an IPv6 loopback server is named by its address
        host = "localhost" if self.host in ("127.0.0.1", "localhost") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def connections(self) -> int:
        return len(self._httpd.connections)

    def start(self) -> "MjpegServer":
        self._thread.start()
        self._reaper.start()
        return self

    def _reap(self) -> None:
        while not self._reaper_stop.wait(0.25):
            self._httpd.reap()

    @property
    def watched(self) -> bool:
        return self.clients > 0

    def publish(self, frame: np.ndarray, state: dict | None = None) -> None:
        """Hand over the newest annotated frame (BGR uint8) and its JSON-ready state. The
        frame is copied only while a client is watching; the state is kept as given."""
        with self._cond:
            if self.clients > 0 or self._frame is None:
                self._frame = frame.copy()
                self._seq += 1
            if state is not None:
                self._state = state
            self._cond.notify_all()

    def _encoded(self, after: int, timeout: float) -> tuple[int, bytes, bytes] | None:
        """The JPEG of the first frame newer than `after`, encoded once for all clients."""
        with self._cond:
            if (self._seq <= after or self._frame is None) and timeout > 0:
                self._cond.wait(timeout)
            if self._stopping or self._frame is None or self._seq <= after:
                return None
            if self._jpeg is not None and self._jpeg[0] == self._seq:
                return self._jpeg
            seq, frame = self._seq, self._frame
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return None
        data = buf.tobytes()
        part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                + data + b"\r\n")
        jpeg = (seq, data, part)
        with self._cond:
            if self._jpeg is None or self._jpeg[0] < seq:
                self._jpeg = jpeg
        return jpeg

    def stop(self) -> None:
        """Stop serving, end every client stream and open connection, close the socket.
        Safe to call twice."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._reaper_stop.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        if self._reaper.is_alive():
            self._reaper.join(timeout=5.0)
        self._httpd.server_close()
        self._httpd.close_connections()

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def server_from_args(args) -> MjpegServer:
    """The server `facemtl demo --serve` asks for, started; CommandError for a bad address,
    a port in use, or a non-loopback bind without a token (unless --no-auth)."""
    from facemtl.runtime.cli import CommandError

    try:
        host, port = parse_address(args.serve)
    except ValueError as e:
        raise CommandError(f"--serve {args.serve}: {e}") from None
    token = getattr(args, "auth_token", None) or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host) and not getattr(args, "no_auth", False):
        raise CommandError(f"--serve {args.serve}: serving beyond this machine needs a token (--auth-token T or "
                           f"${TOKEN_ENV}); add --no-auth to serve a trusted network without one")
    max_clients = getattr(args, "max_clients", None) or 8
    try:
        return MjpegServer(host, port, max_clients=max_clients, allowed_hosts=getattr(args, "allow_host", None) or (),
                           token=token).start()
    except (ValueError, OSError) as e:
        raise CommandError(f"--serve {args.serve}: {e}") from None


__all__ = ["MjpegServer", "parse_address", "server_from_args", "is_loopback", "BOUNDARY", "TOKEN_ENV"]
