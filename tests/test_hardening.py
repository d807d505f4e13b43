"""Hostile inputs and failing outputs: images whose headers claim too many pixels, files that
cannot be written (a missing folder, a full disk, a closed pipe), recordings kept through a
failed loop and a real SIGKILL, video files that end early or hold nothing."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.runtime.cli import main
from facemtl.runtime.errors import ImageError, OutputError
from facemtl.runtime.images import DEFAULT_MAX_PIXELS, image_size, read_image
from live_helpers import constant_model

FACEMTL = [sys.executable, "-m", "facemtl.runtime.cli"]


def _run(args, **kw):
    return subprocess.run(FACEMTL + args, capture_output=True, text=True, timeout=120, **kw)


def _frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture
def face_jpg(tmp_path) -> Path:
    """A real photograph with a face: the sample face of scikit-image, else a drawn one."""
    try:
        from skimage import data

        image = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    except ImportError:
        image = np.full((200, 200, 3), 128, np.uint8)
        cv2.circle(image, (100, 100), 60, (200, 200, 200), -1)
    path = tmp_path / "good.jpg"
    cv2.imwrite(str(path), image)
    return path


# --- the pixel cap, read from the header ------------------------------------------------------
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".ppm", ".pgm", ".pbm", ".webp", ".tif", ".jp2"])
def test_image_size_is_read_from_the_header_of_every_format(tmp_path, suffix):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    if suffix in (".pgm", ".pbm"):
        image = image[..., 0]
    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), image)
    w, h, _ = image_size(path)
    assert (w, h) == (53, 37)
    assert read_image(path).shape == (37, 53, 3)


def _huge_png(path: Path, w: int, h: int) -> Path:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0" + b"\0" * 64)
    return path


def _huge_bmp(path: Path, w: int, h: int) -> Path:
    header = b"BM" + struct.pack("<IHHI", 54 + 3, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0,
                                                                          2835, 2835, 0, 0)
    path.write_bytes(header + b"\0\0\0")
    return path


def _huge_jpeg(path: Path, w: int, h: int) -> Path:
    """A real JPEG whose frame header is rewritten to claim w x h."""
    ok, buf = cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))
    data = bytearray(buf.tobytes())
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make", [
    lambda p: (p / "huge.ppm").write_bytes(b"P6\n50000 50000\n255\n\0\0\0") and p / "huge.ppm",
    lambda p: (p / "huge.pgm").write_bytes(b"P5\n# a comment\n40000 40000\n255\n\0") and p / "huge.pgm",
    lambda p: _huge_png(p / "huge.png", 32768, 32768),
    lambda p: _huge_bmp(p / "huge.bmp", 40000, -40000),
    lambda p: _huge_jpeg(p / "huge.jpg", 65000, 65000),
])
def test_an_image_over_the_cap_is_refused_before_decoding(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ImageError, match="over the limit"):
        read_image(path)
    assert image_size(path)[0] * image_size(path)[1] > DEFAULT_MAX_PIXELS


def test_the_default_cap_admits_a_phone_photo_and_the_cap_is_configurable(tmp_path):
    path = tmp_path / "phone.png"
    cv2.imwrite(str(path), np.zeros((6000, 8000), np.uint8))  # a 48 MP sensor's photo
    assert read_image(path).shape == (6000, 8000, 3)
    with pytest.raises(ImageError, match=r"8000 x 6000 pixels \(48.0 MP\) is over the limit of 10 MP"):
        read_image(path, max_pixels=10_000_000)


def test_a_side_longer_than_opencv_decodes_is_named_as_such(tmp_path):
    path = tmp_path / "wide.pgm"
    path.write_bytes(b"P5\n40000000 1\n255\n" + bytes(64))
    with pytest.raises(ImageError, match="a side over 1048576 pixels"):
        read_image(path)


def test_the_capped_reader_is_public(tmp_path):
    import facemtl

    huge = tmp_path / "huge.ppm"
    huge.write_bytes(b"P6\n50000 50000\n255\n\0\0\0")
    with pytest.raises(facemtl.ImageError, match="huge.ppm: 50000 x 50000 pixels"):
        facemtl.read_image(huge)


def test_a_header_that_does_not_give_the_size_is_refused_under_a_cap(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\0\0")
    with pytest.raises(ImageError, match="cannot decode: its header does not give the image size"):
        read_image(path)
    path = tmp_path / "unknown.img"
    path.write_bytes(b"GIF89a" + b"\0" * 20)
    with pytest.raises(ImageError, match="cannot decode: not an image of a format"):
        read_image(path)


def test_predict_reports_an_over_size_image_and_goes_on(tmp_path, face_jpg):
    """The issue's repro: an error line for huge.ppm, and both good images' results."""
    huge = tmp_path / "huge.ppm"
    huge.write_bytes(b"P6\n50000 50000\n255\n\0\0\0")
    r = _run(["predict", "-j1", str(huge), str(face_jpg), str(face_jpg)])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [__import__("json").loads(x) for x in r.stdout.splitlines()]
    assert len(lines) == 3
    assert set(lines[0]) == {"image", "error"} and "over the limit" in lines[0]["error"]
    assert lines[1]["faces"] and lines[1]["faces"] == lines[2]["faces"]


def test_an_opencv_error_on_one_input_is_that_inputs_error(tmp_path, face_jpg, capsys):
    """With no cap, the PPM reaches OpenCV, which refuses it (its own 2^30 limit): still
    an error line, and the good image after it has its result."""
    huge = tmp_path / "huge.ppm"
    huge.write_bytes(b"P6\n50000 50000\n255\n\0\0\0")
    out = tmp_path / "out.jsonl"
    rc = main(["predict", "-j2", "--max-pixels", "0", "-o", str(out), str(huge), str(face_jpg)])
    lines = [__import__("json").loads(x) for x in out.read_text().splitlines()]
    assert rc == 1 and "error" in lines[0] and lines[1]["faces"]


# --- outputs that fail ----------------------------------------------------------------------
def test_predict_to_an_unwritable_path_is_one_line_exit_2(tmp_path, face_jpg):
    r = _run(["predict", "--out", "/proc/x.jsonl", str(face_jpg)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("facemtl predict: error: --out /proc/x.jsonl")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_predict_to_a_full_disk_is_one_line_exit_2(face_jpg):
    with open("/dev/full", "w") as full:
        r = subprocess.run(FACEMTL + ["predict", str(face_jpg)], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: cannot write stdout: No space left on device" in r.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_predict_out_to_a_full_disk_is_one_line_exit_2(face_jpg):
    r = _run(["predict", "--out", "/dev/full", str(face_jpg)])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "facemtl predict: error: cannot write /dev/full: No space left on device"


def test_predict_into_a_closed_pipe_exits_quietly(face_jpg):
    p = subprocess.Popen(FACEMTL + ["predict", "-j1"] + [str(face_jpg)] * 40, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141
    assert first.startswith('{"image"') and "Traceback" not in err and "Error" not in err


def test_atomic_writes_honour_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    from facemtl.runtime.io import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}\n")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.json", "{}\n")
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
        os.chmod(tmp_path / "a.json", 0o600)
        atomic_write_text(tmp_path / "a.json", "[]\n")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o600 and (tmp_path / "a.json").read_text() == "[]\n"
    finally:
        os.umask(old)
    with pytest.raises(OutputError, match="cannot write /proc/x/y.json"):
        atomic_write_text("/proc/x/y.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]


def test_a_recording_gets_the_mode_a_new_file_gets(tmp_path):
    from facemtl.runtime.live.record import Recorder

    old = os.umask(0o027)
    try:
        with Recorder(tmp_path / "r.avi", fps=10) as rec:
            assert next(tmp_path.glob("r.partial-*.avi")).stat().st_mode & 0o777 == 0o640  # while recording
            rec.write(np.zeros((32, 32, 3), np.uint8))
    finally:
        os.umask(old)
    assert (tmp_path / "r.avi").stat().st_mode & 0o777 == 0o640


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_demo_with_a_full_disk_keeps_the_recording_and_leaves_no_partial_file(tmp_path):
    pytest.importorskip("skimage", reason="the sample stream needs scikit-image")
    video = tmp_path / "r.avi"
    r = _run(["demo", "--source", "sample", "--max-frames", "400", "--record", str(video), "--json", "/dev/full",
              "--pace", "off", "-q"], cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "facemtl demo: error: cannot write /dev/full: No space left on device" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.avi"]
    assert _frames(video) > 0


def test_demo_record_into_an_unwritable_folder_is_one_line_exit_2(tmp_path):
    r = _run(["demo", "--source", "sample", "--max-frames", "5", "--record", "/proc/x.avi", "-q"])
    assert r.returncode == 2 and "Traceback" not in r.stderr and "cannot write in /proc" in r.stderr


def test_a_recording_survives_sigkill(tmp_path):
    """Killed with SIGKILL after 300 frames, the .avi's partial file still plays >= 250."""
    pytest.importorskip("skimage", reason="the sample stream needs scikit-image")
    model = constant_model(tmp_path)
    p = subprocess.Popen(FACEMTL + ["demo", "--source", "sample", "--model", str(model), "--record",
                                    str(tmp_path / "kill.avi"), "--json", "-", "--pace", "off", "-q"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    n = 0
    deadline = time.monotonic() + 300
    for _ in p.stdout:  # one JSON line per frame, written after the frame was recorded
        n += 1
        if n >= 300 or time.monotonic() > deadline:
            break
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert n == 300
    assert not (tmp_path / "kill.avi").exists()  # never finished: no half file under the real name
    (partial,) = tmp_path.glob("kill.partial-*.avi")
    assert _frames(partial) >= 250


# --- video sources ---------------------------------------------------------------------------
def _avi(path: Path, n: int) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48))
    for k in range(n):
        w.write(np.full((48, 64, 3), 4 * k, np.uint8))
    w.release()
    return path


