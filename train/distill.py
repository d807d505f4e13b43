"""Knowledge distillation: a teacher's outputs on the training faces, computed once and cached.

`facemtl train --teacher MODEL` trains the model on each head's labels and on the teacher's
outputs for the same faces (`facemtl.train.heads.DistillLoss`). `--teacher` given several
times makes an ensemble teacher: each model's outputs are cached apart and averaged (`average`).

The teacher runs once, on each training face's un-augmented crop (exactly the runtime's
crop), not on every augmented crop of every epoch. Its outputs then travel through each
augmented crop as the labels do: its landmarks are kept in image pixels and cut and flipped
by the very transform that cuts and flips the labels (`facemtl.train.pipeline.augmented_example`),
its class logits are permuted where a flip mirrors a class (pose) and otherwise kept, since
jitter, light and blur change no face's gender, smile, glasses or pose. That costs the
teacher one pass over the faces (cached in a file keyed by the teacher file and the crop
policy) instead of one pass per batch, and it leaves the training time of the student what it
is without a teacher. What it gives up: the teacher's answer to the particular augmented
crop (docs/experiments.md, run 45, and `bench/distill_targets.py` measure how far the two are apart).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemtl.runtime.mirror import flip_averaged, mirror_permutation
from facemtl.runtime.preprocess import Square, crop, face_square, to_image
from facemtl.runtime.spec import REGRESSION, ModelSpec

log = logging.getLogger(__name__)

FORMAT = 1  # of the cache file; a file of another format is recomputed


@dataclass
class TeacherTargets:
    """A teacher's raw outputs, one row per face: landmarks in image pixels (N, points, 2),
    class logits per head (N, classes), and the faces' keys (image paths) in that order."""

    keys: list[str]
    points: np.ndarray
    logits: dict[str, np.ndarray]
    spec: ModelSpec
    seconds: float = 0.0           # the teacher's time to compute them (0: read from the cache)
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.class_heads = [h for h in self.spec.heads if h.kind != REGRESSION]
        self._perms = {h.name: list(mirror_permutation(h.labels, f"head {h.name!r}")) for h in self.class_heads}

    def __len__(self) -> int:
        return len(self.keys)

    def class_row(self, i: int, flipped: bool) -> np.ndarray:
        """Face `i`'s logits of every classification head side by side (spec order); for a
        flipped crop, each head's classes mirrored (pose: left and right swap)."""
        parts = []
        for h in self.class_heads:
            z = self.logits[h.name][i]
            parts.append(z[self._perms[h.name]] if flipped else z)
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)

    def subset(self, keys: list[str]) -> "TeacherTargets":
        """The rows of `keys`, in that order; a KeyError names a face the teacher has no row for."""
        where = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            raise KeyError(f"no teacher targets for {len(missing)} faces (first: {missing[0]}); "
                           "delete the cache file to recompute it")
        idx = np.array([where[k] for k in keys], np.int64)
        return TeacherTargets(list(keys), self.points[idx], {k: v[idx] for k, v in self.logits.items()}, self.spec,
                              self.seconds, self.meta)

    def for_spec(self, spec: ModelSpec) -> "TeacherTargets":
        """The same targets for a student of `spec`: its classification heads, in its order."""
        names = {h.name for h in spec.heads if h.kind != REGRESSION}
        return TeacherTargets(self.keys, self.points, {k: v for k, v in self.logits.items() if k in names}, spec,
                              self.seconds, self.meta)

    def save(self, path: Path) -> None:
        from facemtl.runtime.io import atomic_path

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, keys=np.array(self.keys), points=self.points,
                                    meta=np.array(json.dumps({**self.meta, "format": FORMAT, "seconds": self.seconds})),
                                    **{f"logits/{k}": v for k, v in self.logits.items()})

    @classmethod
    def load(cls, path: Path, spec: ModelSpec) -> "TeacherTargets":
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            logits = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("logits/")}
            return cls([str(k) for k in z["keys"]], z["points"], logits, spec, 0.0, meta)


def face_keys(faces) -> list[str]:
    """One key per face of `facemtl.train.sources.Faces`: its image path."""
    return [str(Path(faces.root) / p) for p in faces.paths]


def teacher_key(teacher: Path, spec: ModelSpec, flip: bool) -> dict:
    """What the cached outputs depend on: the teacher file's bytes, the crop policy and input."""
    digest = hashlib.sha256(Path(teacher).read_bytes()).hexdigest()[:16]
    return {"teacher": str(teacher), "sha256": digest, "flip_average": bool(flip),
            "crop": [spec.crop.mode, spec.crop.scale, spec.crop.shift_y], "input": spec.input.size}


