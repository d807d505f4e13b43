"""tf.data pipeline over MTFL: crops by the runtime's own code, augmentation, batches.

Every crop, training or not, is cut by `facemtl.runtime.preprocess.crop` and normalised by
`facemtl.runtime.preprocess.normalize` inside a `tf.numpy_function`, so the pipeline cannot drift
from what the runtime does on a camera. Augmentation happens around those calls: the
square is jittered before the crop (rotation, scale, shift: the errors of a detector), the
pixels after it (brightness, contrast, gamma, blur, noise, and random erasing where asked),
then a flip of the crop that swaps left/right landmarks and mirrors the pose.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from facemtl.runtime.preprocess import Square, crop, face_square, normalize, to_crop
from facemtl.runtime.spec import LANDMARK_FLIP, POSE_FLIP, REGRESSION, ModelSpec
from facemtl.train.mtfl import ATTRIBUTES

ATTRIBUTE_NAMES = tuple(name for name, _ in ATTRIBUTES)


@dataclass(frozen=True)
class Augment:
    """Random changes applied to each training face; zeros turn a change off."""

    flip: float = 0.5        # probability of a horizontal flip
    rotate: float = 18.0     # degrees, uniform in +-rotate
    scale: float = 0.12      # log-uniform side factor in exp(+-scale)
    shift: float = 0.08      # centre shift, uniform in +-shift x side on each axis
    brightness: float = 40.0  # pixel levels, uniform in +-brightness
    contrast: float = 0.5    # log-uniform factor in exp(+-contrast)
    gamma: float = 0.4       # log-uniform exponent in exp(+-gamma), with probability 0.3
    blur: float = 0.25       # probability of a Gaussian blur (sigma 0.4..1.2 crop pixels)
    noise: float = 0.25      # probability of Gaussian noise (sigma up to 6 levels)
    # probability of random erasing (Zhong et al., 2017): a rectangle of 2-20% of the crop
    # filled with noise, as a hand, hair or a shadow would cover part of a face in the wild;
    # the landmark targets stay where the features are, hidden or not
    erase: float = 0.0

    @classmethod
    def none(cls) -> "Augment":
        return cls(**{f.name: 0.0 for f in dataclasses.fields(cls)})


def jitter_square(grey: np.ndarray, points: np.ndarray, spec: ModelSpec, aug: Augment, rng: np.random.Generator) -> Square:
    return jitter(face_square(grey, points, spec.crop), aug, rng)


def jitter(sq: Square, aug: Augment, rng: np.random.Generator) -> Square:
    """`sq` scaled, shifted and turned at random: the same jitter for a square built from
    annotated landmarks and for one a detector framed (faces without landmarks)."""
    side = sq.side * float(np.exp(rng.uniform(-aug.scale, aug.scale))) if aug.scale else sq.side
    dx, dy = (rng.uniform(-aug.shift, aug.shift, 2) * sq.side) if aug.shift else (0.0, 0.0)
    angle = float(rng.uniform(-aug.rotate, aug.rotate)) if aug.rotate else 0.0
    return Square(sq.cx + dx, sq.cy + dy, side, angle)


def photometric(patch: np.ndarray, aug: Augment, rng: np.random.Generator) -> np.ndarray:
    """Pixel-level changes on a crop of 0..255 values; clipping keeps them a real image's."""
    import cv2

    x = patch
    if aug.contrast or aug.brightness:
        c = float(np.exp(rng.uniform(-aug.contrast, aug.contrast)))
        b = float(rng.uniform(-aug.brightness, aug.brightness))
        x = np.clip((x - 128.0) * c + 128.0 + b, 0.0, 255.0)
    if aug.gamma and rng.random() < 0.3:
        g = float(np.exp(rng.uniform(-aug.gamma, aug.gamma)))
        x = 255.0 * (x / 255.0) ** g
    if aug.blur and rng.random() < aug.blur:
        x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.4, 1.2)))
    if aug.noise and rng.random() < aug.noise:
        x = np.clip(x + rng.normal(0.0, rng.uniform(1.0, 6.0), x.shape), 0.0, 255.0)
    if aug.erase and rng.random() < aug.erase:
        x = erase(x, rng)
    return x.astype(np.float32)


