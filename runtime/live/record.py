"""`--record FILE`: the annotated frames as a video file, written atomically and kept
through a crash.

Frames go to a visible partial file beside the target, `NAME.partial-XXXX.SUFFIX` (same
suffix, so OpenCV picks the same container); `close()` moves it over FILE, so FILE is
either a whole recording or absent, and an old FILE stays until the new one is complete.
The loop failing (a full disk, a camera gone) still closes the recording: what was written
is kept. The codec follows the suffix: .avi MJPG, .mkv MJPG, .mp4/.m4v/.mov mp4v.

Killed (SIGKILL, power cut), the process cannot close anything; what survives is the
partial file, and whether it plays depends on the container (`python bench/record_kill.py`,
640x480 at 30 fps, killed after 300 frames, frames OpenCV reads back): .avi (MJPEG) 300,
.mkv (MJPEG) 298, .mp4 (mp4v) 0, since an MP4's index is written at the end and OpenCV's
FFmpeg writer takes no `movflags` for a fragmented one. So .avi is the container for
unattended recording (docs/live.md), and .mp4 only where the run ends normally.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.errors import RecordError  # noqa: F401 (re-exported)
from facemtl.runtime.io import new_file_mode

log = logging.getLogger(__name__)

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


class Recorder:
    """`write(frame)` per frame, then `close()` (or use as a context manager).

    fps: the playback rate stored in the file (the source's rate for files and the sample;
    for a camera, the rate measured over the first frames is what a caller should pass).
    The frame size is fixed by the first frame; a frame of another size is resized.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: str | None = None):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if fourcc is None:
            if suffix not in FOURCC:
                raise RecordError(f"{path}: unknown video suffix {suffix or '(none)'!r}; use one of "
                                  f"{', '.join(sorted(FOURCC))}")
            fourcc = FOURCC[suffix]
        if not self.path.parent.is_dir():
            raise RecordError(f"{path}: the folder {self.path.parent} does not exist")
        if not fps or not np.isfinite(fps) or fps <= 0:
            raise RecordError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.fourcc = fourcc
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{self.path.stem}.partial-", suffix=suffix, dir=self.path.parent)
        except OSError as e:
            raise RecordError(f"{path}: cannot write in {self.path.parent}: {e.strerror or e}") from None
        os.close(fd)
        os.chmod(tmp, new_file_mode(self.path))  # mkstemp makes it 0600: give it the mode a new file gets
        self._tmp = Path(tmp)
        self._closed = False

    def write(self, frame: np.ndarray) -> None:
        if self._closed:
            raise RecordError(f"{self.path}: the recording is closed")
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        h, w = frame.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                self.abort()
                raise RecordError(f"{self.path}: OpenCV cannot write {self.fourcc} video here; try another suffix "
                                  f"({', '.join(sorted(FOURCC))})")
            self._size = (w, h)
        elif (w, h) != self._size:
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(frame)
        self.frames += 1

    def close(self) -> Path | None:
        """Finish the file and move it into place; None (and no file) if nothing was written."""
        if self._closed:
            return self.path if self.frames else None
        self._closed = True
        if self._writer is not None:
            self._writer.release()
        if self.frames == 0:
            self._tmp.unlink(missing_ok=True)
            return None
        try:
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise RecordError(f"{self.path}: cannot move the recording into place ({e.strerror or e}); "
                              f"its frames are in {self._tmp}") from None
        return self.path

    def abort(self) -> None:
        """Drop the recording: the temporary file goes, FILE is left as it was."""
        self._closed = True
        if self._writer is not None:
            self._writer.release()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # a failure of the loop (a full disk for another output, a camera gone) is no reason to
        # lose the frames recorded so far: keep them, as a run that ended normally would
        self.close()
