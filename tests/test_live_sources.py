"""Sources: the grabber keeps the newest frame, files give every frame, bad frames are
skipped and counted, a missing camera is a clean error."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from facemtl.runtime.live.sources import (Grabber, ImageFilesSource, LiveSource, SourceError, VideoFileSource,
                                  open_source)


def _coded(k: int, size=(64, 48)) -> np.ndarray:
    """A frame whose index is written in it as 8 black/white stripes (survives JPEG)."""
    image = np.zeros((size[1], size[0], 3), np.uint8)
    stripe = size[0] // 8
    for bit in range(8):
        if k >> bit & 1:
            image[:, bit * stripe:(bit + 1) * stripe] = 255
    return image


def _index(image) -> int:
    stripe = image.shape[1] // 8
    row = image[image.shape[0] // 2]
    return sum(1 << bit for bit in range(8) if row[bit * stripe + stripe // 2].mean() > 128)


def _write_video(path, n: int, size=(64, 48), fps: float = 30.0):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    for k in range(n):
        w.write(_coded(k, size))
    w.release()
    return path


class Paced:
    """A real cv2.VideoCapture read at a camera's pace (one frame per `period` seconds); the
    test can hold the "camera" (`gate`) to look at the grabber between two frames."""

    def __init__(self, cap, period: float):
        self.cap, self.period = cap, period
        self.gate = threading.Event()
        self.gate.set()

    def read(self):
        self.gate.wait()
        time.sleep(self.period)
        return self.cap.read()

    def release(self):
        self.gate.set()
        self.cap.release()


def _wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_grabber_hands_over_the_newest_frame_and_drops_the_rest(tmp_path):
    video = _write_video(tmp_path / "count.avi", 120)
    camera = Paced(cv2.VideoCapture(str(video)), 0.005)
    grabber = Grabber(camera, "test camera", max_failures=3)
    source = LiveSource(grabber, "test camera", fps=200)
    try:
        seen = []
        for _ in range(4):
            before = grabber.grabbed
            _wait_for(lambda: grabber.grabbed >= before + 4)   # a slow consumer: frames pile up
            camera.gate.clear()                                # hold the camera...
            time.sleep(0.05)                                   # ...once its frame in flight is in
            frame = source.read()
            assert frame.index == grabber.grabbed - 1          # exactly the newest
            assert frame.index == _index(frame.image)
            seen.append(frame.index)
            camera.gate.set()
        assert all(b - a >= 4 for a, b in zip(seen, seen[1:]))  # the frames in between were dropped
        assert source.dropped == seen[-1] + 1 - len(seen)
        stamps = [source.read().timestamp_ms for _ in range(3)]
        assert stamps == sorted(stamps) and len(set(stamps)) == 3
    finally:
        source.close()
    assert not grabber._thread.is_alive()


def test_a_camera_that_stops_ends_with_a_clear_error(tmp_path):
    video = _write_video(tmp_path / "short.avi", 5)
    source = LiveSource(Grabber(cv2.VideoCapture(str(video)), "camera X", max_failures=3, retries=0),
                        "camera X", timeout=3.0)
    try:
        with pytest.raises(SourceError, match="camera X stopped delivering frames"):
            for _ in range(10):
                source.read()
    finally:
        source.close()


def test_a_camera_that_comes_back_is_reopened(tmp_path):
    video = _write_video(tmp_path / "short.avi", 4)
    opened = []

    def reopen():
        opened.append(1)
        return cv2.VideoCapture(str(video))

    grabber = Grabber(cv2.VideoCapture(str(video)), "camera Y", reopen=reopen, retries=2, retry_delay=0.01,
                      max_failures=2)
    source = LiveSource(grabber, "camera Y", timeout=3.0)
    try:
        for _ in range(3):
            source.read()
        # the grabber's thread counts the reopen after reopen() returns: wait for the count,
        # not for the call, or the assert can run between the two
        deadline = time.monotonic() + 3
        while grabber.reopened < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert opened and grabber.reopened >= 1
    finally:
        source.close()


def test_missing_camera_is_a_clean_error():
    t = time.monotonic()
    with pytest.raises(SourceError, match=r"camera 57 could not be opened \(tried 2 time"):
        open_source("57", retries=1, retry_delay=0.01)
    assert time.monotonic() - t < 10


def test_missing_camera_on_the_command_line(tmp_path, capsys):
    from live_helpers import constant_model
    from facemtl.runtime.cli import main

    code = main(["demo", "--model", str(constant_model(tmp_path)), "--detector", "none", "--source", "57",
                 "--retries", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "facemtl demo: error: camera 57 could not be opened" in err and "Traceback" not in err


def test_picamera_without_picamera2_says_how_to_get_it():
    import importlib.util

    if importlib.util.find_spec("picamera2") is not None:
        pytest.skip("picamera2 is installed here")
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source("picam")


def test_video_file_gives_every_frame_in_order(tmp_path):
    video = _write_video(tmp_path / "all.avi", 40, fps=25.0)
    with open_source(str(video)) as src:
        assert isinstance(src, VideoFileSource) and not src.live and src.fps == pytest.approx(25.0)
        frames = list(src)
    assert [f.index for f in frames] == list(range(40))
    assert [_index(f.image) for f in frames] == list(range(40))
    assert frames[10].timestamp_ms == pytest.approx(400.0)
    assert src.bad == 0 and src.dropped == 0


def test_bad_image_frames_are_skipped_and_counted(tmp_path):
    paths = []
    for k in range(4):
        p = tmp_path / f"f{k}.png"
        cv2.imwrite(str(p), _coded(k))
        paths.append(p)
    paths[1].write_bytes(b"\x89PNG\r\n\x1a\n not really")   # corrupt
    paths.insert(3, tmp_path / "vanished.png")               # gone before it was read
    with open_source(str(tmp_path)) as src:
        got = [(f.index, _index(f.image)) for f in src]
    assert isinstance(src, ImageFilesSource)
    assert [g[1] for g in got] == [0, 2, 3] and src.bad == 1
    src = ImageFilesSource(paths)
    assert [_index(f.image) for f in src] == [0, 2, 3] and src.bad == 2


def test_undecodable_video_is_a_clear_error(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"not a video at all" * 100)
    with pytest.raises(SourceError, match="cannot open it as a video"):
        open_source(str(p))


def test_unknown_source():
    with pytest.raises(SourceError, match="not a camera index"):
        open_source("no/such/thing.mp4")


def test_sample_source_truth_and_buffers():
    pytest.importorskip("skimage")
    with open_source("sample:still", frames=3) as src:
        frames = list(src)
        assert len(frames) == 3 and src.truth(0).shape == (5, 2)
        assert frames[0].image is not frames[1].image
