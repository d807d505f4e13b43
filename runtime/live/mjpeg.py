"""`--serve HOST:PORT`: the annotated stream as MJPEG over HTTP, for a headless Pi.

Standard library only (http.server's ThreadingHTTPServer) plus cv2.imencode.

    GET /             a page with the stream and the current attributes (polls /state.json)
    GET /stream.mjpg  multipart/x-mixed-replace JPEG stream (any browser, VLC, ffplay)
    GET /frame.jpg    the latest frame, once
    GET /state.json   {"frame", "timestamp_ms", "fps", "faces": [...]} of the latest frame

The main loop calls `publish(frame, state)`; the frame is copied only while someone is
watching, and JPEG encoding happens in the client threads (once per frame, shared by all
clients), so an unwatched server costs the loop almost nothing. Binds 127.0.0.1 unless told otherwise:
on a Pi reach it through an SSH tunnel (`ssh -L 8080:localhost:8080 pi`) or bind 0.0.0.0
on a trusted network. `stop()` closes the socket and ends every client stream.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
BOUNDARY = "facemtlframe"

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
    """`HOST:PORT`, `:PORT` or `PORT` (host 127.0.0.1), or empty (127.0.0.1:8080)."""
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or DEFAULT_HOST
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"--serve wants HOST:PORT, :PORT or PORT, got {text!r}") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"port {p} is out of range 0..65535")
    return host, p


class MjpegServer:
    """The HTTP server on a daemon thread. `start()`, then `publish()` per frame, `stop()`."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, quality: int = 80):
        self.host = host
        self.quality = int(quality)
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._jpeg: tuple[int, bytes] | None = None   # (seq, bytes) of the last encoding
        self._state: dict = {"frame": None, "faces": []}
        self._stopping = False
        self.clients = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: one line per frame would flood a journal
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode())
                elif path == "/state.json":
                    with server._cond:
                        body = json.dumps(server._state).encode()
                    self._send(200, "application/json", body)
                elif path == "/frame.jpg":
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
                        self._send(200, "image/jpeg", jpeg[1])
                elif path == "/stream.mjpg":
                    self._stream()
                else:
                    self._send(404, "text/plain", b"not found: try / or /stream.mjpg\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def _stream(self) -> None:
                self.close_connection = True
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                with server._cond:
                    server.clients += 1
                seq = 0
                try:
                    while True:
                        jpeg = server._encoded(seq, timeout=1.0)
                        if server._stopping:
                            return
                        if jpeg is None:
                            continue
                        seq = jpeg[0]
                        self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg[1])}\r\n\r\n".encode())
                        self.wfile.write(jpeg[1])
                        self.wfile.write(b"\r\n")
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError, OSError):
                    return  # the viewer went away
                finally:
                    with server._cond:
                        server.clients -= 1

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="facemtl-mjpeg", daemon=True)

    @property
    def url(self) -> str:
        host = "localhost" if self.host in ("127.0.0.1", "::1", "localhost") else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> "MjpegServer":
        self._thread.start()
        return self

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

    def _encoded(self, after: int, timeout: float) -> tuple[int, bytes] | None:
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
        jpeg = (seq, buf.tobytes())
        with self._cond:
            if self._jpeg is None or self._jpeg[0] < seq:
                self._jpeg = jpeg
        return jpeg

    def stop(self) -> None:
        """Stop serving, end every client stream, close the socket. Safe to call twice."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5.0)
        self._httpd.server_close()

    def __enter__(self) -> "MjpegServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
