"""The demo's MJPEG server under load: does the analysis loop keep its pace?

    python bench/server_load.py --half-open 200 --streams 50 --rounds 3 --seconds 15
    python bench/server_load.py --max-clients 50 --pace off

Runs `facemtl demo --source sample --serve 127.0.0.1:PORT` in rounds, unloaded and loaded
in turn (so a machine that changes speed moves both alike). Loaded: `--half-open`
connections that send half a request line and wait (each one the server drops after its
timeout is opened again, so the count holds), plus `--streams` clients reading
/stream.mjpg as fast as they can (one that gets 503, over --max-clients, retries a second
later, as a browser's reload would). Each run ends with SIGTERM, as systemd stops the unit.

Per run: FPS over the wall clock and from the median frame time (the loop's capacity,
which is what CPU taken by the server would lower), the demo's peak RSS (VmHWM), how long
it took to exit after SIGTERM and its exit code, and what the clients got. Medians over
the rounds, and the loaded/unloaded ratio. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-m", "facemtl.runtime.cli"]
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the demo exited early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.sendall(b"GET /state.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                if s.recv(16).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("the demo's server did not answer")


class Load:
    """Half-open connections kept at a count, and stream readers, on threads."""

    def __init__(self, port: int, half_open: int, streams: int):
        self.port = port
        self.half_open = half_open
        self.streams = streams
        self.stop = threading.Event()
        self.bytes = 0
        self.frames = 0
        self.busy = 0          # 503 answers
        self.reopened = 0      # half-open connections the server dropped (its timeout) and we opened again
        self.refused = 0       # connections closed or refused at once
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._half_open, daemon=True)]
        self.threads += [threading.Thread(target=self._reader, daemon=True) for _ in range(streams)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def _open_half(self):
        s = socket.create_connection((HOST, self.port), timeout=5)
        s.sendall(b"GET /state.json HTTP/1.1\r\nHost: loc")
        s.setblocking(False)
        return s

    def _half_open(self) -> None:
        socks = []
        while not self.stop.is_set() and len(socks) < self.half_open:
            try:
                socks.append(self._open_half())
            except OSError:
                self.refused += 1
                time.sleep(0.05)
        while not self.stop.is_set():
            readable, _, _ = select.select(socks, [], [], 0.2)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    continue
                socks.remove(s)
                s.close()
                try:
                    socks.append(self._open_half())
                    self.reopened += 1
                except OSError:
                    self.refused += 1
        for s in socks:
            s.close()

    def _reader(self) -> None:
        while not self.stop.is_set():
            try:
                s = socket.create_connection((HOST, self.port), timeout=5)
            except OSError:
                self.refused += 1
                time.sleep(0.5)
                continue
            try:
                s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: localhost\r\n\r\n")
                head = s.recv(4096)
                if head.startswith(b"HTTP/1.1 503"):
                    with self._lock:
                        self.busy += 1
                    s.close()
                    self.stop.wait(1.0)
                    continue
                while not self.stop.is_set():
                    data = s.recv(262144)
                    if not data:
                        break
                    with self._lock:
                        self.bytes += len(data)
                        self.frames += data.count(b"--facemtlframe")
            except OSError:
                pass
            finally:
                s.close()

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def one_run(args, loaded: bool) -> dict:
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        summary = Path(d) / "summary.json"
        cmd = CLI + ["demo", "--source", "sample", "--serve", f"{HOST}:{port}", "--pace", args.pace,
                     "--summary", str(summary), "-q"]
        if args.max_clients:
            cmd += ["--max-clients", str(args.max_clients)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_ready(port, proc)
        load = Load(port, args.half_open, args.streams).start() if loaded else None
        time.sleep(args.seconds)
        rss = peak_rss_mb(proc.pid)
        got = None if load is None else {"client_frames": load.frames, "client_mb": round(load.bytes / 1e6, 1),
                                         "busy_503": load.busy, "half_open_reopened": load.reopened,
                                         "refused": load.refused}
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "hung"
        stop_s = time.monotonic() - t
        if load is not None:
            load.close()
        s = json.loads(summary.read_text()) if summary.exists() else {}
    row = {"loaded": loaded, "fps_loop": s.get("fps", {}).get("loop"), "fps_frame_time": s.get("fps", {}).get(
        "median_frame_time"), "frames": s.get("frames"), "peak_rss_mb": rss, "stop_s": round(stop_s, 2), "rc": rc}
    if got is not None:
        row.update(got)  # as it stood before SIGTERM (after it, every reconnection is refused)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--half-open", type=int, default=200)
    ap.add_argument("--streams", type=int, default=50)
    ap.add_argument("--max-clients", type=int, default=None, help="the demo's --max-clients (default: its own, 8)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pace", choices=("on", "off"), default="on",
                    help="on: the sample plays at 30 fps, as a camera delivers (default); off: as fast as it can")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for r in range(args.rounds):
        for loaded in (False, True):
            row = one_run(args, loaded)
            rows.append(row)
            print(json.dumps(row), flush=True)

    def med(loaded: bool, key: str):
        vals = [r[key] for r in rows if r["loaded"] == loaded and r.get(key) is not None]
        return statistics.median(vals) if vals else None

    out = {"args": vars(args) | {"json": str(args.json) if args.json else None}, "rows": rows}
    for key in ("fps_loop", "fps_frame_time", "peak_rss_mb", "stop_s"):
        base, load = med(False, key), med(True, key)
        out[key] = {"unloaded": base, "loaded": load, "ratio": (load / base) if base and load else None}
        print(f"{key:15s} unloaded {base:8.2f}  loaded {load:8.2f}  ratio {out[key]['ratio']:.3f}")
    clean = all(r["rc"] == 0 for r in rows)
    print(f"every run stopped cleanly on SIGTERM (exit 0): {clean}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
