"""Is a small image, as a whole, one face? The face verifier, for tight face crops.

A detector wants some context around a face; an image that is itself a tight face crop (a
64x64 image cut brows to chin, as face data sets hand them out) is sometimes found by
nothing, even on a padded copy (docs/experiments.md, runs 50-53). Where nothing is found in
a small image, IMAGE mode asks a tiny classifier, trained on tight crops and face-free
squares of MTFL's training photographs (`python -m facemtl.train.verify`, run 59), whether
the whole image is one face; if it is, the face is cut from the square a tight crop frames its
face by (brows to chin: the verifier spec's "tight" calibration, fitted on the training
part's crops), with the verifier's probability as its score.

    verifier = FaceVerifier(load_backend("facemtl_verify_int8.tflite"))
    detection = verifier.detect(image)      # a whole-image Detection, or None

The verifier file is a facemtl model file with one classification head, `face`
(background, face), trained on whole images (crop mode "image"): the same crop code and
normalisation as every model here; its spec's crop scale and shift are those of the model
whose square its framing gives (a model framed otherwise gets no verifier). numpy and
OpenCV only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from facemtl.runtime.detectors import Detection, calibrated_square
from facemtl.runtime.errors import SpecError
from facemtl.runtime.formats import of_same_kind
from facemtl.runtime.preprocess import Square, frame_crops, image_square, normalize, to_grey

# The packaged verifier: int8 TFLite, else float ONNX.
VERIFY_MODEL_FILES = ("facemtl_verify_int8.tflite", "facemtl_verify_fp32.onnx")

# P(face) at or above which a small image in which nothing was found is one face: chosen by
# run 59's rule on the validation part of training.txt (docs/experiments.md).
DEFAULT_THRESHOLD = 0.7

HEAD = "face"
FRAMING = "tight"  # the calibration that frames a verified whole image (`facemtl.train.verify.fit_framing`)
SOURCE = "verifier"


class FaceVerifier:
    """P(the whole image is one face) from a verifier file; `detect` turns it into a
    whole-image detection at or above `threshold`."""

    def __init__(self, backend, threshold: float = DEFAULT_THRESHOLD):
        spec = backend.spec
        where = getattr(backend, "path", None) or "model"
        try:
            head = spec.head(HEAD)
        except (KeyError, SpecError):
            raise SpecError(f"{where}: not a face verifier (its spec has no {HEAD!r} head); give the file "
                            "`facemtl convert` wrote from a `python -m facemtl.train.verify` run") from None
        if head.kind == "regression" or "face" not in head.labels or spec.crop.mode != "image":
            raise SpecError(f"{where}: not a face verifier (a {HEAD!r} classification head with a 'face' class, "
                            f"on whole images, is needed; this one has labels {list(head.labels)}, crop mode "
                            f"{spec.crop.mode!r})")
        try:
            self.framing = spec.crop.calibration(FRAMING)
        except SpecError:
            raise SpecError(f"{where}: this face verifier has no {FRAMING!r} framing in its spec; convert it with "
                            "`python -m facemtl.train.verify convert ... --data MTFL`") from None
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"the verifier's threshold must be in 0..1, got {threshold}")
        self.backend = backend
        self.spec = spec
        self.threshold = threshold
        self._head = head
        self._face = head.labels.index("face")

    @property
    def path(self) -> Path | None:
        return getattr(self.backend, "path", None)

    def probability(self, image: np.ndarray) -> float:
        """P(face) for the whole of `image` (grey, BGR or BGRA)."""
        grey = to_grey(image)
        crops, _ = frame_crops(grey, [image_square(grey.shape)], self.spec.input.size)
        x = normalize(crops, self.spec.input)[..., None]
        p = self._head.decode(self.backend.run(x)[self._head.name])["probabilities"]
        return float(p[0, self._face])

    def frames(self, policy) -> bool:
        """Whether its framing gives the squares of a model cropped by `policy` (a CropPolicy)."""
        return (policy.scale, policy.shift_y) == (self.spec.crop.scale, self.spec.crop.shift_y)

    def detect(self, image: np.ndarray) -> Detection | None:
        """The whole image as one face, if the verifier says it is one: its box is the image,
        its square the tight-crop framing of that box (`square`), its score P(face)."""
        p = self.probability(image)
        if p < self.threshold:
            return None
        return self._whole(image, p)

    def square(self, image: np.ndarray) -> Square:
        """The square a whole-image face of `image` is cut from: the training square of the
        face of a brows-to-chin crop that size (the "tight" framing)."""
        return self._whole(image, 0.0).square

    def _whole(self, image: np.ndarray, score: float) -> Detection:
        h, w = image.shape[:2]
        d = Detection((0.0, 0.0, float(w), float(h)), score, SOURCE)
        return dataclasses.replace(d, square=calibrated_square(d, self.framing, self.spec.crop))

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close:
            close()


def packaged_verify_path(models: Path, first_path: Path | None) -> Path | None:
    """The packaged verifier of the packaged model's kind (.tflite with .tflite) where there is
    one, else any; None if the install has none."""
    return of_same_kind(models, VERIFY_MODEL_FILES, first_path)


__all__ = ["DEFAULT_THRESHOLD", "FaceVerifier", "VERIFY_MODEL_FILES", "packaged_verify_path"]
