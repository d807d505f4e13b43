"""Where frames come from: a camera (V4L2 index or device, picamera2), a video file, image
files, or the built-in `sample` stream.

    with open_source("0") as source:          # or "sample", "clip.mp4", "picam", "shots/"
        while (frame := source.read()) is not None:
            frame.image, frame.index, frame.timestamp_ms

Two kinds of source. A *live* source (a camera) always hands over the newest frame: a
grabber thread reads the device as fast as it delivers, keeps only the last frame, and
`read()` waits for one newer than the last it returned. Frames the analysis was too slow
for are dropped (counted in `dropped`), so the picture never lags behind the camera by a
queue of old frames (OpenCV's capture buffer alone holds several). A *file* source (video,
images, sample) is read frame by frame and none is dropped.

A frame that cannot be read or decoded is skipped and counted (`bad`), never fatal. A camera
that cannot be opened, or that stops delivering and cannot be reopened after `retries`
tries, is a `SourceError` with a message that says what to check.
"""

from __future__ import annotations

import glob
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from facemtl.runtime.errors import SourceError  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".jp2")
PICAMERA_NAMES = ("picam", "picamera", "picamera2")


@dataclass
class Frame:
    image: np.ndarray       # BGR uint8 (H, W, 3)
    index: int              # the frame's number in its source (a camera counts every frame it delivered)
    timestamp_ms: float     # capture time: the camera's clock, or index / fps for files


def _valid(image) -> bool:
    return (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3)
            and image.shape[0] >= 2 and image.shape[1] >= 2 and (image.ndim == 2 or image.shape[2] in (1, 3, 4)))