def test_a_truncated_video_reports_the_frames_it_really_had(tmp_path):
    from facemtl.runtime.live.sources import VideoFileSource

    full = _avi(tmp_path / "full.avi", 60)
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[:full.stat().st_size // 2])
    with VideoFileSource(cut) as src:
        frames = list(src)
    assert src.frame_count == 60 and 0 < len(frames) < 60
    assert src.bad == 0 and [f.index for f in frames] == list(range(len(frames)))


def test_an_empty_video_or_a_folder_without_a_decodable_image_is_exit_2(tmp_path):
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (64, 48)).release()
    (tmp_path / "shots").mkdir()
    (tmp_path / "shots" / "a.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "shots" / "b.ppm").write_bytes(b"P6\n50000 50000\n255\n\0")
    for source, says in ((empty, "no decodable frame"), (tmp_path / "shots", "none of its 2 image file(s)")):
        r = _run(["demo", "--source", str(source), "-q"])
        assert r.returncode == 2 and "Traceback" not in r.stderr and says in r.stderr


def test_a_file_far_larger_than_its_pixels_need_is_refused_before_reading(tmp_path):
    """A small image with megabytes of trailing data is not read whole into memory."""
    ok, png = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))
    path = tmp_path / "padded.png"
    path.write_bytes(png.tobytes() + bytes(3 << 20))
    with pytest.raises(ImageError, match="a file of 3 MB is over the limit of 1 MB for 0.0001 MP"):
        read_image(path, max_pixels=100)
    assert read_image(path, max_pixels=None).shape == (10, 10, 3)


