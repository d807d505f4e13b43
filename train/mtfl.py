"""The MTFL data set for training: splits, the validation part, decoded images; no TensorFlow.

The annotation parser lives in `facemtl.runtime.mtfl` (the runtime calibrates detectors on MTFL too).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facemtl.runtime.mtfl import (ATTRIBUTES, MTFL_ORIGIN, AnnotationError, Annotations, DataError,  # noqa: F401
                          parse_line, read_annotations)
from facemtl.runtime.preprocess import ImageError, read_grey

SPLITS = {"training": "training.txt", "testing": "testing.txt"}
DATA_ENV = "FACEMTL_DATA"


def default_data_dir() -> Path | None:
    """`$FACEMTL_DATA`, else `../shared/data/mtfl` from the current folder, if it exists."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    p = Path.cwd().parent / "shared" / "data" / "mtfl"
    return p if p.is_dir() else None


def load_split(data_dir: str | os.PathLike, split: str) -> Annotations:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist; pass --data DIR or set ${DATA_ENV}")
    file = data_dir / SPLITS[split]
    if not file.is_file():
        raise DataError(f"{data_dir} has no {SPLITS[split]}; is it the MTFL folder?")
    return read_annotations(file, data_dir)


def validation_mask(paths: list[str], fraction: float) -> np.ndarray:
    """Deterministic split by a hash of each path: stable across runs, machines and file order."""
    h = np.array([int.from_bytes(hashlib.sha1(p.encode()).digest()[:4], "big") for p in paths], dtype=np.float64)
    return (h / 2**32) < fraction


def split_train_val(ann: Annotations, val_fraction: float = 0.1) -> tuple[Annotations, Annotations]:
    val = validation_mask(ann.paths, val_fraction)
    return ann.subset(np.flatnonzero(~val)), ann.subset(np.flatnonzero(val))


@dataclass
class Images:
    """Decoded grey images of a split, and what was skipped."""

    annotations: Annotations
    images: list[np.ndarray]
    skipped: list[str]

    def __len__(self) -> int:
        return len(self.images)


def load_images(ann: Annotations, skip_bad: bool = False, workers: int = 4, progress: bool = False) -> Images:
    """Decode every image (grey, via the runtime's own `read_grey`).

    A missing or undecodable image is an error listing every such file, or with `skip_bad`
    the face is dropped and counted.
    """

    def read(rel: str):
        try:
            return read_grey(ann.root / rel)
        except ImageError as e:
            return e

    it = range(len(ann))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(read, ann.paths)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(ann), desc=f"reading {Path(ann.source).name}", unit="img", leave=False)
        results = list(results)
    bad = [i for i in it if isinstance(results[i], Exception)]
    if bad and not skip_bad:
        listing = "\n".join(f"  {ann.source}:{ann.lines[i] if ann.lines else '?'}: {results[i]}" for i in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(f"{len(bad)} image(s) missing or undecodable (use --skip-bad to skip them):\n{listing}{more}")
    bad_set = set(bad)
    keep = [i for i in it if i not in bad_set]
    return Images(ann.subset(keep), [results[i] for i in keep], [str(ann.root / ann.paths[i]) for i in bad])
