"""Measure how a detector's boxes map to the square the model was trained on. No TensorFlow.

The model learned faces framed by `canonical_square(landmarks, spec.crop)`. A detector has
its own idea of a face box, so each detector gets a `BoxCalibration` (centre offset dx, dy
and scale, in units of the box side) measured here on MTFL training images with their
annotated landmarks:

1. run the detector on each image; take each detection's `base_square` (its box as a square,
   or the canonical square of its own landmarks for YuNet);
2. match one detection per image to the ground-truth square, loosely at first (the truth's
   centre inside the detection's square, sides within a factor of 3), fit the median offset
   and log-scale per calibration name (the Haar profile cascade frames faces differently
   from the frontal one, so it has its own entry; boxes from the mirrored frame count with
   dx negated);
3. match again with that calibration applied (IoU of the calibrated square with the truth
   >= `min_iou`) and refit the medians on those matches.

The report gives the match rate and the residual spread after calibration, in units of the
face side, next to the training jitter (+-8% shift, exp(+-0.12) scale): the share of faces
whose crop falls inside what the model saw in training.

`facemtl calibrate` writes the result into a model's spec.json; `train/` calls
`calibrate_spec` after training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from facemtl.runtime.detectors import Detection, Detector, base_square, box_overlap, calibrated_square
from facemtl.runtime.preprocess import ImageError, Square, canonical_square, to_grey
from facemtl.runtime.mtfl import MTFL_ORIGIN, AnnotationError, DataError, read_annotations
from facemtl.runtime.spec import BoxCalibration, CropPolicy, ModelSpec
from facemtl.runtime.errors import CalibrationError  # noqa: F401 (re-exported)

# The jitter the model was trained with (facemtl.train.pipeline.Augment defaults): a calibrated
# crop inside these bounds is one the model has seen.
TRAIN_SHIFT = 0.08
TRAIN_LOG_SCALE = 0.12
MIN_FACES = 10  # fewest matches a calibration may be fitted on


@dataclass
class SourceFit:
    """The calibration fitted for one calibration name and how well it frames faces."""

    name: str
    calibration: BoxCalibration
    faces: int
    shift_p50: float  # median |centre error| / true side, after calibration (max of x, y)
    shift_p90: float
    scale_p50: float  # median |log(true side / calibrated side)|
    scale_p90: float
    within_jitter: float  # share of faces inside the training jitter, 0..1

    def to_dict(self) -> dict:
        c = self.calibration
        return {
            "name": self.name, "dx": round(c.dx, 4), "dy": round(c.dy, 4), "scale": round(c.scale, 4),
            "faces": self.faces, "shift_p50": round(self.shift_p50, 4), "shift_p90": round(self.shift_p90, 4),
            "scale_p50": round(self.scale_p50, 4), "scale_p90": round(self.scale_p90, 4),
            "within_jitter": round(self.within_jitter, 4),
        }


@dataclass
class CalibrationReport:
    detector: str
    images: int
    matched: int
    fits: dict[str, SourceFit] = field(default_factory=dict)
    unreadable: int = 0

    @property
    def match_rate(self) -> float:
        return self.matched / self.images if self.images else 0.0

    @property
    def calibrations(self) -> dict[str, BoxCalibration]:
        return {k: f.calibration for k, f in self.fits.items()}

    def to_dict(self) -> dict:
        return {"detector": self.detector, "images": self.images, "matched": self.matched,
                "match_rate": round(self.match_rate, 4), "unreadable": self.unreadable,
                "fits": {k: f.to_dict() for k, f in self.fits.items()}}

    def summary(self) -> str:
        lines = [f"{self.detector}: matched {self.matched}/{self.images} faces ({100 * self.match_rate:.1f}%)"
                 + (f", {self.unreadable} unreadable images skipped" if self.unreadable else "")]
        for f in self.fits.values():
            c = f.calibration
            lines.append(
                f"  {f.name:13s} dx {c.dx:+.3f}  dy {c.dy:+.3f}  scale {c.scale:.3f}  ({f.faces} faces)  "
                f"residual shift p50/p90 {100 * f.shift_p50:.1f}/{100 * f.shift_p90:.1f}%  "
                f"scale p50/p90 {100 * f.scale_p50:.1f}/{100 * f.scale_p90:.1f}%  "
                f"within training jitter {100 * f.within_jitter:.0f}%")
        return "\n".join(lines)


# --- the measurement -----------------------------------------------------------------------
def _offset(truth: Square, base: Square, mirrored: bool) -> tuple[float, float, float]:
    """(dx, dy, log scale) taking `base` onto `truth`, in the base square's axes and side."""
    a = math.radians(base.angle)
    c, s = math.cos(a), math.sin(a)
    ex, ey = truth.cx - base.cx, truth.cy - base.cy
    dx = (c * ex + s * ey) / base.side
    dy = (-s * ex + c * ey) / base.side
    return (-dx if mirrored else dx), dy, math.log(truth.side / base.side)