def test_demo_over_a_folder_skips_an_over_size_image_and_goes_on(tmp_path, face_jpg):
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "a_huge.ppm").write_bytes(b"P6\n50000 50000\n255\n\0\0\0")
    (shots / "b_good.jpg").write_bytes(face_jpg.read_bytes())
    r = _run(["demo", "--source", str(shots), "--json", "-", "--pace", "off"])
    assert r.returncode == 0 and "Traceback" not in r.stderr
    assert "a_huge.ppm: 50000 x 50000 pixels (2500.0 MP) is over the limit" in r.stderr
    assert "bad frames 1" in r.stderr and len(r.stdout.splitlines()) == 1


def test_a_bad_model_leaves_the_last_runs_out_file_alone(tmp_path, face_jpg):
    out = tmp_path / "out.jsonl"
    out.write_text("last run\n")
    r = _run(["predict", "-m", str(tmp_path / "missing.tflite"), "-o", str(out), str(face_jpg)])
    assert r.returncode == 2 and out.read_text() == "last run\n"


def test_demo_into_a_closed_pipe_exits_quietly_and_to_an_unwritable_json_with_one_line(tmp_path):
    pytest.importorskip("skimage", reason="the sample stream needs scikit-image")
    p = subprocess.Popen(FACEMTL + ["demo", "--source", "sample", "--max-frames", "2000", "--json", "-",
                                    "--pace", "off", "--record", str(tmp_path / "r.avi")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()  # `| head -1`
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141
    assert first.startswith('{"frame": 0') and "Traceback" not in err and "Error" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.avi"] and _frames(tmp_path / "r.avi") >= 1
    r = _run(["demo", "--source", "sample", "--max-frames", "3", "--json", "/proc/x.jsonl"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("facemtl demo: error: --json /proc/x.jsonl: cannot write")