def _as_bgr(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class Source:
    """Base class. `read()` -> the next Frame, or None at the end of a file source."""

    name = ""
    live = False            # a camera: newest frame, older ones dropped
    fps: float | None = None

    def __init__(self) -> None:
        self.bad = 0        # frames skipped because they could not be read or decoded
        self.dropped = 0    # camera frames replaced by a newer one before they were read

    def read(self) -> Frame | None:
        raise NotImplementedError

    def truth(self, index: int) -> np.ndarray | None:
        """The true landmarks of frame `index` where the source knows them (sample), else None."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


# --- the grabber thread --------------------------------------------------------------------
class Grabber:
    """Reads `capture.read() -> (ok, image)` on a thread and keeps only the newest frame.

    `latest(after, timeout)` waits for a frame newer than sequence number `after` and
    returns (seq, image, timestamp_ms); every frame delivered between two calls but the last
    is dropped. A run of `max_failures` failed reads means the device went away: `reopen()`
    (when given) is tried `retries` times, `retry_delay` seconds apart; if it never comes
    back, `error` says so and `latest` raises SourceError.
    """

    def __init__(self, capture, name: str = "camera", reopen: Callable[[], object] | None = None,
                 retries: int = 3, retry_delay: float = 1.0, max_failures: int = 25):
        self.capture = capture
        self.name = name
        self._reopen = reopen
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_failures = max_failures
        self.grabbed = 0        # frames delivered by the device
        self.bad = 0            # failed or malformed reads
        self.reopened = 0
        self.error: str | None = None
        self._frame: tuple[int, np.ndarray, float] | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"facemtl-grabber-{name}", daemon=True)

    def start(self) -> "Grabber":
        self._thread.start()
        return self

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                ok, image = self.capture.read()
            except Exception as e:  # a driver error is a failed read, not a crash of the thread
                ok, image = False, None
                last = str(e)
            else:
                last = "the device returned no frame"
            t = time.monotonic() * 1000.0
            if ok and _valid(image):
                failures = 0
                with self._cond:
                    self.grabbed += 1
                    self._frame = (self.grabbed, image, t)
                    self._cond.notify_all()
                continue
            self.bad += 1
            failures += 1
            if failures < self.max_failures:
                self._stop.wait(0.005)
                continue
            if not self._try_reopen():
                with self._cond:
                    self.error = (f"{self.name} stopped delivering frames ({last}) and could not be reopened "
                                  f"after {self.retries} tries")
                    self._cond.notify_all()
                return
            failures = 0

    def _try_reopen(self) -> bool:
        if self._reopen is None:
            return False
        for attempt in range(self.retries):
            log.warning("%s stopped delivering frames; reopening (%d/%d)", self.name, attempt + 1, self.retries)
            try:
                self.capture.release()
            except Exception:
                pass
            if self._stop.wait(self.retry_delay):
                return False
            try:
                capture = self._reopen()
            except SourceError:
                continue
            if capture is not None:
                self.capture = capture
                self.reopened += 1
                return True
        return False

    def latest(self, after: int = 0, timeout: float = 5.0) -> tuple[int, np.ndarray, float]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._frame is not None and self._frame[0] > after:
                    return self._frame
                if self.error is not None:
                    raise SourceError(self.error)
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    raise SourceError(f"{self.name} delivered no frame in {timeout:.0f} s")
                self._cond.wait(left)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        try:
            self.capture.release()
        except Exception:
            pass


class LiveSource(Source):
    """A device read by a Grabber: `read()` returns the newest frame, never an older one."""

    live = True

    def __init__(self, grabber: Grabber, name: str, fps: float | None = None, timeout: float = 5.0):
        super().__init__()
        self.name = name
        self.fps = fps
        self.timeout = timeout
        self._grabber = grabber.start()
        self._seq = 0
        self._last_ts = -1.0

    def read(self) -> Frame | None:
        seq, image, ts = self._grabber.latest(self._seq, self.timeout)
        self.dropped += seq - self._seq - 1
        self._seq = seq
        self.bad = self._grabber.bad
        ts = max(ts, self._last_ts + 1e-3)  # strictly increasing, whatever the clock does
        self._last_ts = ts
        return Frame(_as_bgr(image), seq - 1, ts)

    @property
    def grabbed(self) -> int:
        return self._grabber.grabbed

    def close(self) -> None:
        self._grabber.stop()


# --- cameras -------------------------------------------------------------------------------
def _camera_hint(device) -> str:
    present = sorted(glob.glob("/dev/video*"))
    hints = []
    if sys.platform.startswith("linux"):
        hints.append(f"video devices here: {', '.join(present)}" if present else "this machine has no /dev/video* device")
        hints.append("check the cable, that no other program holds the camera, and that your user is in the "
                     "'video' group")
    try:
        import importlib.util

        if importlib.util.find_spec("picamera2") is not None:
            hints.append("a Raspberry Pi camera module is opened with --source picam")
    except (ImportError, ValueError):
        pass
    hints.append("--source sample runs without a camera")
    return "; ".join(hints)


def open_capture(device, width: int | None, height: int | None, fps: float | None):
    """A cv2.VideoCapture on `device` (index or path) that has delivered one frame, or None."""
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") and isinstance(device, int) else cv2.CAP_ANY
    cap = cv2.VideoCapture(device, api)
    if not cap.isOpened():
        cap.release()
        return None
    if isinstance(device, int) or str(device).startswith("/dev/"):
        # most USB webcams only reach 30 fps at 640x480 and above in MJPG
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if fps:
            cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    ok, image = cap.read()
    if not ok or not _valid(image):
        cap.release()
        return None
    return cap


class CameraSource(LiveSource):
    """A V4L2 camera by index (`0`) or device path (`/dev/video2`), or a network stream URL."""

    def __init__(self, device, width: int | None = 640, height: int | None = 480, fps: float | None = 30,
                 retries: int = 3, retry_delay: float = 1.0, timeout: float = 5.0):
        label = f"camera {device}"
        cap = None
        for attempt in range(retries + 1):
            cap = open_capture(device, width, height, fps)
            if cap is not None:
                break
            if attempt < retries:
                log.warning("%s did not open; retrying in %g s (%d/%d)", label, retry_delay, attempt + 1, retries)
                time.sleep(retry_delay)
        if cap is None:
            raise SourceError(f"{label} could not be opened (tried {retries + 1} time(s)): {_camera_hint(device)}")
        got = cap.get(cv2.CAP_PROP_FPS)
        grabber = Grabber(cap, label, reopen=lambda: open_capture(device, width, height, fps),
                          retries=retries, retry_delay=retry_delay)
        super().__init__(grabber, label, fps=got if got and got > 0 else fps, timeout=timeout)


class _PiCapture:
    """picamera2's capture_array as a (ok, image) reader for the Grabber."""

    def __init__(self, camera):
        self.camera = camera

    def read(self):
        return True, self.camera.capture_array("main")

    def release(self) -> None:
        try:
            self.camera.stop()
        finally:
            self.camera.close()


class PiCameraSource(LiveSource):
    """A Raspberry Pi camera module through picamera2 (libcamera; cv2.VideoCapture cannot open
    it). picamera2 comes from apt (`python3-picamera2`), so the venv needs
    --system-site-packages (docs/live.md)."""

    def __init__(self, camera: int = 0, width: int = 640, height: int = 480, fps: float = 30, timeout: float = 5.0):
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise SourceError(
                "--source picam needs picamera2: on Raspberry Pi OS run `sudo apt install python3-picamera2` and "
                "create the venv with `python3 -m venv --system-site-packages` (see docs/live.md); a USB camera "
                "works with --source 0") from None
        try:
            cam = Picamera2(camera)
            # "RGB888" is stored B, G, R: OpenCV's order
            config = cam.create_video_configuration(main={"size": (int(width), int(height)), "format": "RGB888"},
                                                    controls={"FrameRate": float(fps)})
            cam.configure(config)
            cam.start()
        except Exception as e:
            raise SourceError(f"the Pi camera {camera} could not be started ({e}); check the ribbon cable and "
                              "`rpicam-hello --list-cameras`") from None
        super().__init__(Grabber(_PiCapture(cam), f"Pi camera {camera}"), f"Pi camera {camera}", fps=fps,
                         timeout=timeout)


# --- files ---------------------------------------------------------------------------------
class VideoFileSource(Source):
    """Every frame of a video file, in order, none dropped; undecodable frames skipped."""

    def __init__(self, path: str | os.PathLike, max_bad_run: int = 25):
        super().__init__()
        self.path = Path(path)
        self.name = str(path)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{path}: OpenCV cannot open it as a video (missing codec, or not a video file)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._max_bad_run = max_bad_run
        self._index = 0      # the number of the next frame: frames delivered plus real bad frames
        self.delivered = 0
        self._warned = False

    def read(self) -> Frame | None:
        # A failed read is only a bad frame if a good one follows it: a truncated file (or one
        # whose header overstates its length) fails every read after its last real frame, and
        # those are no frames at all. So failures are held as `pending` until a frame decodes.
        pending = 0
        unusable = 0
        while True:
            if self._cap is None:
                return self._end(pending)
            try:
                ok, image = self._cap.read()
            except cv2.error as e:  # a decoder error is a failed read of this frame
                log.debug("%s: frame %d: %s", self.name, self._index + pending, e)
                ok, image = False, None
            if ok and _valid(image):
                self.bad += pending
                index = self._index + pending
                self._index = index + 1
                self.delivered += 1
                return Frame(_as_bgr(image), index, 1000.0 * index / self.fps)
            if ok:  # decoded, but not a usable image: a real frame, and a bad one
                self.bad += pending + 1
                self._index += pending + 1
                pending = 0
                unusable += 1
                if unusable >= self._max_bad_run:  # a run of them: the rest of the file is no better
                    return self._end(0)
                continue
            # a failed read at or past the stated end is the end; before it, maybe a bad frame
            if self.frame_count <= 0 or self._index + pending >= self.frame_count or pending >= self._max_bad_run:
                return self._end(pending)
            pending += 1

    def _end(self, pending: int) -> None:
        if self.delivered == 0:
            raise SourceError(f"{self.name}: no decodable frame in this video (empty, truncated before its first "
                              "frame, or a codec OpenCV lacks)")
        if self.frame_count > 0 and self._index < self.frame_count and not self._warned:
            self._warned = True
            log.warning("%s: the video ends after %d frames, though its header says %d (a truncated file?)",
                        self.name, self._index, self.frame_count)
        return None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFilesSource(Source):
    """Image files as the frames of a stream, in the order given; unreadable ones skipped
    (counted in `bad`, each logged with its reason). Each file's size is checked against
    `max_pixels` from its header before decoding (`facemtl.runtime.images`); a stream none of
    whose files decodes is a SourceError when it ends."""

    def __init__(self, paths: list[str | os.PathLike], fps: float = 30.0, max_pixels: int | None = None):
        super().__init__()
        from facemtl.runtime.images import DEFAULT_MAX_PIXELS

        if not paths:
            raise SourceError("no image files given")
        self.paths = [Path(p) for p in paths]
        self.name = str(self.paths[0].parent if len(self.paths) > 1 else self.paths[0])
        self.fps = fps
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None)
        self.delivered = 0
        self._i = 0

    def read(self) -> Frame | None:
        from facemtl.runtime.errors import ImageError
        from facemtl.runtime.images import read_image

        while self._i < len(self.paths):
            i = self._i
            self._i += 1
            try:
                image = read_image(self.paths[i], self.max_pixels)
            except (ImageError, cv2.error, MemoryError) as e:
                log.warning("%s", str(e).splitlines()[0] if str(e) else f"{self.paths[i]}: {type(e).__name__}")
                image = None
            if image is None or not _valid(image):
                self.bad += 1
                continue
            self.delivered += 1
            return Frame(image, i, 1000.0 * i / self.fps)
        if self.delivered == 0:
            raise SourceError(f"{self.name}: none of its {len(self.paths)} image file(s) could be decoded")
        return None