def compute_targets(model, teacher_spec: ModelSpec, data, flip: bool = False, batch: int = 512) -> TeacherTargets:
    """The teacher `model` (a FaceMTL) on each face of `data` (`LoadedFaces`), cut as the
    runtime cuts it (no augmentation); `flip`: each face also mirrored, the two averaged."""
    from facemtl.runtime.preprocess import normalize

    started = time.time()
    spec = teacher_spec

    def run(x):
        out = model(x, training=False)
        return {k: np.asarray(v) for k, v in out.items()}

    predict = flip_averaged(run, spec) if flip else run
    n, size = len(data.images), spec.input.size
    has_points = data.faces.has_points
    outs, mats = [], np.empty((n, 2, 3))
    for start in range(0, n, batch):
        idx = range(start, min(n, start + batch))
        x = np.empty((len(idx), size, size, 1), np.float32)
        for j, i in enumerate(idx):
            grey = data.images[i]
            sq = face_square(grey, data.faces.points[i], spec.crop) if has_points[i] else Square(*data.squares[i])
            patch, mats[i] = crop(grey, sq, size)
            x[j, :, :, 0] = normalize(patch, spec.input)
        outs.append(predict(x))
    out = {h.name: np.concatenate([o[h.name] for o in outs]) for h in spec.heads}
    lm = [h for h in spec.heads if h.kind == REGRESSION]
    if len(lm) != 1:
        raise ValueError(f"a teacher needs one landmark head, {teacher_spec.head_names} has {len(lm)}")
    crop_points = out[lm[0].name].reshape(n, -1, 2)
    points = np.stack([to_image(p, m) for p, m in zip(crop_points, mats)]).astype(np.float32)
    logits = {h.name: out[h.name].astype(np.float32) for h in spec.heads if h.kind != REGRESSION}
    return TeacherTargets(face_keys(data.faces), points, logits, spec, time.time() - started)


def check_compatible(teacher: ModelSpec, student: ModelSpec) -> None:
    """A teacher must frame faces as the student does and have every head the student has."""
    if (teacher.crop.mode, teacher.crop.scale, teacher.crop.shift_y) != (student.crop.mode, student.crop.scale,
                                                                        student.crop.shift_y):
        raise ValueError(f"the teacher crops faces by {teacher.crop.mode} at scale {teacher.crop.scale}, the student "
                         f"by {student.crop.mode} at {student.crop.scale}: give the student the teacher's --crop-scale")
    if teacher.input.size != student.input.size:
        raise ValueError(f"the teacher reads {teacher.input.size}px crops, the student {student.input.size}px")
    mine = {h.name: (h.kind, h.units, tuple(h.labels)) for h in teacher.heads}
    for h in student.heads:
        if mine.get(h.name) != (h.kind, h.units, tuple(h.labels)):
            raise ValueError(f"the teacher has no head {h.name!r} like the student's ({h.kind}, {h.units} outputs)")
    if student.landmark_names != teacher.landmark_names:
        raise ValueError("the teacher's landmarks are not the student's")


def cache_path(teacher: Path, out: Path, flip: bool) -> Path:
    """Default cache file: beside the run folder (runs/), shared by runs with the same teacher."""
    digest = hashlib.sha256(Path(teacher).read_bytes()).hexdigest()[:12]
    return Path(out).parent / "teachers" / f"{Path(teacher).stem}-{digest}{'-flip' if flip else ''}.npz"


def teacher_targets(teacher: Path, data, student: ModelSpec, cache: Path, flip: bool = False) -> TeacherTargets:
    """The teacher's targets for the faces of `data` (`LoadedFaces`), in its order: read from
    `cache` when it holds this teacher's outputs for these faces, else computed and written there."""
    from facemtl.train.model import load_model

    model = load_model(teacher)
    spec_file = Path(teacher).with_name("spec.json")
    tspec = ModelSpec.load(spec_file) if spec_file.exists() else model.model_spec
    check_compatible(tspec, student)
    key = teacher_key(Path(teacher), tspec, flip)
    keys = face_keys(data.faces)
    if Path(cache).exists():
        stored = TeacherTargets.load(Path(cache), tspec)
        same = {k: stored.meta.get(k) for k in key} == key and stored.meta.get("format") == FORMAT
        if same and set(keys) <= set(stored.keys):
            log.info("teacher targets read from %s (computed in %.0f s)", cache, stored.meta.get("seconds", 0))
            return stored.subset(keys).for_spec(student)
        log.info("%s holds another teacher's or other faces' targets: recomputing", cache)
    targets = compute_targets(model, tspec, data, flip=flip)
    targets.meta = key
    targets.save(Path(cache))
    log.info("teacher targets for %d faces in %.0f s, cached in %s", len(targets), targets.seconds, cache)
    return targets.for_spec(student)


def average(targets: list[TeacherTargets]) -> TeacherTargets:
    """An ensemble teacher: the mean of several teachers' outputs for the same faces, landmarks
    in image pixels and raw class logits alike (as `bench/ensemble.py` scores an ensemble)."""
    first = targets[0]
    for t in targets[1:]:
        if t.keys != first.keys or set(t.logits) != set(first.logits):
            raise ValueError("the teachers' targets are for other faces or heads; they cannot be averaged")
    points = np.mean([t.points for t in targets], axis=0).astype(np.float32)
    logits = {k: np.mean([t.logits[k] for t in targets], axis=0).astype(np.float32) for k in first.logits}
    return TeacherTargets(first.keys, points, logits, first.spec, sum(t.seconds for t in targets),
                          {"ensemble": [t.meta for t in targets]})
