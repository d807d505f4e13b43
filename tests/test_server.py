"""The MJPEG server under hostile and heavy use (loopback only): HEAD, IPv6, the Host check,
the token, the bound on streams and connections, timeouts on half-sent requests, a clean
stop with connections open, and the page in a real headless Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from argparse import Namespace

import cv2
import numpy as np
import pytest

from facemtl.runtime.cli import CommandError
from facemtl.runtime.live.mjpeg import MjpegServer, parse_address, server_from_args

STATE = {"frame": 0, "fps": 30.0, "faces": [{"id": 1, "attributes": {"smile": {"label": "smiling", "score": 0.9}}}]}


class Producer:
    """Publishes a red frame and a counting state, like the demo loop, until stopped."""

    def __init__(self, server: MjpegServer, size=(320, 240)):
        self.server = server
        self.frame = np.zeros((size[1], size[0], 3), np.uint8)
        self.frame[:, :, 2] = 255
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self.stop.is_set():
            self.server.publish(self.frame, {**STATE, "frame": k})
            k += 1
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _open_stream(port: int):
    """A client reading the MJPEG stream: (connection, response), the response checked 200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", "/stream.mjpg")
    r = c.getresponse()
    assert r.status == 200
    return c, r


def _request(port: int, method: str = "GET", path: str = "/state.json", headers: dict | None = None,
             host: str = "127.0.0.1"):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request(method, path, headers=headers or {})
    r = c.getresponse()
    body = r.read() if not path.startswith("/stream") or r.status != 200 else b""
    c.close()
    return r.status, dict(r.getheaders()), body


def _closed_by_peer(sock: socket.socket, wait: float = 10.0) -> bool:
    """True once the server has closed `sock` (recv gives EOF or a reset) within `wait` s."""
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


@pytest.fixture
def server():
    s = MjpegServer(port=0).start()
    yield s
    s.stop()


def test_head_answers_headers_without_a_body(server):
    with Producer(server):
        for path, ctype in (("/", "text/html"), ("/state.json", "application/json"), ("/frame.jpg", "image/jpeg"),
                            ("/stream.mjpg", "multipart/x-mixed-replace")):
            status, headers, body = _request(server.port, "HEAD", path)
            assert status == 200 and headers["Content-Type"].startswith(ctype) and body == b"", path
    assert server.streams == 0


def test_ipv6_loopback():
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        s = MjpegServer(*parse_address("[::1]:0")).start()
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    try:
        assert s.url == f"http://[::1]:{s.port}/"
        status, _, body = _request(s.port, host="::1")
        assert status == 200 and "faces" in json.loads(body)
    finally:
        s.stop()
    assert parse_address("[::1]") == ("::1", 8080) and parse_address("[::]:81") == ("::", 81)
    with pytest.raises(ValueError, match="brackets"):
        parse_address("::1:8080")


def test_the_host_header_must_name_this_server(server):
    p = server.port
    assert _request(p, headers={"Host": f"localhost:{p}"})[0] == 200
    assert _request(p, headers={"Host": f"127.0.0.1:{p}"})[0] == 200
    status, _, body = _request(p, headers={"Host": f"attacker.example:{p}"})  # DNS rebinding
    assert status == 421 and b"--allow-host" in body and server.rejected["host"] == 1
    s2 = MjpegServer(port=0, allowed_hosts=["pi.lan"]).start()
    try:
        assert _request(s2.port, headers={"Host": f"pi.lan:{s2.port}"})[0] == 200
        assert _request(s2.port, headers={"Host": "other.lan"})[0] == 421
    finally:
        s2.stop()


def test_a_token_guards_every_path():
    s = MjpegServer(port=0, token="s3cret").start()
    p = s.port
    try:
        with Producer(s):
            status, headers, _ = _request(p, path="/")
            assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
            assert _request(p, path="/stream.mjpg")[0] == 401 and s.streams == 0
            assert _request(p, path="/state.json?token=wrong")[0] == 401
            status, headers, body = _request(p, path="/?token=s3cret")
            assert status == 200 and b"stream.mjpg" in body and "facemtl_token=s3cret" in headers["Set-Cookie"]
            assert _request(p, headers={"Cookie": "facemtl_token=s3cret"})[0] == 200
            assert _request(p, headers={"Authorization": "Bearer s3cret"})[0] == 200
            basic = base64.b64encode(b"viewer:s3cret").decode()
            assert _request(p, path="/frame.jpg", headers={"Authorization": f"Basic {basic}"})[0] == 200
            assert s.rejected["auth"] == 3
    finally:
        s.stop()


def test_serving_beyond_loopback_needs_a_token_or_no_auth(monkeypatch):
    monkeypatch.delenv("FACEMTL_AUTH_TOKEN", raising=False)
    args = Namespace(serve="0.0.0.0:0", auth_token=None, no_auth=False, allow_host=None, max_clients=None)
    with pytest.raises(CommandError, match="needs a token"):
        server_from_args(args)
    s = server_from_args(Namespace(serve="127.0.0.1:0", auth_token=None, no_auth=False, allow_host=None,
                                   max_clients=3))
    try:
        assert s.token is None and s.max_clients == 3
    finally:
        s.stop()
    monkeypatch.setenv("FACEMTL_AUTH_TOKEN", "from-env")
    s = server_from_args(Namespace(serve=":0", auth_token=None, no_auth=False, allow_host=None, max_clients=None))
    try:
        assert s.token == "from-env"
    finally:
        s.stop()


