"""The model contract, data only: what goes in, how a face is framed, what each head answers.

One `ModelSpec` travels with every artifact (beside `model.keras`, inside TFLite metadata and
ONNX `metadata_props`) and is the only thing the runtime trusts about a model file. It is
shared by `train/`, `convert/` and `runtime/`, so it imports nothing but the standard library
and numpy: a Raspberry Pi reads it without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from facemtl.runtime.errors import SpecError  # noqa: F401 (re-exported)

SPEC_VERSION = 1

# MTFL order. Left/right as seen in the image (x of left_eye < x of right_eye on a frontal
# face), which is also YuNet's order.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
# A horizontal flip swaps the image-left and image-right points.
LANDMARK_FLIP = (1, 0, 2, 4, 3)

REGRESSION = "regression"
CLASSIFICATION = "classification"

# Bounds that no real model comes near; a spec outside them is corrupt or hostile, and would
# otherwise fail far from here (a 10^9-pixel crop, a 10^9-unit output).
MAX_INPUT_SIZE = 1024
MAX_UNITS = 4096
# A refinement stage takes one grey patch per landmark as channels.
MAX_CHANNELS = 64


def _number(field: str, value: Any, *, positive: bool = False, minimum: float | None = None,
            maximum: float | None = None, integer: bool = False) -> None:
    """SpecError naming `field` unless `value` is a finite number in range (NaN, inf, a string,
    a bool, a non-integer where an integer is due: all refused)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (not integer or v == int(v))
        ok = ok and (not positive or v > 0) and (minimum is None or v >= minimum) and (maximum is None or v <= maximum)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        bounds = [" > 0" if positive else "", f" >= {minimum:g}" if minimum is not None else "",
                  f" <= {maximum:g}" if maximum is not None else ""]
        raise SpecError(f"{field} must be {kind}{''.join(b for b in bounds if b) and ','.join(b for b in bounds if b)}, "
                        f"got {value!r}")


@dataclass(frozen=True)
class InputSpec:
    """The tensor a model takes: `size` x `size` x `channels`, float32, normalised.

    `standardize` is per crop: (pixel - mean) / max(std, min_std). Per-crop statistics make
    the model indifferent to exposure and camera gain, which vary far more between a webcam
    and MTFL than anything else; `min_std` keeps a flat crop from amplifying sensor noise.
    """

    size: int = 40
    channels: int = 1
    normalization: str = "standardize"
    min_std: float = 8.0

    def __post_init__(self) -> None:
        _number("input.size", self.size, integer=True, maximum=MAX_INPUT_SIZE)
        if self.size < 8:
            raise SpecError(f"input size {self.size} is too small; use at least 8 pixels")
        _number("input.channels", self.channels, integer=True)
        _number("input.min_std", self.min_std, positive=True)
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise SpecError(f"input.channels must be 1..{MAX_CHANNELS}, got {self.channels}")
        if self.normalization != "standardize":
            raise SpecError(f"unknown normalization {self.normalization!r}; use 'standardize'")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)


@dataclass(frozen=True)
class BoxCalibration:
    """Maps a detector's box (x, y, w, h) to the square the model was trained on.

    centre = box centre + (dx, dy) * w; side = scale * w. Measured per detector on MTFL
    training images (`facemtl calibrate`), so every detector hands the model the framing
    it learned, whatever that detector's own idea of a face box is.
    """

    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0
    faces: int = 0  # how many MTFL faces the fit used; 0 for a default, unmeasured mapping

    def __post_init__(self) -> None:
        # a NaN or inf scale crashes at the first face; 0 gives empty crops; a negative one
        # silently turns every face 180 degrees
        _number("dx", self.dx)
        _number("dy", self.dy)
        _number("scale", self.scale, positive=True)
        _number("faces", self.faces, integer=True, minimum=0)

    def apply(self, box: np.ndarray) -> np.ndarray:
        """(N, 4) x, y, w, h boxes -> (N, 3) cx, cy, side squares."""
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        w = box[:, 2]
        cx = box[:, 0] + box[:, 2] / 2 + self.dx * w
        cy = box[:, 1] + box[:, 3] / 2 + self.dy * w
        return np.stack([cx, cy, self.scale * w], axis=1)