def erase(patch: np.ndarray, rng: np.random.Generator, area: tuple[float, float] = (0.02, 0.2),
          aspect: float = 3.3) -> np.ndarray:
    """A copy of `patch` with one random rectangle (a share `area` of the crop, height/width
    log-uniform in 1/aspect..aspect, inside the crop) replaced by uniform noise in 0..255."""
    h, w = patch.shape[:2]
    a = rng.uniform(*area) * h * w
    r = float(np.exp(rng.uniform(-np.log(aspect), np.log(aspect))))
    eh = int(np.clip(round(np.sqrt(a * r)), 1, h))
    ew = int(np.clip(round(np.sqrt(a / r)), 1, w))
    y0 = int(rng.integers(0, h - eh + 1))
    x0 = int(rng.integers(0, w - ew + 1))
    out = np.array(patch, np.float32, copy=True)
    out[y0:y0 + eh, x0:x0 + ew] = rng.uniform(0.0, 255.0, (eh, ew))
    return out


def make_example(grey: np.ndarray, points: np.ndarray, attrs: np.ndarray, spec: ModelSpec,
                 aug: Augment | None, rng: np.random.Generator | None, square: Square | None = None,
                 pose_index: int | None = ATTRIBUTE_NAMES.index("pose")):
    """One face -> (normalised crop (S, S), landmark target (10,), class ids `attrs`).

    `attrs` holds one class id per column (MTFL's four attributes by default; MISSING (-1)
    for no label), `pose_index` the column a flip mirrors (None: no pose column). A face
    without landmarks (NaN `points`) is cut from `square`, the detector's framing, jittered
    like an annotated one; its landmark target is NaN. With `aug=None` this is exactly the
    runtime's `prepare` for the face's square.
    """
    return augmented_example(grey, points, attrs, spec, aug, rng, square, pose_index)[:3]


def augmented_example(grey: np.ndarray, points: np.ndarray, attrs: np.ndarray, spec: ModelSpec,
                      aug: Augment | None, rng: np.random.Generator | None, square: Square | None = None,
                      pose_index: int | None = ATTRIBUTE_NAMES.index("pose"), extra: np.ndarray | None = None):
    """`make_example`, plus `extra` points (image pixels, e.g. a teacher's landmarks) put
    through the same crop and flip as the labels, and whether the crop was flipped:
    (crop, landmark target, class ids, extra target (10,) or None, flipped). The random draws
    are `make_example`'s, in its order, so a face is cut the same with or without `extra`."""
    size = spec.input.size
    base = square if square is not None else face_square(grey, points, spec.crop)
    square = base if aug is None else jitter(base, aug, rng)
    patch, m = crop(grey, square, size)
    target = to_crop(points, m)
    more = None if extra is None else to_crop(extra, m)
    attrs = attrs.copy()
    flipped = False
    if aug is not None:
        patch = photometric(patch, aug, rng)
        if aug.flip and rng.random() < aug.flip:
            flipped = True
            patch = patch[:, ::-1]
            target = _flip_points(target)
            more = None if more is None else _flip_points(more)
            if pose_index is not None and attrs[pose_index] >= 0:
                attrs[pose_index] = POSE_FLIP[attrs[pose_index]]
    return (normalize(patch, spec.input), target.reshape(-1).astype(np.float32), attrs,
            None if more is None else more.reshape(-1).astype(np.float32), flipped)


def _flip_points(target: np.ndarray) -> np.ndarray:
    """Crop-unit points of a mirrored crop: image-left and image-right swap, x runs back."""
    target = target[list(LANDMARK_FLIP)]
    target[:, 0] = 1.0 - target[:, 0]
    return target


# Stands in for the landmark target of a face without landmarks: its loss is weighted 0, and a
# finite, non-degenerate shape keeps the NME's arithmetic (divided by the eye distance) finite.
PLACEHOLDER_POINTS = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]], np.float32)


