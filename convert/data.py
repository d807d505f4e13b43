"""MTFL faces as model inputs for the conversion checks, the calibration and the benchmark.

Crops are cut by the runtime's own code (`facemtl.runtime.preprocess`), exactly as
`facemtl.train.pipeline.make_example(..., aug=None)` cuts them (a test holds the two equal), but
without TensorFlow, so `facemtl bench` runs where only the runtime is installed.

Splits: "validation" is the deterministic held-out part of training.txt (the part training
did not fit on), "testing" is testing.txt (the benchmark), "training" is the rest of
training.txt: calibration crops come from there, never from the checked faces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemtl.runtime.preprocess import crop, face_square, normalize, to_crop
from facemtl.runtime.spec import ModelSpec

SPLITS = ("validation", "testing")
VAL_FRACTION = 0.1  # facemtl.train.fit.TrainConfig's default: the same faces training held out


def run_val_fraction(model_path: str | Path) -> float:
    """The validation fraction the model was trained with (its run's config.json), else the default,
    so the checked faces are the ones training held out."""
    import json

    config = Path(model_path).with_name("config.json")
    try:
        value = float(json.loads(config.read_text()).get("val_fraction", VAL_FRACTION))
    except (OSError, ValueError, TypeError, AttributeError):
        return VAL_FRACTION
    return value if 0.0 < value < 1.0 else VAL_FRACTION


@dataclass
class Crops:
    """N normalised crops and what MTFL says about each face."""

    x: np.ndarray                         # (N, S, S, 1) float32
    landmarks: np.ndarray                 # (N, 2 * points) crop units
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # attribute -> (N,) class ids
    source: str = ""
    skipped: int = 0
    paths: list[str] = field(default_factory=list)  # image paths relative to the data folder

    def __len__(self) -> int:
        return len(self.x)


def cut(images: list[np.ndarray], points: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Canonical crops of faces (grey images + (N, 5, 2) pixel landmarks) and their targets."""
    s = spec.input.size
    x = np.empty((len(images), s, s, 1), np.float32)
    y = np.empty((len(images), 2 * len(spec.landmark_names)), np.float32)
    for i, (grey, p) in enumerate(zip(images, points)):
        patch, m = crop(grey, face_square(grey, p, spec.crop), s)
        x[i, :, :, 0] = normalize(patch, spec.input)
        y[i] = to_crop(p, m).reshape(-1)
    return x, y


def _crops(ann, spec: ModelSpec, source: str) -> Crops:
    from facemtl.train.mtfl import load_images

    images = load_images(ann, skip_bad=True)
    x, y = cut(images.images, images.annotations.points, spec)
    return Crops(x, y, dict(images.annotations.labels), source, len(images.skipped), list(images.annotations.paths))


def held_out(data_dir: str | Path, spec: ModelSpec, split: str = "validation", limit: int = 0,
             val_fraction: float = VAL_FRACTION) -> Crops:
    """The faces a converted file is checked on: `validation` (default) or `testing`."""
    from facemtl.train.mtfl import DataError, load_split, split_train_val

    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use {' or '.join(SPLITS)}")
    if split == "validation":
        _, ann = split_train_val(load_split(data_dir, "training"), val_fraction)
        source = f"validation part of training.txt ({val_fraction:.0%} by path hash)"
    else:
        ann = load_split(data_dir, "testing")
        source = "testing.txt"
    if limit and limit < len(ann):
        ann = ann.subset(np.arange(limit))
        source += f", first {limit} faces"
    crops = _crops(ann, spec, source)
    if len(crops) == 0:
        raise DataError(f"{data_dir}: no readable faces in the {split} split")
    return crops


def calibration(data_dir: str | Path, spec: ModelSpec, count: int, seed: int = 0,
                val_fraction: float = VAL_FRACTION) -> Crops:
    """`count` faces drawn (seeded) from the training part of training.txt, never the checked ones."""
    from facemtl.train.mtfl import DataError, load_split, split_train_val

    train, _ = split_train_val(load_split(data_dir, "training"), val_fraction)
    if len(train) == 0:
        raise DataError(f"{data_dir}: training.txt has no faces outside the validation part")
    pick = np.sort(np.random.default_rng(seed).choice(len(train), size=min(count, len(train)), replace=False))
    return _crops(train.subset(pick), spec, f"{len(pick)} faces of the training part of training.txt (seed {seed})")