@dataclass(frozen=True)
class CropPolicy:
    """How five landmarks define the face square the model sees (training and tracking).

    side = `scale` x the RMS distance of the five points from their centroid; the centre is
    the centroid moved down by `shift_y` x side. The RMS radius does not change with in-plane
    rotation and changes little with yaw, unlike the inter-ocular distance, so profile faces
    are framed like frontal ones. Detectors reach the same square through `calibrations`.
    """

    scale: float = 3.0
    shift_y: float = 0.0
    calibrations: Mapping[str, BoxCalibration] = field(default_factory=dict)
    # "landmarks": the square above. "image": the whole image is the face (the original blog's
    # recipe, kept to measure against; it trains on one framing and meets another at test time).
    mode: str = "landmarks"

    def __post_init__(self) -> None:
        if self.mode not in ("landmarks", "image"):
            raise SpecError(f"unknown crop mode {self.mode!r}; use 'landmarks' or 'image'")
        _number("crop.scale", self.scale, positive=True)
        _number("crop.shift_y", self.shift_y)
        for name, cal in dict(self.calibrations).items():
            if not isinstance(cal, BoxCalibration):
                raise SpecError(f"crop.calibrations[{name!r}] must be a calibration, got {type(cal).__name__}")

    def calibration(self, detector: str) -> BoxCalibration:
        try:
            return self.calibrations[detector]
        except KeyError:
            known = ", ".join(sorted(self.calibrations)) or "none"
            raise SpecError(
                f"the model spec has no crop calibration for detector {detector!r} "
                f"(calibrated: {known}); run `facemtl calibrate` for it"
            ) from None


