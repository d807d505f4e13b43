"""MTFL annotation files, as shipped: the parser, shared by train/ and runtime's calibration.

Line format: `PATH x1..x5 y1..y5 gender smile glasses pose`, attributes 1-based. The files
use Windows separators in `training.txt`, a leading space on every line after the first and
a trailing blank line; all of that is accepted, anything else is an error naming the line.
No TensorFlow, no image decoding: `facemtl.train.mtfl` adds those.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemtl.runtime.errors import AnnotationError, DataError  # noqa: F401 (re-exported)

# MTFL attribute columns, in file order, and their class counts; index = value - 1.
ATTRIBUTES = (("gender", 2), ("smile", 2), ("glasses", 2), ("pose", 5))
MTFL_ORIGIN = 1.0  # the files' coordinates are 1-based


@dataclass
class Annotations:
    """One split: N faces, paths relative to the data root."""

    root: Path
    paths: list[str]
    points: np.ndarray  # (N, 5, 2) float32, image pixels
    labels: dict[str, np.ndarray]  # attribute -> (N,) int32 class ids
    lines: list[int] = field(default_factory=list)  # 1-based line numbers, for messages
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "Annotations":
        index = np.asarray(index)
        return Annotations(
            root=self.root,
            paths=[self.paths[i] for i in index],
            points=self.points[index],
            labels={k: v[index] for k, v in self.labels.items()},
            lines=[self.lines[i] for i in index] if self.lines else [],
            source=self.source,
        )


def parse_line(text: str, where: str) -> tuple[str, np.ndarray, tuple[int, ...]] | None:
    """One annotation line -> (relative path, (5, 2) points, 0-based attributes); None if blank."""
    fields = text.split()
    if not fields:
        return None
    if len(fields) != 15:
        raise AnnotationError(f"{where}: expected 15 fields (path, 10 coordinates, 4 attributes), got {len(fields)}")
    path = fields[0].replace("\\", "/")
    try:
        coords = np.array([float(v) for v in fields[1:11]], dtype=np.float64)
    except ValueError:
        raise AnnotationError(f"{where}: coordinates must be numbers, got {' '.join(fields[1:11])!r}") from None
    if not np.all(np.isfinite(coords)):
        raise AnnotationError(f"{where}: coordinates must be finite")
    attrs = []
    for (name, n), value in zip(ATTRIBUTES, fields[11:]):
        try:
            v = int(value)
        except ValueError:
            raise AnnotationError(f"{where}: {name} must be an integer 1..{n}, got {value!r}") from None
        if not 1 <= v <= n:
            raise AnnotationError(f"{where}: {name} must be 1..{n}, got {v}")
        attrs.append(v - 1)
    # MTFL was annotated in Matlab: 1-based pixel coordinates. We use 0-based pixel-index
    # coordinates everywhere (numpy, OpenCV). Left uncorrected, every flipped training face
    # would put its labels 2 pixels off the ones of its unflipped twin; the held-out part of
    # training.txt shows it as a 1-pixel bias in x (2% NME) on a flip-trained model.
    points = np.stack([coords[:5], coords[5:]], axis=1) - MTFL_ORIGIN
    return path, points, tuple(attrs)


def read_annotations(file: str | os.PathLike, root: str | os.PathLike | None = None) -> Annotations:
    """Parse an MTFL annotation file; image paths are relative to `root` (default: its folder)."""
    file = Path(file)
    root = Path(root) if root is not None else file.parent
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {file}: {e.strerror}") from e
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise AnnotationError(f"{file}: not a text file ({e})") from e
    paths, pts, attrs, lines = [], [], [], []
    for i, line in enumerate(text.splitlines(), start=1):
        rec = parse_line(line, f"{file}:{i}")
        if rec is None:
            continue
        paths.append(rec[0])
        pts.append(rec[1])
        attrs.append(rec[2])
        lines.append(i)
    if not paths:
        raise DataError(f"{file}: no annotations")
    a = np.asarray(attrs, dtype=np.int32).reshape(-1, len(ATTRIBUTES))
    return Annotations(
        root=root,
        paths=paths,
        points=np.asarray(pts, dtype=np.float32),
        labels={name: a[:, j] for j, (name, _) in enumerate(ATTRIBUTES)},
        lines=lines,
        source=str(file),
    )