class FaceSource:
    """Decoded images and labels, cut into model inputs by index batches.

    `data` is an MTFL split (`facemtl.train.mtfl.Images`, every face fully labelled) or faces
    of any source (`facemtl.train.sources.LoadedFaces`), whose landmarks or labels may be
    missing for some faces. Where anything is missing (`masked`), each batch also carries a
    weight per head and face: 1 where the face has that head's target, 0 where not, so a
    missing label adds nothing to the loss or the metrics of its head.

    `teacher` (`facemtl.train.distill.TeacherTargets`, one row per face in this order): a
    teacher's outputs on each face's un-augmented crop. Its landmarks (image pixels) are cut
    and flipped with the labels' own transform, its class logits permuted where a flip
    mirrors a class (pose); `distill_batch` returns them beside the labels.
    """

    def __init__(self, data, spec: ModelSpec, augment: Augment | None, seed: int = 0, teacher=None):
        from facemtl.train.sources import LoadedFaces, head_targets

        self.images = data.images
        self.spec = spec
        self.augment = augment
        self.seed = seed
        if teacher is not None and len(teacher) != len(data.images):
            raise ValueError(f"teacher targets for {len(teacher)} faces, but the source has {len(data.images)}")
        self.teacher = teacher
        if isinstance(data, LoadedFaces):
            self.points = data.faces.points
            self.squares = data.squares
            self.attrs = head_targets(data.faces, spec)
            class_heads = [h.name for h in spec.heads if h.kind != REGRESSION]
            self.columns = {n: j for j, n in enumerate(class_heads)}
        else:
            self.points = data.annotations.points
            self.squares = np.full((len(self.images), 4), np.nan)
            self.attrs = np.stack([data.annotations.labels[n] for n in ATTRIBUTE_NAMES], axis=1).astype(np.int32)
            self.columns = {n: j for j, n in enumerate(ATTRIBUTE_NAMES)}
        self.pose_index = self.columns.get("pose")
        self.has_points = ~np.isnan(self.points).any(axis=(1, 2))
        self.weights = self._weights()
        self.masked = bool((self.weights == 0).any())

    def _weights(self) -> np.ndarray:
        """(N, heads) 1/0: whether each face has each of the spec's heads' targets."""
        w = np.ones((len(self.images), len(self.spec.heads)), np.float32)
        for k, h in enumerate(self.spec.heads):
            if h.kind == REGRESSION:
                w[:, k] = self.has_points
            elif h.name in self.columns:
                w[:, k] = self.attrs[:, self.columns[h.name]] >= 0
            else:
                w[:, k] = 0.0
        return w

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: np.ndarray, draw: np.ndarray):
        """(crops, landmark targets, class ids) of faces `index`; see `weighted_batch`."""
        return self.weighted_batch(index, draw)[:3]

    def weighted_batch(self, index: np.ndarray, draw: np.ndarray):
        """numpy side of the pipeline: `draw` seeds each face's augmentation (deterministic).
        Returns crops, landmark targets, class ids and the (N, heads) 0/1 target weights."""
        return self._batch(index, draw, with_teacher=False)[:4]

    def distill_batch(self, index: np.ndarray, draw: np.ndarray):
        """`weighted_batch` with the teacher's targets for the same augmented crops: crops,
        landmark targets (N, 2 x points labels, then 2 x points teacher), class ids, weights,
        and the teacher's logits of the classification heads, side by side in spec order."""
        if self.teacher is None:
            raise ValueError("distill_batch needs teacher targets (FaceSource(..., teacher=...))")
        return self._batch(index, draw, with_teacher=True)

    def _batch(self, index: np.ndarray, draw: np.ndarray, with_teacher: bool):
        n, s = len(index), self.spec.input.size
        npts = 2 * len(self.spec.landmark_names)
        class_heads = [h for h in self.spec.heads if h.kind != REGRESSION]
        x = np.empty((n, s, s, 1), np.float32)
        y = np.empty((n, 2 * npts if with_teacher else npts), np.float32)
        a = np.empty((n, self.attrs.shape[1]), np.int32)
        t = np.zeros((n, sum(h.units for h in class_heads) if with_teacher else 0), np.float32)
        for j, (i, d) in enumerate(zip(index, draw)):
            rng = np.random.default_rng([self.seed, int(d)]) if self.augment is not None else None
            # a face without landmarks is cut from its detector square, except in crop mode
            # "image", where every face is its whole image (`face_square`)
            framed = self.has_points[i] or self.spec.crop.mode == "image"
            square = None if framed else Square(*self.squares[i])
            extra = self.teacher.points[i] if with_teacher else None
            x[j, :, :, 0], y[j, :npts], a[j], more, flipped = augmented_example(
                self.images[i], self.points[i], self.attrs[i], self.spec, self.augment, rng, square=square,
                pose_index=self.pose_index, extra=extra)
            if with_teacher:
                y[j, npts:] = more
                t[j] = self.teacher.class_row(i, flipped)
        if self.masked:
            # masked targets must still be finite: a weight of 0 times NaN is NaN
            for part in (slice(0, npts), slice(npts, y.shape[1])):
                missing = np.isnan(y[:, part]).any(axis=1)
                if missing.any():
                    y[missing, part] = PLACEHOLDER_POINTS.reshape(-1)[:npts]
            a = np.maximum(a, 0)
        return x, y, a, self.weights[index], t