@dataclass(frozen=True)
class HeadSpec:
    """One task: its name (the output name everywhere), kind, width, labels and tolerances.

    Regression (landmarks): `units` = 2 x points, (x1, y1, ..., x5, y5) in crop units
    (0..1 across the face square). Classification: `units` = len(labels) logits; the
    label at index i is class i. `tolerance` is how far the head's metric may move after
    conversion: NME points for regression, accuracy points for classes.
    """

    name: str
    kind: str
    units: int
    labels: tuple[str, ...] = ()
    loss_weight: float = 1.0
    tolerance: float = 0.5
    min_agreement: float = 0.98
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not self.name.replace("_", "").isalnum():
            raise SpecError(f"head name {self.name!r} must be a non-empty identifier")
        _number(f"heads[{self.name!r}].units", self.units, integer=True, minimum=1, maximum=MAX_UNITS)
        _number(f"heads[{self.name!r}].loss_weight", self.loss_weight)
        _number(f"heads[{self.name!r}].tolerance", self.tolerance, minimum=0)
        _number(f"heads[{self.name!r}].min_agreement", self.min_agreement, minimum=0, maximum=1)
        if isinstance(self.labels, (str, bytes)) or not all(isinstance(x, str) for x in self.labels):
            raise SpecError(f"heads[{self.name!r}].labels must be a list of strings, got {self.labels!r}")
        if self.kind not in (REGRESSION, CLASSIFICATION):
            raise SpecError(f"head {self.name!r}: kind must be {REGRESSION!r} or {CLASSIFICATION!r}")
        if self.kind == CLASSIFICATION and len(self.labels) != self.units:
            raise SpecError(
                f"head {self.name!r}: {self.units} units but {len(self.labels)} labels; "
                "a classification head needs one label per unit"
            )
        if self.kind == CLASSIFICATION and self.units < 2:
            raise SpecError(f"head {self.name!r}: a classification head needs at least 2 classes")
        if self.loss_weight < 0:
            raise SpecError(f"head {self.name!r}: loss_weight must be >= 0, got {self.loss_weight}")
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def metric(self) -> str:
        return "nme" if self.kind == REGRESSION else "accuracy"

    def decode(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """Raw outputs (N, units) -> named predictions, like the Head API's `predictions()`.

        regression: {"points": (N, units/2, 2) in crop units};
        classification: {"probabilities": (N, C), "class_ids": (N,)}.
        """
        raw = np.asarray(raw, dtype=np.float32)
        if raw.ndim == 1:
            raw = raw[None]
        if raw.ndim != 2 or raw.shape[1] != self.units:
            raise SpecError(
                f"head {self.name!r} expects outputs of shape (N, {self.units}), got {raw.shape}; "
                "the model file and its spec disagree"
            )
        if self.kind == REGRESSION:
            return {"points": raw.reshape(len(raw), -1, 2)}
        z = raw - raw.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return {"probabilities": p, "class_ids": p.argmax(axis=1)}


@dataclass(frozen=True)
class QuantParams:
    """Affine int8/uint8 quantization of one tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int
    dtype: str = "int8"

    def __post_init__(self) -> None:
        if self.dtype not in ("int8", "uint8", "int16", "uint16", "int32"):
            raise SpecError(f"quantization dtype must be an integer type (int8, uint8, ...), got {self.dtype!r}")
        info = np.iinfo(self.dtype)
        _number("quantization scale", self.scale, positive=True)
        _number("quantization zero_point", self.zero_point, integer=True, minimum=info.min, maximum=info.max)


@dataclass(frozen=True)
class RefineSpec:
    """What makes a model a refinement stage (Sun et al., CVPR 2013): it looks at one grey
    patch per landmark, each cut from the frame around the landmark the first stage gave, and
    answers a correction of each point.

    `first`: the first stage it was trained after: `contract_id` of that model's spec (its
    input, crop policy, heads and trunk), which the runtime checks before it runs the two
    together; `first_name` says which model that was, for people. `patch`: the side of each
    patch as a fraction of the face square of the first stage's landmarks (`CropPolicy` of
    this spec); every patch is turned by the roll of the eye line. The model's input has one
    channel per landmark (`InputSpec.size` pixels square, each patch standardised on its own);
    its regression head answers, per point, where the point is in its own patch: (x, y) in
    patch units with 0 at the patch centre (the first stage's answer).

    `level`: the place in the cascade. 1 refines the first stage's answers; 2 was trained on
    the answers of the packaged level 1 after the same first stage, and runs after it
    (`facemtl.runtime.refine.Cascade`).
    """

    first: str
    patch: float = 0.3
    first_name: str = ""
    level: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.first, str) or not self.first:
            raise SpecError(f"refine.first must name the first stage's contract, got {self.first!r}")
        _number("refine.patch", self.patch, positive=True, maximum=4.0)
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= 8:
            raise SpecError(f"refine.level must be a cascade level from 1 to 8, got {self.level!r}")


def contract_id(spec: "ModelSpec") -> str:
    """A short digest of what a model's answers mean and how it frames a face: input, crop
    scale/shift/mode, heads, landmark names and trunk (not the detector calibrations or the
    file format, which change nothing the model computes)."""
    import hashlib

    d = {"input": dataclasses.asdict(spec.input), "crop": [spec.crop.scale, spec.crop.shift_y, spec.crop.mode],
         "heads": [dataclasses.asdict(h) for h in spec.heads], "landmark_names": list(spec.landmark_names),
         "trunk": spec.trunk}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    input: InputSpec = field(default_factory=InputSpec)
    crop: CropPolicy = field(default_factory=CropPolicy)
    heads: tuple[HeadSpec, ...] = ()
    landmark_names: tuple[str, ...] = LANDMARK_NAMES
    trunk: str = ""
    # Filled in by convert/ for integer files: "input" and one entry per head name.
    quantization: Mapping[str, QuantParams] = field(default_factory=dict)
    version: int = SPEC_VERSION
    # Set for a refinement stage (a second model run after this kind of model); None otherwise.
    refine: RefineSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.refine is not None and not isinstance(self.refine, RefineSpec):
            raise SpecError("refine must be a refine spec or None")
        if self.refine is None and self.input.channels != 1:
            raise SpecError(f"only grey input (channels=1) is supported, got {self.input.channels}")
        if self.refine is not None and self.input.channels != len(self.landmark_names):
            raise SpecError(f"a refinement stage takes one patch per landmark: input.channels must be "
                            f"{len(self.landmark_names)}, got {self.input.channels}")
        object.__setattr__(self, "landmark_names", tuple(self.landmark_names))
        if not all(isinstance(h, HeadSpec) for h in self.heads):
            raise SpecError("heads must be head specs")
        if not self.landmark_names or not all(isinstance(n, str) and n for n in self.landmark_names):
            raise SpecError(f"landmark_names must be a non-empty list of names, got {self.landmark_names!r}")
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names):
            raise SpecError(f"head names must be unique, got {names}")
        for h in self.heads:
            if h.kind == REGRESSION and h.units != 2 * len(self.landmark_names):
                raise SpecError(
                    f"head {h.name!r} has {h.units} units but the spec names "
                    f"{len(self.landmark_names)} landmarks (needs {2 * len(self.landmark_names)})"
                )

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.heads)

    def head(self, name: str) -> HeadSpec:
        for h in self.heads:
            if h.name == name:
                return h
        raise SpecError(f"no head named {name!r}; this model has {', '.join(self.head_names)}")

    def select(self, names: list[str] | tuple[str, ...]) -> "ModelSpec":
        """The same spec with only `names`, in the order given (`--heads landmarks,pose`)."""
        return dataclasses.replace(self, heads=tuple(self.head(n) for n in names))

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def with_weights(self, weights: Mapping[str, float]) -> "ModelSpec":
        unknown = set(weights) - set(self.head_names)
        if unknown:
            raise SpecError(f"weights given for unknown heads {sorted(unknown)}; heads: {self.head_names}")
        heads = tuple(dataclasses.replace(h, loss_weight=float(weights.get(h.name, h.loss_weight))) for h in self.heads)
        return dataclasses.replace(self, heads=heads)

    # --- JSON -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        try:
            version = int(d.get("version", SPEC_VERSION))
            if version > SPEC_VERSION:
                raise SpecError(f"spec version {version} is newer than this facemtl understands ({SPEC_VERSION}); upgrade facemtl")
            crop = dict(d.get("crop", {}))
            cals = {}
            for k, v in crop.get("calibrations", {}).items():
                try:
                    cals[k] = BoxCalibration(**v)
                except SpecError as e:  # name the field in full: crop.calibrations['haar'].scale
                    raise SpecError(f"crop.calibrations[{k!r}].{e}") from None
            crop["calibrations"] = cals
            quant = {}
            for k, v in d.get("quantization", {}).items():
                try:
                    quant[k] = QuantParams(**v)
                except SpecError as e:
                    raise SpecError(f"quantization[{k!r}]: {e}") from None
            return cls(
                input=InputSpec(**d.get("input", {})),
                crop=CropPolicy(**crop),
                heads=tuple(HeadSpec(**h) for h in d["heads"]),
                landmark_names=tuple(d.get("landmark_names", LANDMARK_NAMES)),
                trunk=d.get("trunk", ""),
                quantization=quant,
                version=version,
                refine=RefineSpec(**d["refine"]) if d.get("refine") is not None else None,
            )
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise SpecError(f"not a facemtl model spec: {e}") from e

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelSpec":
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise SpecError(f"model spec is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise SpecError("model spec JSON must be an object")
        return cls.from_dict(d)

    def save(self, path) -> None:
        from facemtl.runtime.io import atomic_write_text

        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path) -> "ModelSpec":
        try:
            with open(path, "rb") as f:
                text = f.read()
        except OSError as e:
            raise SpecError(f"cannot read model spec {path}: {e.strerror}") from e
        try:
            return cls.from_json(text)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from e


def default_heads() -> tuple[HeadSpec, ...]:
    """The five MTFL tasks. Class index i is MTFL's attribute value i + 1."""
    return (
        HeadSpec("landmarks", REGRESSION, 10, loss_weight=1.0, tolerance=0.15,
                 description="5 points, MTFL order, (x, y) in crop units"),
        HeadSpec("gender", CLASSIFICATION, 2, ("male", "female"), loss_weight=0.25,
                 description="apparent gender as annotated in MTFL"),
        HeadSpec("smile", CLASSIFICATION, 2, ("smiling", "not_smiling"), loss_weight=0.25),
        HeadSpec("glasses", CLASSIFICATION, 2, ("glasses", "no_glasses"), loss_weight=0.25),
        HeadSpec("pose", CLASSIFICATION, 5, ("left_profile", "left", "frontal", "right", "right_profile"),
                 loss_weight=0.25, description="head yaw in five bins, left/right as seen in the image"),
    )


# A flip mirrors yaw: class i becomes POSE_FLIP[i].
POSE_FLIP = (4, 3, 2, 1, 0)


def default_spec() -> ModelSpec:
    return ModelSpec(heads=default_heads())