class SampleSource(Source):
    """The built-in sample stream (`facemtl.runtime.live.sample`): a moving real face with known
    landmarks. Endless unless `frames` is given."""

    def __init__(self, motion: str = "moving", width: int = 640, height: int = 480, fps: float = 30.0,
                 frames: int | None = None, noise: float = 2.5, seed: int = 0):
        super().__init__()
        from facemtl.runtime.live.sample import SampleStream, SampleUnavailable

        try:
            self.stream = SampleStream((width, height), fps=fps, motion=motion, noise=noise, frames=frames, seed=seed)
        except SampleUnavailable as e:
            raise SourceError(str(e)) from None
        self.name = f"sample:{motion}"
        self.fps = fps
        self.frames = frames
        self._i = 0
        self._buffers = [np.empty((height, width, 3), np.uint8) for _ in range(2)]

    def read(self) -> Frame | None:
        if self.frames is not None and self._i >= self.frames:
            return None
        i = self._i
        self._i += 1
        # two buffers in turn: no allocation per frame, and the previous frame stays intact
        # while a consumer (an MJPEG client) may still hold it
        image = self.stream.frame(i, out=self._buffers[i % 2])
        return Frame(image, i, self.stream.timestamp_ms(i))

    def truth(self, index: int) -> np.ndarray:
        return self.stream.truth(index)


