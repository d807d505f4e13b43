"""`--record FILE`: the annotated frames as a video file, written atomically.

Frames go to a temporary file beside the target (same suffix, so OpenCV picks the same
container); `close()` moves it into place, so FILE is either the whole recording or absent
(an interrupted run leaves no half-written file, and an old FILE stays until the new one is
complete). The codec follows the suffix: .mp4 mp4v, .avi MJPG, .mkv MJPG, .mov mp4v.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.errors import RecordError  # noqa: F401 (re-exported)

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
        if not fps or fps <= 0:
            raise RecordError(f"fps must be positive, got {fps}")
        self.fps = float(fps)
        self.fourcc = fourcc
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=f".part{suffix}", dir=self.path.parent)
        os.close(fd)
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
        os.replace(self._tmp, self.path)
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
        if exc_type is None or exc_type is KeyboardInterrupt:
            self.close()
        else:
            self.abort()
