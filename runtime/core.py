"""The one inference path of both running modes: face squares of a frame in, answers out.

    core = InferenceCore(backend.run, spec, flip_average=False)
    out = core(frame, squares)      # out.points (N, K, 2) image pixels, out.probabilities[head] (N, C)
    points, crop_ms, infer_ms = core.refine(frame, out.points)   # the refinement stage, if any

For each square: cut it from the frame (`preprocess.frame_crops`: the training crop, with
only the square's region turned grey), normalise it as training did, run all squares through
the model in one batch (each also mirrored, and the answers averaged, with flip averaging),
decode every head (`HeadSpec.decode`), and map the landmarks from crop units to image pixels.
IMAGE mode (`FaceAnalyzer.analyze`) and VIDEO mode (`FaceTracker`) both call it, so the two
cannot drift apart; both call `refine` on the landmarks of their last pass, which runs the
refinement stage (`facemtl.runtime.refine`) where the core has one. numpy and OpenCV only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from facemtl.runtime.errors import SpecError
from facemtl.runtime.mirror import flip_averaged
from facemtl.runtime.preprocess import Square, canonical_square, eye_angle, frame_crops, normalize
from facemtl.runtime.spec import REGRESSION, CropPolicy, ModelSpec

Run = Callable[[np.ndarray], dict]  # (N, S, S, C) normalised crops -> {head: (N, units) raw outputs}


@dataclass
class CoreOutput:
    """The answers for N squares of one frame, in the order of the squares."""

    points: np.ndarray                     # (N, K, 2) landmarks in image pixels (K = 0 without a landmark head)
    probabilities: dict[str, np.ndarray]   # classification head -> (N, classes)
    crops: np.ndarray                      # (N, S*S) the model's inputs, rows zero-mean and unit-norm
    crop_ms: float = 0.0
    infer_ms: float = 0.0


class InferenceCore:
    """Crop, run (with or without flip averaging), decode, map to image pixels."""

    def __init__(self, run: Run, spec: ModelSpec, flip_average: bool = False, refiner=None):
        self.spec = spec
        self.flip_average = flip_average
        self.refiner = refiner  # facemtl.runtime.refine.Refiner, or None
        # flip_averaged checks now that every head can mirror: a bad spec fails at creation
        self._run = flip_averaged(run, spec) if flip_average else run
        self._landmarks = next((h for h in spec.heads if h.kind == REGRESSION), None)
        self._classes = [h for h in spec.heads if h.kind != REGRESSION]
        self._size = spec.input.size

    def __call__(self, frame: np.ndarray, squares: Sequence[Square]) -> CoreOutput:
        """`frame`: uint8 grey (H, W), BGR or BGRA, already validated by the caller."""
        n = len(squares)
        if n == 0:
            return CoreOutput(np.zeros((0, 0, 2)), {h.name: np.zeros((0, len(h.labels))) for h in self._classes},
                              np.zeros((0, self._size * self._size), np.float32))
        t0 = time.perf_counter()
        patches, mats = frame_crops(frame, squares, self._size)
        batch = normalize(patches, self.spec.input)[..., None]  # all crops at once: per-crop statistics
        t1 = time.perf_counter()
        raw = self._run(batch)
        t2 = time.perf_counter()
        missing = [h.name for h in self.spec.heads if h.name not in raw]
        if missing:
            raise SpecError(f"the model returned no output {missing[0]!r} (it returned {sorted(raw)})")
        if self._landmarks is not None:
            pc = self._landmarks.decode(raw[self._landmarks.name])["points"]
            # crop units -> image pixels, all faces at once: p = A^-1 (u - b)
            inv = np.linalg.inv(mats[:, :, :2])
            points = np.einsum("nij,nkj->nki", inv, pc - mats[:, None, :, 2])
        else:
            points = np.zeros((n, 0, 2))
        probabilities = {h.name: h.decode(raw[h.name])["probabilities"] for h in self._classes}
        crops = batch.reshape(n, -1)   # zero-mean already (`normalize`)
        crops /= np.maximum(np.linalg.norm(crops, axis=1, keepdims=True), 1e-9)
        return CoreOutput(points, probabilities, crops, 1000 * (t1 - t0), 1000 * (t2 - t1))

    def refine(self, frame: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(N, K, 2) landmarks moved by the refinement stage (unchanged without one), and its
        crop and model times in ms. Called once per frame on the last pass's landmarks."""
        if self.refiner is None or len(points) == 0 or points.shape[1] == 0:
            return points, 0.0, 0.0
        return self.refiner(frame, points)


def crop_angle(points: np.ndarray, free: float) -> float:
    """The crop's angle for a face whose landmarks are `points`: the roll of their eye line
    beyond +-`free` degrees (0 inside it), so the face is at most `free` degrees off upright
    in the crop, and the angle changes smoothly with the roll."""
    roll = eye_angle(points)
    return math.copysign(max(abs(roll) - free, 0.0), roll)


def landmark_square(points: np.ndarray, policy: CropPolicy, align: bool = True, align_free: float = 0.0,
                    anchor: float | None = None) -> Square:
    """The square to crop a face from given its landmarks from a previous look at it: the
    training framing of those points (`canonical_square`), turned by their roll beyond
    `align_free` degrees, its side scaled by exp(`anchor`) where given (the log of the
    detector's side over the landmarks' own side on the first look: a model's landmark
    square can be biased in size, and cropping from it again would compound the bias).
    A second pass in IMAGE mode and every tracked frame in VIDEO mode crop this way."""
    angle = crop_angle(points, align_free) if align else 0.0
    sq = canonical_square(points, policy, angle=angle)
    if anchor is None:
        return sq
    return Square(sq.cx, sq.cy, sq.side * math.exp(anchor), sq.angle)


def size_anchor(detector_square: Square, points: np.ndarray, policy: CropPolicy) -> float:
    """`landmark_square`'s anchor: log(detector square side / landmarks' canonical side)."""
    return math.log(detector_square.side / canonical_square(points, policy).side)


__all__ = ["CoreOutput", "InferenceCore", "crop_angle", "landmark_square", "size_anchor"]