def open_source(spec: str, width: int = 640, height: int = 480, fps: float = 30.0, frames: int | None = None,
                retries: int = 3, retry_delay: float = 1.0, noise: float = 2.5,
                max_pixels: int | None = None) -> Source:
    """A source from its command-line name:

    `sample`, `sample:still`, `sample:exit` (built-in stream); `crowd` or `crowd:MTFL_DIR` (eight
    real MTFL training faces moving, entering and leaving); `0`, `1`, ... or `/dev/videoN`
    (V4L2 camera); `picam` (Pi camera module via picamera2); `rtsp://...`, `http://...`
    (network camera); a video file; an image file, a folder of images or a glob pattern.
    `max_pixels`: the cap on each image file (None: the default, 0: none).
    """
    spec = str(spec).strip()
    name, _, arg = spec.partition(":")
    if name == "sample":
        return SampleSource(arg or "moving", width, height, fps, frames=frames, noise=noise)
    if name == "crowd":
        from facemtl.runtime.live.crowd import open_crowd  # several real faces, from the MTFL folder

        return open_crowd(arg, width, height, fps, frames=frames, noise=noise)
    if name in PICAMERA_NAMES:
        return PiCameraSource(int(arg or 0), width, height, fps)
    if spec.isdigit():
        return CameraSource(int(spec), width, height, fps, retries=retries, retry_delay=retry_delay)
    if spec.startswith("/dev/video"):
        return CameraSource(spec, width, height, fps, retries=retries, retry_delay=retry_delay)
    if "://" in spec:
        return CameraSource(spec, None, None, None, retries=retries, retry_delay=retry_delay)
    p = Path(spec)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        if not files:
            raise SourceError(f"{spec}: no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in this folder")
        return ImageFilesSource(files, fps, max_pixels)
    if p.is_file():
        if p.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFilesSource([p], fps, max_pixels)
        return VideoFileSource(p)
    if any(c in spec for c in "*?["):
        files = sorted(glob.glob(spec))
        if files:
            return ImageFilesSource(files, fps, max_pixels)
    raise SourceError(f"{spec!r} is not a camera index, 'picam', 'sample', or an existing file or folder")