def pose_counts(pose: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Pose class counts as training sees them: a flip turns a pose into its mirror, so a
    face counts half as its own pose and half as the mirrored one (`weights`: per face)."""
    counts = np.bincount(pose, weights=weights, minlength=len(POSE_FLIP)).astype(float)
    return 0.5 * (counts + counts[list(POSE_FLIP)])


def pose_sampling_weights(pose: np.ndarray, alpha: float) -> np.ndarray:
    """Per-face draw weights ~ frequency(pose) ** -alpha (`pose_counts`, flips counted),
    normalised to mean 1. alpha 1 then shows the model each of the five poses equally often."""
    w = pose_counts(pose)[pose] ** -float(alpha)  # every pose present counts at least 0.5
    return w / w.mean()


def make_dataset(source: FaceSource, batch_size: int, shuffle: bool, seed: int = 0, cache: bool = False,
                 weights: np.ndarray | None = None) -> tf.data.Dataset:
    """(image, {head name: target}) batches for `fit`; only the spec's heads get targets.

    With `weights`, each epoch is len(source) faces drawn with replacement with probability
    proportional to the weights (a fresh draw every epoch), instead of each face once."""
    spec = source.spec
    n = len(source)
    size = spec.input.size
    npts = 2 * len(spec.landmark_names)
    if weights is not None:
        if len(weights) != n:
            raise ValueError(f"{len(weights)} sampling weights for {n} faces")
        cdf = tf.constant(np.cumsum(weights) / np.sum(weights), tf.float64)

        def pick(v):  # inverse CDF of a uniform draw
            u = tf.reshape(tf.cast(v % 2**30, tf.float64) / 2**30, [1])
            return tf.minimum(tf.searchsorted(cdf, u, out_type=tf.int64)[0], n - 1)

        ds = tf.data.Dataset.random(seed=seed + 1, rerandomize_each_iteration=True).take(n).map(pick)
    else:
        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    # a fresh random draw per face and epoch: different augmentation every epoch, yet the
    # same sequence for the same seed
    draws = tf.data.Dataset.random(seed=seed).map(lambda v: v % (2**31))
    ds = tf.data.Dataset.zip(ds, draws).batch(batch_size)

    columns = getattr(source, "columns", {n: j for j, n in enumerate(ATTRIBUTE_NAMES)})
    masked = getattr(source, "masked", False)

    heads = len(spec.heads)

    def weighted(index, draw):  # a source without weights (tests' stand-ins): every target counts
        return (*source.batch(index, draw), np.ones((len(index), heads), np.float32))

    batch_fn = getattr(source, "weighted_batch", weighted)
    teacher = getattr(source, "teacher", None) is not None
    class_heads = [h for h in spec.heads if h.kind != REGRESSION]
    offsets = dict(zip([h.name for h in class_heads], np.cumsum([0] + [h.units for h in class_heads])))

    def load(index, draw):
        if teacher:
            x, y, a, w, t = tf.numpy_function(source.distill_batch, [index, draw],
                                              [tf.float32, tf.float32, tf.int32, tf.float32, tf.float32], stateful=False)
            t.set_shape([None, sum(h.units for h in class_heads)])
        else:
            x, y, a, w = tf.numpy_function(batch_fn, [index, draw], [tf.float32, tf.float32, tf.int32, tf.float32],
                                           stateful=False)
        x.set_shape([None, size, size, 1])
        y.set_shape([None, 2 * npts if teacher else npts])
        a.set_shape([None, len(columns)])
        w.set_shape([None, len(spec.heads)])
        targets = {}
        for h in spec.heads:
            # a head no face of this data labels (fine-tuning on another head's data) gets a
            # dummy target of 0, weighted 0
            targets[h.name] = y if h.kind == REGRESSION else (a[:, columns[h.name]] if h.name in columns
                                                                  else tf.zeros_like(a[:, 0]))
            if teacher and h.kind != REGRESSION:
                # (N, 1 + classes): the class id, then the teacher's logits (facemtl.train.heads.DistillLoss)
                k = offsets[h.name]
                targets[h.name] = tf.concat([tf.cast(targets[h.name], tf.float32)[:, None], t[:, k:k + h.units]], 1)
        if not masked:
            # every face has every target: no weights, so a fully labelled run is bit for bit
            # the run it was before partial labels existed
            return x, targets
        return x, targets, {h.name: w[:, k] for k, h in enumerate(spec.heads)}

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    return ds.prefetch(tf.data.AUTOTUNE)
