"""Outputs of the live demo: MJPEG server, recording, JSON lines, the window check, the
demo and bench commands end to end (with a real ONNX model in onnxruntime)."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from live_helpers import constant_model
from facemtl.runtime.live.mjpeg import BOUNDARY, MjpegServer, parse_address
from facemtl.runtime.live.record import RecordError, Recorder

ROOT = Path(__file__).resolve().parents[1]
needs_sample = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                  reason="the sample stream needs scikit-image (pip install scikit-image)")


# --- MJPEG -----------------------------------------------------------------------------------
def test_parse_address():
    assert parse_address(None) == ("127.0.0.1", 8080)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    assert parse_address(":9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:81") == ("0.0.0.0", 81)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("localhost:http")


def _read_part(stream) -> bytes:
    """One JPEG from a multipart/x-mixed-replace body."""
    line = stream.readline()
    while not line.strip():
        line = stream.readline()
    assert line.strip() == f"--{BOUNDARY}".encode()
    headers = {}
    while (line := stream.readline().strip()):
        k, _, v = line.decode().partition(":")
        headers[k.lower()] = v.strip()
    assert headers["content-type"] == "image/jpeg"
    return stream.read(int(headers["content-length"]))


def test_mjpeg_server_answers_on_localhost_and_stops_cleanly():
    server = MjpegServer(port=0).start()
    assert server.host == "127.0.0.1"
    base = f"http://127.0.0.1:{server.port}/"
    stop = threading.Event()
    frame = np.zeros((48, 64, 3), np.uint8)

    def producer():
        k = 0
        while not stop.is_set():
            frame[:] = k % 250
            server.publish(frame, {"frame": k, "faces": [{"id": 1, "attributes": {"smile": {"label": "smiling",
                                                                                           "score": 0.9}}}]})
            k += 1
            time.sleep(0.01)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        page = urllib.request.urlopen(base, timeout=5).read().decode()
        assert "stream.mjpg" in page and "state.json" in page
        state = json.loads(urllib.request.urlopen(base + "state.json", timeout=5).read())
        assert state["faces"][0]["attributes"]["smile"]["label"] == "smiling"
        snap = urllib.request.urlopen(base + "frame.jpg", timeout=5).read()
        assert cv2.imdecode(np.frombuffer(snap, np.uint8), cv2.IMREAD_COLOR).shape == (48, 64, 3)
        with urllib.request.urlopen(base + "stream.mjpg", timeout=5) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            first, second = _read_part(r), _read_part(r)
            assert first[:2] == b"\xff\xd8" and second[:2] == b"\xff\xd8"
            assert server.clients == 1
            # stop while the client is still streaming: the server must not hang on it
            t0 = time.monotonic()
            server.stop()
            assert time.monotonic() - t0 < 5
    finally:
        stop.set()
        t.join()
        server.stop()  # twice is fine
    assert not server._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


# --- recording -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["clip.mp4", "clip.avi"])
def test_record_writes_a_playable_file_with_the_right_frame_count(tmp_path, name):
    out = tmp_path / name
    with Recorder(out, fps=25) as rec:
        for k in range(37):
            rec.write(np.full((120, 160, 3), (k * 6) % 256, np.uint8))
            assert not out.exists()                              # atomic: nothing there until the end
    assert out.is_file() and not list(tmp_path.glob("*partial*"))
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        assert img.shape == (120, 160, 3)
        n += 1
    cap.release()
    assert n == 37


def test_an_aborted_recording_leaves_the_old_file(tmp_path):
    out = tmp_path / "keep.mp4"
    out.write_bytes(b"the old recording")
    rec = Recorder(out, fps=25)
    rec.write(np.zeros((32, 32, 3), np.uint8))
    rec.abort()
    assert out.read_bytes() == b"the old recording" and len(list(tmp_path.iterdir())) == 1


def test_a_failed_run_keeps_the_frames_recorded_so_far(tmp_path):
    out = tmp_path / "kept.avi"
    with pytest.raises(RuntimeError):
        with Recorder(out, fps=25) as rec:
            for k in range(5):
                rec.write(np.full((32, 32, 3), 40 * k, np.uint8))
            raise RuntimeError("the run failed")
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["kept.avi"]


def test_record_errors(tmp_path):
    with pytest.raises(RecordError, match="unknown video suffix"):
        Recorder(tmp_path / "x.gif")
    with pytest.raises(RecordError, match="does not exist"):
        Recorder(tmp_path / "no" / "x.mp4")
    with pytest.raises(RecordError, match="cannot write in /proc"):
        Recorder("/proc/x.mp4")


# --- the demo command ------------------------------------------------------------------------
@needs_sample
def test_demo_on_the_sample_records_writes_json_and_sums_up(tmp_path, capsys):
    from facemtl.runtime.cli import main

    model = constant_model(tmp_path)
    video, lines, summary = tmp_path / "demo.mp4", tmp_path / "demo.jsonl", tmp_path / "summary.json"
    code = main(["demo", "--model", str(model), "--detector", "none", "--source", "sample:still",
                 "--max-frames", "12", "--record", str(video), "--json", str(lines), "--summary", str(summary)])
    out = capsys.readouterr().out
    assert code == 0
    assert "12 frames" in out and "landmark NME on the sample stream" in out and "infer" in out
    records = [json.loads(x) for x in lines.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(12))
    assert all(len(r["faces"]) == 1 and r["faces"][0]["id"] == 1 for r in records)
    assert records[1]["timestamp_ms"] == pytest.approx(33.333, abs=1e-3)
    assert set(records[0]["faces"][0]) >= {"id", "box", "score", "landmarks", "attributes"}
    s = json.loads(summary.read_text())
    assert s["frames"] == 12 and s["recording"]["frames"] == 12
    assert {"capture", "crop", "infer", "draw", "total"} <= set(s["stages"])
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()


def test_demo_json_to_stdout_has_empty_faces_for_frames_without_faces(tmp_path, capsys):
    from facemtl.runtime.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    for k in range(3):
        cv2.imwrite(str(frames / f"{k}.png"), np.full((120, 160, 3), 128, np.uint8))
    code = main(["demo", "--model", str(constant_model(tmp_path)), "--source", str(frames), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    records = [json.loads(x) for x in captured.out.splitlines()]
    assert records == [{"frame": k, "timestamp_ms": pytest.approx(k * 1000 / 30, abs=1e-3), "faces": []}
                       for k in range(3)]
    assert "facemtl demo:" in captured.err  # the summary goes to stderr when stdout is JSON


def test_show_without_a_gui_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from facemtl.runtime.cli import main
    from facemtl.runtime.live.demo import _window_check

    monkeypatch.setenv("DISPLAY", ":0")
    if _window_check() is None:
        pytest.skip("this OpenCV has a GUI")
    code = main(["demo", "--model", str(constant_model(tmp_path)), "--source", "sample", "--show"])
    assert code == 2
    assert "--show: this OpenCV has no GUI" in capsys.readouterr().err


def test_show_without_a_display_points_to_serve(monkeypatch):
    from facemtl.runtime.live.demo import _window_check

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if not sys.platform.startswith("linux"):
        pytest.skip("DISPLAY is how Linux says there is a display")
    assert "--serve" in _window_check()


# --- no TensorFlow ---------------------------------------------------------------------------
@needs_sample
def test_demo_and_live_bench_run_without_tensorflow(tmp_path):
    from import_blocker import NO_TENSORFLOW, run_blocked

    model = constant_model(tmp_path)
    code = (
        "import sys, facemtl.runtime.cli\n"
        f"a = facemtl.runtime.cli.main(['demo', '--model', {str(model)!r}, '--detector', 'none', '--source', 'sample',"
        " '--max-frames', '5', '-q'])\n"
        f"b = facemtl.runtime.cli.main(['bench', '--live', {str(model)!r}, '--detector', 'none', '--live-frames', '10',"
        " '--warmup', '2', '--no-quality'])\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx'))\n"
        "print('codes', a, b, 'bad', bad)\n"
    )
    # convert/ stays importable: it registers `bench`, and must stay light without TensorFlow
    blocked = tuple(n for n in NO_TENSORFLOW if n != "facemtl.convert")
    r = run_blocked(code, tmp_path, blocked=blocked, extra_path=(ROOT / "tests",), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "codes 0 0 bad []" in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    assert "| sample 640x480 | 1 | tracking |" in r.stdout


def test_the_systemd_unit_runs_a_valid_demo_command():
    import configparser
    import shlex

    from facemtl.runtime.cli import build_parser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(ROOT / "deploy" / "facemtl-demo.service")
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert Path(argv[0]).name == "facemtl" and argv[1] == "demo"
    args = build_parser().parse_args(argv[1:])
    assert args.source == "picam" and args.serve and not args.show
    assert unit["Service"]["KillSignal"] == "SIGTERM" and unit["Install"]["WantedBy"] == "multi-user.target"
    # sandboxed, and the token comes from a root-only environment file
    service = unit["Service"]
    for key, value in (("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "read-only"),
                       ("PrivateTmp", "yes"), ("CapabilityBoundingSet", ""), ("RestrictSUIDSGID", "yes"),
                       ("SystemCallArchitectures", "native")):
        assert service[key] == value, key
    assert "FACEMTL_AUTH_TOKEN" in (ROOT / "deploy" / "facemtl-demo.service").read_text()
    assert service["EnvironmentFile"].lstrip("-") == "/etc/facemtl/demo.env"
    # it serves the network, so without the token it refuses to start (nothing is bound here)
    from facemtl.runtime.cli import CommandError
    from facemtl.runtime.live.mjpeg import is_loopback, parse_address, server_from_args

    assert not is_loopback(parse_address(args.serve)[0]) and not args.no_auth
    env = os.environ.pop("FACEMTL_AUTH_TOKEN", None)
    try:
        with pytest.raises(CommandError, match="needs a token"):
            server_from_args(args)
    finally:
        if env is not None:
            os.environ["FACEMTL_AUTH_TOKEN"] = env
