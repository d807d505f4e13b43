"""The refinement stage at run time: a second, small model that looks at a patch around each
landmark the first (whole-face) model gave, cut from the frame at the frame's own resolution,
and moves each point by the correction it answers (a cascade, Sun et al., CVPR 2013).

    refiner = Refiner(load_backend("facemtl_refine_int8.tflite"), first_spec=backend.spec)
    points, crop_ms, infer_ms = refiner(frame, points)     # (N, K, 2) image pixels in and out

The patches are cut by `facemtl.runtime.preprocess.frame_patches`, all faces of a frame at
once; training (`facemtl.train.refine`) cuts them with its one-face form, `point_patches`,
the same code. The refinement file is a facemtl model file like the first (its spec's
`refine` names the first stage's contract, `RefineSpec`); a refinement file made for another
first model is refused. numpy and OpenCV only.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from facemtl.runtime.errors import SpecError
from facemtl.runtime.formats import of_same_kind
from facemtl.runtime.mirror import mirror_permutation
from facemtl.runtime.preprocess import frame_patches, from_patches
from facemtl.runtime.spec import REGRESSION, ModelSpec, contract_id

# Whether FaceAnalyzerOptions(refine=None) runs the packaged refinement stage with the packaged
# model: set by the rule of docs/experiments.md (run 44), measured on training frames.
DEFAULT_ON = True

# The packaged refinement stage, beside the packaged first stage: int8 TFLite, else float ONNX;
# and its second cascade level (run after it, where present), in the same two kinds.
REFINE_MODEL_FILES = ("facemtl_refine_int8.tflite", "facemtl_refine_fp32.onnx")
REFINE2_MODEL_FILES = ("facemtl_refine2_int8.tflite", "facemtl_refine2_fp32.onnx")


class Refiner:
    """Runs a refinement file on the landmarks of N faces of a frame, all in one batch."""

    def __init__(self, backend, first_spec: ModelSpec | None = None, flip_average: bool = False):
        spec: ModelSpec = backend.spec
        if spec.refine is None:
            raise SpecError(f"{getattr(backend, 'path', 'model')}: not a refinement stage (its spec has no 'refine'); "
                            "give the file `python -m facemtl.train.refine convert` wrote")
        if first_spec is not None and spec.refine.first != contract_id(first_spec):
            raise SpecError(f"{getattr(backend, 'path', 'model')}: this refinement stage was trained after another "
                            f"first model ({spec.refine.first_name or spec.refine.first}); the model in use has contract "
                            f"{contract_id(first_spec)}, the refinement file wants {spec.refine.first}")
        self.backend = backend
        self.spec = spec
        self.flip_average = flip_average
        self._head = next(h for h in spec.heads if h.kind == REGRESSION)
        self._k = len(spec.landmark_names)
        self._perm = list(mirror_permutation(spec.landmark_names, "the refinement stage's landmarks"))

    @property
    def path(self) -> Path | None:
        return getattr(self.backend, "path", None)

    def inputs(self, frame: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, K) model input and (N, K, 2, 3) patch matrices for (N, K, 2) landmarks."""
        return frame_patches(frame, points, self.spec.crop, self.spec.refine.patch, self.spec.input)

    def __call__(self, frame: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Refined (N, K, 2) landmarks in image pixels, and the crop and model times in ms."""
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0 or points.shape[1] != self._k:
            return points, 0.0, 0.0
        t0 = time.perf_counter()
        x, mats = self.inputs(frame, points)
        t1 = time.perf_counter()
        n = len(x)
        batch = np.concatenate([x, mirror_patches(x, self._perm)]) if self.flip_average else x
        offsets = self._head.decode(self.backend.run(batch)[self._head.name])["points"]
        if self.flip_average:
            offsets = 0.5 * (offsets[:n] + mirror_offsets(offsets[n:], self._perm))
        t2 = time.perf_counter()
        out = from_patches(offsets.reshape(-1, 2), mats.reshape(-1, 2, 3)).reshape(n, self._k, 2)
        return out, 1000 * (t1 - t0), 1000 * (t2 - t1)

    @property
    def level(self) -> int:
        return self.spec.refine.level

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()


class Cascade:
    """Refinement levels run in turn, each from the last one's answers (level 1 from the first
    stage's): a drop-in for one `Refiner` (same call, times summed; `path` is level 1's)."""

    def __init__(self, stages: list[Refiner]):
        levels = [r.level for r in stages]
        if not stages or levels != list(range(1, len(stages) + 1)):
            raise SpecError(f"a refinement cascade runs levels 1, 2, ... in order; these files are levels {levels}")
        self.stages = list(stages)

    @property
    def path(self) -> Path | None:
        return self.stages[0].path

    @property
    def paths(self) -> list[Path | None]:
        return [r.path for r in self.stages]

    def __call__(self, frame: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, float, float]:
        crop_ms = infer_ms = 0.0
        for r in self.stages:
            points, c, i = r(frame, points)
            crop_ms, infer_ms = crop_ms + c, infer_ms + i
        return points, crop_ms, infer_ms

    def close(self) -> None:
        for r in self.stages:
            r.close()


def mirror_patches(x: np.ndarray, perm) -> np.ndarray:
    """The refinement input of the mirror image of the same faces, from (N, S, S, K) patches:
    each patch flipped left-right, and patch k put where its mirror twin was (left eye <->
    right eye). A patch of the mirror image around the mirrored point, turned by the mirrored
    (negated) roll, is the mirrored patch: no second cut from the frame."""
    return np.ascontiguousarray(x[:, :, ::-1, :][..., list(perm)])


def mirror_offsets(offsets: np.ndarray, perm) -> np.ndarray:
    """Answers (N, K, 2) for `mirror_patches` inputs, put back into the unmirrored faces' frame:
    twins swapped back, x (from the patch centre) negated."""
    out = np.asarray(offsets, np.float32)[:, list(perm)].copy()
    out[..., 0] *= -1
    return out


def packaged_refine_path(models: Path, first_path: Path | None) -> Path | None:
    """The packaged refinement file to pair with the packaged first model: the one of the same
    kind (.tflite with .tflite) where there is one, else any; None if the install has none."""
    return of_same_kind(models, REFINE_MODEL_FILES, first_path)


def packaged_refine_paths(models: Path, first_path: Path | None) -> list[Path]:
    """The packaged cascade for the packaged first model: level 1 (`packaged_refine_path`), then
    level 2 of the same kind where the install has one; [] without a level 1."""
    one = packaged_refine_path(models, first_path)
    if one is None:
        return []
    two = [models / n for n in REFINE2_MODEL_FILES if (models / n).is_file() and (models / n).suffix == one.suffix]
    return [one] + two[:1]


__all__ = ["DEFAULT_ON", "Cascade", "Refiner", "mirror_offsets", "mirror_patches", "REFINE_MODEL_FILES",
           "REFINE2_MODEL_FILES", "packaged_refine_path", "packaged_refine_paths"]