def _square_boxes(squares: Sequence[Square]) -> np.ndarray:
    return np.array([sq.box() for sq in squares], np.float64).reshape(-1, 4)


def _loose_match(truth: Square, dets: list[Detection], policy: CropPolicy) -> Detection | None:
    best, best_d = None, math.inf
    for d in dets:
        b = base_square(d, policy)
        if not (1 / 3 < truth.side / b.side < 3):
            continue
        ex, ey = abs(truth.cx - b.cx) / b.side, abs(truth.cy - b.cy) / b.side
        if ex < 0.5 and ey < 0.5 and ex + ey < best_d:
            best, best_d = d, ex + ey
    return best


def _fit(offsets: np.ndarray) -> BoxCalibration:
    med = np.median(offsets, axis=0)
    return BoxCalibration(dx=float(med[0]), dy=float(med[1]), scale=float(math.exp(med[2])), faces=len(offsets))


def _load(image) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{image}: cannot read or decode image")
    return bgr


def measure(
    detector: Detector,
    images: Sequence,
    points: np.ndarray,
    policy: CropPolicy,
    *,
    min_iou: float = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationReport:
    """Fit the detector's calibrations on `images` (uint8 arrays, grey or BGR, or paths)
    whose faces have the (N, 5, 2) landmarks `points`, one face per image."""
    points = np.asarray(points, np.float64).reshape(-1, 5, 2)
    if len(images) != len(points):
        raise CalibrationError(f"{len(images)} images but {len(points)} landmark sets; give one face per image")
    if not len(images):
        raise CalibrationError("no images to calibrate on")
    truths = [canonical_square(p, policy) for p in points]
    found: list[list[Detection]] = []
    unreadable = 0
    for i, image in enumerate(images):
        try:
            img = _load(image)
            if img.ndim == 3 and img.shape[2] == 4:
                img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
            elif img.ndim != 3:
                img = to_grey(img)
            found.append(detector.detect(img))
        except ImageError:
            unreadable += 1
            found.append([])
        if progress:
            progress(i + 1, len(images))

    # pass 1: loose match, first fit per calibration name
    first: dict[str, list] = {}
    for truth, dets in zip(truths, found):
        d = _loose_match(truth, dets, policy)
        if d is not None:
            first.setdefault(d.source, []).append(_offset(truth, base_square(d, policy), d.mirrored))
    cal1 = {k: _fit(np.array(v)) for k, v in first.items()}

    # pass 2: match the calibrated squares by IoU, refit
    matched: dict[str, list] = {}
    pairs: list[tuple[Square, Detection]] = []
    for truth, dets in zip(truths, found):
        dets = [d for d in dets if d.source in cal1]
        if not dets:
            continue
        sq = [calibrated_square(d, cal1[d.source], policy) for d in dets]
        iou, _ = box_overlap(np.array([truth.box()]), _square_boxes(sq))
        j = int(np.argmax(iou[0]))
        if iou[0, j] >= min_iou:
            d = dets[j]
            matched.setdefault(d.source, []).append(_offset(truth, base_square(d, policy), d.mirrored))
            pairs.append((truth, d))
    fits: dict[str, SourceFit] = {}
    for name, offs in matched.items():
        offs = np.array(offs)
        if len(offs) < MIN_FACES:
            continue
        cal = _fit(offs)
        # residuals of the calibrated squares, in units of the true side
        res = []
        for truth, d in pairs:
            if d.source != name:
                continue
            c = calibrated_square(d, cal, policy)
            ex, ey = abs(truth.cx - c.cx) / truth.side, abs(truth.cy - c.cy) / truth.side
            res.append((max(ex, ey), abs(math.log(truth.side / c.side))))
        res = np.array(res)
        inside = (res[:, 0] <= TRAIN_SHIFT) & (res[:, 1] <= TRAIN_LOG_SCALE)
        fits[name] = SourceFit(
            name, cal, len(offs),
            float(np.percentile(res[:, 0], 50)), float(np.percentile(res[:, 0], 90)),
            float(np.percentile(res[:, 1], 50)), float(np.percentile(res[:, 1], 90)),
            float(inside.mean()),
        )
    return CalibrationReport(repr(detector), len(images), len(pairs), fits, unreadable)


def calibrate(
    detector: Detector,
    images: Sequence,
    points: np.ndarray,
    policy: CropPolicy,
    **options,
) -> dict[str, BoxCalibration]:
    """The calibrations a detector needs, by name ("haar" and "haar_profile" for Haar,
    "yunet", "none"): merge them into `CropPolicy.calibrations`. Raises CalibrationError
    when the detector matched too few faces to fit one."""
    report = measure(detector, images, points, policy, **options)
    if not report.fits:
        raise CalibrationError(
            f"{report.detector} matched {report.matched} of {report.images} faces, too few to fit a "
            f"calibration (need {MIN_FACES}); check the images and landmarks"
        )
    return report.calibrations


def calibrate_spec(
    spec: ModelSpec,
    detectors: Iterable[Detector],
    images: Sequence,
    points: np.ndarray,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    **options,
) -> tuple[ModelSpec, list[CalibrationReport]]:
    """The spec with every detector's calibrations measured and merged in (others kept)."""
    cals = dict(spec.crop.calibrations)
    reports = []
    for det in detectors:
        cb = (lambda i, n, _d=det: progress(repr(_d), i, n)) if progress else None
        report = measure(det, images, points, spec.crop, progress=cb, **options)
        if not report.fits:
            raise CalibrationError(f"{report.detector} matched {report.matched} of {report.images} faces, too few "
                                   f"to fit a calibration (need {MIN_FACES})")
        cals.update(report.calibrations)
        reports.append(report)
    return spec.replace(crop=dataclasses.replace(spec.crop, calibrations=cals)), reports


# --- reading MTFL landmark files ---------------------------------------------------------------
def read_landmark_file(file: str | os.PathLike, root: str | os.PathLike | None = None,
                       origin: float = MTFL_ORIGIN) -> tuple[list[Path], np.ndarray]:
    """Image paths and (N, 5, 2) points of an MTFL annotation file, in 0-based pixel-index
    coordinates when `origin` is the file's (MTFL: 1); paths resolve against `root`
    (default: the file's folder). Parsed by `facemtl.runtime.mtfl`, as training parses it."""
    try:
        ann = read_annotations(file, root)
    except (AnnotationError, DataError) as e:
        raise CalibrationError(str(e)) from None
    points = ann.points.astype(np.float64) + (MTFL_ORIGIN - origin)
    return [ann.root / p for p in ann.paths], points


def spread_subset(n: int, limit: int | None) -> np.ndarray:
    """`limit` indices spread evenly over range(n) (all of them when limit is None or >= n)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


def calibrate_spec_file(
    spec_path: str | os.PathLike,
    data: str | os.PathLike,
    detectors: Sequence,
    *,
    limit: int | None = 2000,
    min_iou: float = 0.5,
    dry_run: bool = False,
    echo: Callable[[str], None] | None = print,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[CalibrationReport]:
    """Measure `detectors` ("haar", "yunet:PATH", "none" or Detector objects) on `limit`
    images of DATA/training.txt and write the calibrations into the spec file (atomically).

    What `facemtl calibrate` and `facemtl train --calibrate` run. `echo` gets each report's
    summary (None: silent). Raises CalibrationError, DetectorError or SpecError.
    """
    from facemtl.runtime.detectors import create_detector

    spec_path = Path(spec_path)
    if spec_path.is_dir():
        spec_path = spec_path / "spec.json"
    spec = ModelSpec.load(spec_path)
    data = Path(data)
    ann = data / "training.txt"
    if not ann.is_file():
        raise CalibrationError(f"{data} has no training.txt; give the MTFL folder (--data DIR or $FACEMTL_DATA)")
    dets = [create_detector(d) for d in detectors]
    if not dets:
        raise CalibrationError("no detectors to calibrate; give e.g. haar,yunet:PATH,none")
    paths, points = read_landmark_file(ann, data)
    keep = spread_subset(len(paths), limit)
    new_spec, reports = calibrate_spec(spec, dets, [paths[i] for i in keep], points[keep],
                                       progress=progress, min_iou=min_iou)
    if echo:
        for r in reports:
            echo(r.summary())
    if not dry_run:
        new_spec.save(spec_path)
        if echo:
            echo(f"wrote calibrations {', '.join(sorted(new_spec.crop.calibrations))} to {spec_path}")
    return reports