def test_extra_stream_clients_get_503(server):
    s = MjpegServer(port=0, max_clients=2).start()
    try:
        with Producer(s):
            streams = []
            for _ in range(2):
                c, r = _open_stream(s.port)
                r.read(100)
                streams.append(c)
            status, headers, _ = _request(s.port, path="/stream.mjpg")
            assert status == 503 and headers["Retry-After"] and s.rejected["busy"] == 1
            assert _request(s.port)[0] == 200  # the page and state still answer
            for c in streams:
                c.close()
    finally:
        s.stop()


def test_half_sent_requests_time_out_and_connections_are_bounded():
    s = MjpegServer(port=0, timeout=0.5, max_connections=5).start()
    try:
        slow = socket.create_connection(("127.0.0.1", s.port))
        slow.sendall(b"GET /state.json HTTP/1.1\r\nHost: loc")  # and never the rest
        assert _closed_by_peer(slow)  # the server's timeout let it go
        slow.close()
        held = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(5)]
        deadline = time.monotonic() + 5
        while s.connections < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = socket.create_connection(("127.0.0.1", s.port))
        assert _closed_by_peer(extra) and s._httpd.refused >= 1
        for h in held + [extra]:
            h.close()
    finally:
        s.stop()


def test_a_request_trickled_a_byte_at_a_time_is_cut_off():
    """Slowloris: a byte every 0.2 s never trips the 1 s socket timeout, but the request's
    headers must be in within 2 s; the server closes the connection long before the client's
    60 bytes are out."""
    s = MjpegServer(port=0, timeout=1.0, request_timeout=2.0).start()
    try:
        c = socket.create_connection(("127.0.0.1", s.port))
        request = b"GET /state.json HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 60
        closed = False
        for i in range(len(request)):
            try:
                c.sendall(request[i:i + 1])
            except OSError:
                closed = True
                break
            c.setblocking(False)
            try:
                if c.recv(1024) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
            c.setblocking(True)
            time.sleep(0.2)
        assert closed and i < len(request) - 1 and s._httpd.reaped == 1
        c.close()
    finally:
        s.stop()


def test_stop_ends_half_open_connections_and_streams():
    s = MjpegServer(port=0, timeout=60).start()
    with Producer(s):
        half = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(10)]
        for h in half:
            h.sendall(b"GET / HTTP/1.1\r\n")
        stream = socket.create_connection(("127.0.0.1", s.port))
        stream.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert stream.recv(64).startswith(b"HTTP/1.1 200")
        deadline = time.monotonic() + 5
        while s.connections < 11 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.connections == 11
        s.stop()
    assert all(_closed_by_peer(h, wait=5) for h in half)  # not after their 60 s timeout
    assert not s._thread.is_alive()
    deadline = time.monotonic() + 5
    while s.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s.connections == 0
    for h in half + [stream]:
        h.close()


def test_under_half_open_connections_and_many_streams_the_server_still_serves():
    """The small version of bench/server_load.py: 40 half-open connections and 8 readers
    of the stream; the stream keeps flowing and the page answers."""
    s = MjpegServer(port=0, max_clients=8).start()
    try:
        with Producer(s):
            half = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(40)]
            for h in half:
                h.sendall(b"GET /state.json HTTP/1.1\r\n")
            readers = []
            for _ in range(8):
                readers.append(_open_stream(s.port))
            sent = s.sent
            for c, r in readers:
                r.read(20000)
            assert s.sent > sent
            assert _request(s.port)[0] == 200
            for c, _ in readers:
                c.close()
            for h in half:
                h.close()
    finally:
        s.stop()


# --- a real browser ---------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# let the page's timers run 3 s of (virtual) time before the dump: its first poll of
# state.json must have come back; --timeout bounds it in real time
WAIT = ["--virtual-time-budget=3000", "--timeout=15000"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install -y chromium)")
def test_the_page_in_headless_chromium_shows_the_stream_and_the_attributes(tmp_path):
    s = MjpegServer(port=0, token="t0k").start()
    url = f"http://127.0.0.1:{s.port}/?token=t0k"
    try:
        with Producer(s):
            with tempfile.TemporaryDirectory() as profile:
                dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *WAIT, "--dump-dom", url],
                                     capture_output=True, text=True, timeout=90).stdout
            with tempfile.TemporaryDirectory() as profile:
                shot = tmp_path / "page.png"
                subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *WAIT,
                                "--window-size=800,600", f"--screenshot={shot}", url],
                               capture_output=True, timeout=90, cwd=tmp_path)
            sent = s.sent
    finally:
        s.stop()
    # the page's script polled state.json (the HTML it was served says "waiting for frames")
    assert 'id="info" class="muted">frame ' in dom and "waiting for frames" not in dom.split('id="info"')[1][:40]
    frame_no = int(dom.split('id="info" class="muted">frame ')[1].split()[0])
    assert frame_no > 0 and "<td>smile</td><td>smiling 0.90</td>" in dom
    # the stream's frames were sent and drawn: the red 320x240 frame is on the screenshot
    image = cv2.imread(str(shot))
    red = (image[..., 2] > 200) & (image[..., 1] < 60) & (image[..., 0] < 60)
    assert sent >= 2 and red.sum() >= 0.9 * 320 * 240
