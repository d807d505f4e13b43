"""Face detectors: a frame in, face boxes out, in pixels of that frame. OpenCV and numpy only.

Three detectors, named as on the command line (`--detector`):

- `yunet` (the default): YuNet through `cv2.FaceDetectorYN`, from the file packaged with
  facemtl (`yunet:PATH` for another). Better and faster than Haar, in OpenCV 4.x and 5.x,
  and it returns the five MTFL points too, so the face square is built from those points by
  `canonical_square` (the training framing), not from its box.
- `haar`: OpenCV's frontal Haar cascade; where it finds no face, the profile
  cascade on the frame and on its mirror image (the cascade only knows one side) and the
  frontal cascade on the frame turned by +-25 degrees, merged by non-maximum suppression.
  `haar:all` runs every cascade on every image, `haar:video` the upright frontal one alone
  (`HAAR_PRESETS`). Ships with opencv-python(-headless) 4.x; 5.0 dropped the cascade files.
- `none`: the whole image is the face box (the image is already a face crop).

A detection is only a box; the square the model sees is `crop_square(detection, policy)`,
which maps the box through the detector's `BoxCalibration` from the model spec (measured by
`facemtl calibrate` on MTFL training images; see `runtime/calibration.py`).

Every detector can run on a downscaled copy of the frame (`max_side`): Haar's cost grows
with the pixel count, and faces big enough to analyse at 40x40 survive a halving.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from facemtl.runtime.preprocess import Square, canonical_square
from facemtl.runtime.spec import BoxCalibration, CropPolicy
from facemtl.runtime.errors import DetectorError  # noqa: F401 (re-exported)

HAAR = "haar"
YUNET = "yunet"
NONE = "none"
DETECTOR_NAMES = (HAAR, YUNET, NONE)

# Calibration names. A profile cascade box frames a face differently from a frontal one, so
# it has its own entry; a profile box found on the mirrored frame uses it with dx negated.
HAAR_PROFILE = "haar_profile"

# Tight face crops: where nothing is found in an image whose longer side (as detected, after
# `max_side`) is at most SMALL_IMAGE pixels, detect again with PAD_SMALL x that side of border
# on every side (`Detector._detect_padded`). Chosen on tight crops of training faces
# (`python bench/frames.py make-tight`, docs/runtime.md).
SMALL_IMAGE = 256
PAD_SMALL = 0.25

# The YuNet file packaged with facemtl (MIT; runtime/models/NOTICE.md, LICENSE-yunet.txt).
PACKAGED_YUNET = Path(__file__).resolve().parent / "models" / "face_detection_yunet_2026may.onnx"

_HAAR_FIX = (
    "OpenCV {version} has no Haar cascade files (opencv-python 5.0 dropped them). "
    "Use the default `--detector yunet`, or `--detector none` for face crops, or install "
    "OpenCV 4.x for Haar (`pip install 'opencv-python-headless>=4.8,<5'`)"
)


@dataclass(frozen=True)
class Detection:
    """One face found in a frame.

    `box` is the detector's own x, y, w, h in frame pixels (what `Face.box` reports).
    `source` names the calibration that maps it to the model's square (`crop_square`).
    `landmarks`, (5, 2) frame pixels in MTFL order, are set when the detector frames faces
    by its points (YuNet): the square is then built from them, not from the box. `angle`
    (degrees) turns that square (0 for every detector here). `mirrored`: the box came from the
    mirrored frame, so its calibration's dx is negated. `square`: the model's square itself,
    where the detection brings its own (the face verifier's whole-image face,
    `facemtl.runtime.verify`); no calibration is applied to it.
    """

    box: tuple[float, float, float, float]
    score: float
    source: str
    landmarks: np.ndarray | None = None
    mirrored: bool = False
    angle: float = 0.0
    square: "Square | None" = None


class Detector:
    """Base class: `detect(image) -> list[Detection]`, best first.

    `image` is uint8 grey (H, W) or BGR (H, W, 3); subclasses convert as they need.
    `max_side`: detect on a copy downscaled so its longer side is at most this many pixels
    (boxes come back in full-frame pixels); None detects at full size. `retry_full`: where
    nothing is found on that copy, detect again at full size. `pad_small`: the paddings (a
    fraction of the longer side) tried in turn on a small image in which nothing was found,
    on a copy scaled by `small_scale` (docs/experiments.md, runs 40, 50 and 53).
    """

    name = ""

    def __init__(self, max_side: int | None = None, pad_small: float | Sequence[float] = PAD_SMALL,
                 retry_full: bool = False, small_scale: float = 1.0):
        if max_side is not None and max_side < 32:
            raise DetectorError(f"max_side={max_side} is too small; use at least 32 pixels or None")
        self.max_side = max_side
        self.pad_small = pad_small
        if not 0.5 <= small_scale <= 4.0:
            raise DetectorError(f"small_scale must be in 0.5..4, got {small_scale}")
        self.retry_full = bool(retry_full)
        self.small_scale = float(small_scale)

    @property
    def pad_small(self) -> tuple[float, ...]:
        """The paddings tried in turn on a small image in which nothing was found (() = none)."""
        return self._pads

    @pad_small.setter
    def pad_small(self, pads: float | Sequence[float]) -> None:
        pads = (pads,) if isinstance(pads, (int, float)) else tuple(pads)
        if not all(0.0 <= p <= 2.0 for p in pads):
            raise DetectorError(f"pad_small must be in 0..2 (a fraction of the image side), got {pads}")
        self._pads = tuple(float(p) for p in pads if p)

    def detect(self, image: np.ndarray) -> list[Detection]:
        small, k = _downscale(image, self.max_side)
        found = self._detect(small)
        if not found and k != 1.0 and self.retry_full:
            # faces too small for the downscaled copy: the whole frame's cost, paid only by
            # images in which nothing was found (IMAGE mode's default, `retry_full`)
            small, k = image, 1.0
            found = self._detect(small)
        if not found and self._pads and max(small.shape[:2]) <= SMALL_IMAGE:
            found = self._detect_padded(small)
        return found if k == 1.0 else [_rescale(d, k) for d in found]

    def _detect_padded(self, image: np.ndarray) -> list[Detection]:
        """A small image in which nothing was found may be one tight face crop, whose face
        touches the borders: detectors need some context around a face. Detect again on the
        image with each `pad_small` x its longer side of replicated border on every side, in
        turn, until something is found."""
        for p in self._pads:
            pad = max(1, round(p * max(image.shape[:2])))
            padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
            if self.small_scale != 1.0:
                big = cv2.resize(padded, None, fx=self.small_scale, fy=self.small_scale, interpolation=cv2.INTER_LINEAR)
                found = [_rescale(d, 1.0 / self.small_scale) for d in self._detect(big)]
            else:
                found = self._detect(padded)
            if found:
                return [_shift(d, -pad) for d in found]
        return []

    def _detect(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}(max_side={self.max_side})"


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """A copy whose longer side is at most `max_side`, and the factor back to full size."""
    h, w = image.shape[:2]
    if max_side is None or max(h, w) <= max_side:
        return image, 1.0
    f = max_side / max(h, w)
    small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return small, w / small.shape[1]


def _shift(d: Detection, offset: float) -> Detection:
    """`d` moved by `offset` pixels along both axes."""
    x, y, w, h = d.box
    lm = None if d.landmarks is None else d.landmarks + offset
    return Detection((x + offset, y + offset, w, h), d.score, d.source, lm, d.mirrored, d.angle)


def _rescale(d: Detection, k: float) -> Detection:
    # pixel-index coordinates: a point x of the small image is at (x + 0.5) * k - 0.5 in the
    # frame; box corners (edges) scale plainly
    if k == 1.0:
        return d
    box = tuple(float(v) * k for v in d.box)
    lm = None if d.landmarks is None else (d.landmarks + 0.5) * k - 0.5
    return Detection(box, d.score, d.source, lm, d.mirrored, d.angle)


def _as_grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def _as_bgr(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


# --- non-maximum suppression ---------------------------------------------------------------
def box_overlap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and intersection-over-the-smaller-box of (N, 4) and (M, 4) x, y, w, h boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y2 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] * a[:, 3])[:, None]
    area_b = (b[:, 2] * b[:, 3])[None, :]
    iou = inter / np.maximum(area_a + area_b - inter, 1e-9)
    iom = inter / np.maximum(np.minimum(area_a, area_b), 1e-9)
    return iou, iom


_NMS_IOU = 0.3
_NMS_CONTAINMENT = 0.6


def nms(detections: Sequence[Detection], iou: float = _NMS_IOU, containment: float = _NMS_CONTAINMENT) -> list[Detection]:
    """Greedy NMS, best score first (ties keep the earlier detection). A box is dropped when
    its IoU with a kept box exceeds `iou`, or when that much of the smaller of the two lies
    inside the other (`containment`): a profile box inside a frontal one is the same face."""
    if not detections:
        return []
    order = sorted(range(len(detections)), key=lambda i: -detections[i].score)
    boxes = np.array([detections[i].box for i in order], np.float64)
    ious, ioms = box_overlap(boxes, boxes)
    keep: list[int] = []
    for j in range(len(order)):
        if all(ious[j, k] <= iou and ioms[j, k] <= containment for k in keep):
            keep.append(j)
    return [detections[order[j]] for j in keep]


# --- Haar ----------------------------------------------------------------------------------
def haar_cascade_dir() -> Path:
    """The folder of OpenCV's cascade files, or a DetectorError saying how to get them."""
    data = getattr(cv2, "data", None)
    folder = getattr(data, "haarcascades", None)
    if not hasattr(cv2, "CascadeClassifier") or not folder or not os.path.isdir(folder):
        raise DetectorError(_HAAR_FIX.format(version=cv2.__version__))
    return Path(folder)


def _load_cascade(file: str) -> "cv2.CascadeClassifier":
    path = haar_cascade_dir() / file
    if not path.is_file():
        raise DetectorError(_HAAR_FIX.format(version=cv2.__version__) + f" (missing {path.name})")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DetectorError(f"OpenCV could not load the Haar cascade {path}; reinstall opencv-python-headless 4.x")
    return cascade


class HaarDetector(Detector):
    """OpenCV's Haar cascades, in two passes, merged by NMS.

    1. The frontal cascade (`haarcascade_frontalface_alt2`) on a copy whose longer side is
       `max_side` (288).
    2. Only where pass 1 found no face that at least `confident_neighbors` (4) windows agreed
       on (`fallback=True`, the default; every image with `fallback=False`): the profile
       cascade on a `profile_max_side` (240) copy and on its
       mirror image (the cascade knows one side only), and the frontal cascade on that copy
       turned by each of `rotations` (+-25 degrees; `rotation_max_side`, 240), for rolled
       heads. Their boxes can only add faces that pass 1 did not find: where two overlap,
       the upright frontal box is kept (it frames the face best; see the calibrations).

    Chosen on MTFL *training* frames (`bench/frames.py tune`, docs/runtime.md): pass 2 costs
    2.5x pass 1 and is needed on few frames, so the fallback finds within 0.5 points of
    running everything on every frame for under a third of the time. Running both passes on
    every image (`fallback=False`, `--detector haar:all`) finds profile or rolled faces
    beside a frontal one in group photos too.

    `min_size` is the smallest face box searched, in pixels of the copy each run sees (20 px
    at 288: faces whose square is about 40 px in a 640x480 frame, about the model's 40 px
    input). `min_neighbors` (2) is how many overlapping windows must agree (OpenCV's
    default is 3; 2 finds 1.5 points more of the training faces, and 3.5 more of the rolled
    ones, for 0.05 more false boxes a frame). `score` is a confidence from the number of
    windows that agreed, n / (n + min_neighbors): 0.5 at the acceptance threshold, rising
    towards 1; it orders boxes for NMS, it is not a probability. `scale_factor` (1.15) is the
    step between the pyramid's scales: against OpenCV's usual 1.1 it finds as many of the
    training frames' faces (99.7%), 1.6 points fewer of the rolled ones, with 40% fewer false
    boxes, in 15-25% less time (what brought `facemtl predict` on 2,995 frames under two
    minutes on a 2-core machine, with the frontal pass at 288 px rather than 320).
    """

    name = HAAR
    FRONTAL = "haarcascade_frontalface_alt2.xml"
    PROFILE = "haarcascade_profileface.xml"

    def __init__(
        self,
        profile: bool = True,
        scale_factor: float = 1.15,
        min_neighbors: int = 2,
        min_size: int = 20,
        max_side: int | None = 288,
        profile_max_side: int | None = 240,
        rotations: tuple[float, ...] = (-25.0, 25.0),
        frontal_file: str | None = None,
        rotation_max_side: int | None = 240,
        fallback: bool = True,
        confident_neighbors: int = 4,
        pad_small: float = PAD_SMALL,
    ):
        super().__init__(max_side, pad_small)
        if not scale_factor > 1.0:
            raise DetectorError(f"scale_factor must be > 1, got {scale_factor}")
        if min_neighbors < 1:
            raise DetectorError(f"min_neighbors must be >= 1, got {min_neighbors}")
        for name, side in (("profile_max_side", profile_max_side), ("rotation_max_side", rotation_max_side)):
            if side is not None and side < 32:
                raise DetectorError(f"{name}={side} is too small; use at least 32 pixels or None")
        self.profile = profile
        self.profile_max_side = profile_max_side
        self.rotations = tuple(float(a) for a in rotations)
        self.rotation_max_side = rotation_max_side
        self.fallback = bool(fallback)
        if confident_neighbors < min_neighbors:
            raise DetectorError(f"confident_neighbors ({confident_neighbors}) must be >= min_neighbors ({min_neighbors})")
        self.confident_neighbors = int(confident_neighbors)
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_size = int(min_size)
        self._frontal = _load_cascade(frontal_file or self.FRONTAL)
        self._profile = _load_cascade(self.PROFILE) if profile else None

    def _run(self, cascade, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rects, counts = cascade.detectMultiScale2(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
        )
        rects = np.asarray(rects, np.float64).reshape(-1, 4)
        counts = np.asarray(counts, np.float64).reshape(-1)
        return rects, counts / (counts + self.min_neighbors)

    def detect(self, image: np.ndarray) -> list[Detection]:
        grey = _as_grey(image)
        small, k = _downscale(grey, self.max_side)
        found = nms([_rescale(Detection(tuple(r), float(s), HAAR), k) for r, s in zip(*self._run(self._frontal, small))])
        confident = self.confident_neighbors / (self.confident_neighbors + self.min_neighbors)
        if self.fallback and any(d.score >= confident for d in found):
            return found
        more = self._turned(grey) + self._profiles(grey)
        if not found:
            return nms(more)
        # pass 2 adds faces only: a box overlapping one of pass 1 is that face, framed worse
        kept = np.array([d.box for d in found])
        for d in nms(more):
            iou, iom = box_overlap(np.array([d.box]), kept)
            if iou.max() <= _NMS_IOU and iom.max() <= _NMS_CONTAINMENT:
                found.append(d)
        return found

    def _turned(self, grey: np.ndarray) -> list[Detection]:
        """The frontal cascade on the frame turned by each angle of `rotations`."""
        if not self.rotations:
            return []
        small, k = _downscale(grey, self.rotation_max_side)
        h, w = small.shape
        out = []
        for a in self.rotations:
            # the frame turned counter-clockwise by a: a face rolled clockwise by a stands upright;
            # its box centre goes back through the inverse turn, its square turns by a
            m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), a, 1.0)
            inv = cv2.invertAffineTransform(m)
            turned = cv2.warpAffine(small, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            for (x, y, bw, bh), sc in zip(*self._run(self._frontal, turned)):
                cx, cy = inv @ np.array([x + bw / 2, y + bh / 2, 1.0])
                d = Detection((cx - bw / 2, cy - bh / 2, bw, bh), float(sc) * 0.999, HAAR, angle=a)
                out.append(_rescale(d, k))
        return out

    def _profiles(self, grey: np.ndarray) -> list[Detection]:
        """The profile cascade on the frame and on its mirror image."""
        if self._profile is None:
            return []
        small, k = _downscale(grey, self.profile_max_side)
        w = small.shape[1]
        out = [_rescale(Detection(tuple(r), float(s), HAAR_PROFILE), k) for r, s in zip(*self._run(self._profile, small))]
        for r, s in zip(*self._run(self._profile, cv2.flip(small, 1))):
            x, y, bw, bh = r
            out.append(_rescale(Detection((w - x - bw, y, bw, bh), float(s), HAAR_PROFILE, mirrored=True), k))
        return out

    def describe(self) -> str:
        """What runs, in words (for benchmark tables)."""
        first = f"frontal cascade at {self.max_side or 'full'} px"
        second = []
        if self._profile is not None:
            second.append(f"profile pair at {self.profile_max_side or 'full'} px")
        if self.rotations:
            second.append(f"frontal turned {'/'.join(f'{a:+g}' for a in self.rotations)} deg at "
                          f"{self.rotation_max_side or 'full'} px")
        text = f"{first} (scaleFactor {self.scale_factor}, minNeighbors {self.min_neighbors})"
        if second:
            text += ((f"; where it finds no face with {self.confident_neighbors}+ windows: " if self.fallback
                      else "; always: ") + " + ".join(second))
        return text

    def __repr__(self) -> str:
        return (f"HaarDetector(max_side={self.max_side}, profile={self.profile}, "
                f"profile_max_side={self.profile_max_side}, rotations={self.rotations}, "
                f"rotation_max_side={self.rotation_max_side}, fallback={self.fallback}, "
                f"confident_neighbors={self.confident_neighbors}, "
                f"scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, min_size={self.min_size})")


# Named Haar settings, `--detector haar:NAME` (plain `haar` is "image").
HAAR_PRESETS: dict[str, dict] = {
    # IMAGE mode, `facemtl predict`: frontal at 288; profile pair and turned frontal where it finds none
    "image": {},
    # both passes on every image: also profile / rolled faces beside frontal ones (2.5-3x the time)
    "all": {"fallback": False},
    # live video: the upright frontal cascade alone at 240 px (a tracked face needs no detection;
    # about a third of "image"'s time on frames where it finds a face, a tenth where it does not)
    "video": {"max_side": 240, "profile": False, "rotations": ()},
}


# --- YuNet ---------------------------------------------------------------------------------
class YuNetDetector(Detector):
    """YuNet (`cv2.FaceDetectorYN`): box, score and five points. `path`: a YuNet .onnx file;
    None uses the one packaged with facemtl.

    Its points are the MTFL points in MTFL order (image-left eye first), so with
    `from_landmarks` (the default) the face square is `canonical_square` of those points,
    exactly how training framed faces; the "yunet" calibration then only corrects the small
    bias between YuNet's points and MTFL's annotators. Measured on training frames, this
    framing gives a 6.3% NME against 9.6% when framing by YuNet's box (`from_landmarks=False`,
    calibration "yunet_box"). The square stays upright: turning it by YuNet's eye line made
    no difference (YuNet's points under-read roll, and the model was trained on +-18 degrees).
    """

    name = YUNET
    BOX = "yunet_box"  # the calibration name when framing by YuNet's box instead

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 100,
        max_side: int | None = None,
        from_landmarks: bool = True,
        pad_small: float | Sequence[float] = PAD_SMALL,
        retry_full: bool = False,
        small_score_threshold: float | None = None,
    ):
        super().__init__(max_side, pad_small, retry_full)
        path = PACKAGED_YUNET if path is None else Path(path)
        if not path.is_file():
            raise DetectorError(f"YuNet model {path} does not exist; pass the path of a YuNet .onnx file "
                                "(face_detection_yunet_*.onnx from the OpenCV model zoo)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise DetectorError(f"OpenCV {cv2.__version__} has no cv2.FaceDetectorYN; install opencv-python-headless>=4.8")
        if not 0.0 <= score_threshold <= 1.0:
            raise DetectorError(f"score_threshold must be in 0..1, got {score_threshold}")
        try:
            self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)
        except cv2.error as e:
            raise DetectorError(f"{path}: OpenCV cannot load it as a YuNet model ({str(e).strip().splitlines()[-1]})") from None
        if small_score_threshold is not None and not 0.0 <= small_score_threshold <= 1.0:
            raise DetectorError(f"small_score_threshold must be in 0..1, got {small_score_threshold}")
        self.path = path
        self.score_threshold = score_threshold
        self.small_score_threshold = score_threshold if small_score_threshold is None else small_score_threshold
        self.from_landmarks = from_landmarks
        self._size: tuple[int, int] | None = None

    def _detect_padded(self, image: np.ndarray) -> list[Detection]:
        # the padded retry of a small image may take a lower score: such an image is most
        # likely one face crop (`small_score_threshold`)
        if self.small_score_threshold == self.score_threshold:
            return super()._detect_padded(image)
        self._net.setScoreThreshold(self.small_score_threshold)
        try:
            return super()._detect_padded(image)
        finally:
            self._net.setScoreThreshold(self.score_threshold)

    def _detect(self, image: np.ndarray) -> list[Detection]:
        bgr = _as_bgr(image)
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._size:
            self._net.setInputSize(size)
            self._size = size
        _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        out = []
        for f in faces:
            box = tuple(float(v) for v in f[:4])
            if not self.from_landmarks:
                out.append(Detection(box, float(f[14]), self.BOX))
                continue
            pts = np.asarray(f[4:14], np.float64).reshape(5, 2)
            out.append(Detection(box, float(f[14]), YUNET, pts))
        return sorted(out, key=lambda d: -d.score)

    def __repr__(self) -> str:
        return f"YuNetDetector({str(self.path)!r}, score_threshold={self.score_threshold}, max_side={self.max_side})"


# --- none ----------------------------------------------------------------------------------
class WholeImage(Detector):
    """`none`: the whole image is one face box (for images that are already face crops)."""

    name = NONE

    def detect(self, image: np.ndarray) -> list[Detection]:
        h, w = image.shape[:2]
        return [Detection((0.0, 0.0, float(w), float(h)), 1.0, NONE)]


# --- names -> detectors, detections -> squares ---------------------------------------------
def create_detector(spec: str | Detector, max_side: int | None | str = "auto", **options) -> Detector:
    """`yunet` (the packaged file) or `yunet:PATH`, `haar` (`haar:all`, `haar:video`: see
    `HAAR_PRESETS`), or `none` (or a Detector, returned as is) -> a Detector.

    `max_side="auto"` keeps each detector's own default (Haar: 288, `haar:video` 240, others:
    full size); None detects at full size.
    """
    if isinstance(spec, Detector):
        return spec
    if not isinstance(spec, str) or not spec:
        raise DetectorError(f"detector must be 'yunet', 'yunet:PATH', 'haar' or 'none', got {spec!r}")
    kw = dict(options)
    if max_side != "auto":
        if max_side is not None and not isinstance(max_side, int):
            raise DetectorError(f"max_side must be a number of pixels, None or 'auto', got {max_side!r}")
        kw["max_side"] = max_side
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name == HAAR:
        preset = arg.strip().lower() or "image"
        if preset not in HAAR_PRESETS:
            raise DetectorError(f"unknown detector {spec!r}; Haar's settings are " + ", ".join(
                "'haar'" if p == "image" else f"'haar:{p}'" for p in HAAR_PRESETS))
        return HaarDetector(**{**HAAR_PRESETS[preset], **kw})
    if name == YUNET:
        return YuNetDetector(arg.strip() or None, **kw)
    if name == NONE and not arg:
        return WholeImage(**kw)
    raise DetectorError(f"unknown detector {spec!r}; use 'yunet', 'yunet:PATH', 'haar' or 'none'")


def base_square(d: Detection, policy: CropPolicy) -> Square:
    """The square a detection stands for before calibration: the canonical square of its
    landmarks where it has them, else its box as a square (box centre, side = box width)."""
    if d.landmarks is not None:
        sq = canonical_square(d.landmarks, policy, angle=d.angle)
        return sq
    x, y, w, h = d.box
    return Square(x + w / 2, y + h / 2, float(w), float(d.angle))


def calibrated_square(d: Detection, calibration: BoxCalibration, policy: CropPolicy) -> Square:
    """`base_square` moved by (dx, dy) x side along the square's own axes and scaled: for an
    upright box this is exactly `BoxCalibration.apply`."""
    sq = base_square(d, policy)
    dx = -calibration.dx if d.mirrored else calibration.dx
    a = math.radians(sq.angle)
    c, s = math.cos(a), math.sin(a)
    cx = sq.cx + (c * dx - s * calibration.dy) * sq.side
    cy = sq.cy + (s * dx + c * calibration.dy) * sq.side
    return Square(cx, cy, calibration.scale * sq.side, sq.angle)


def crop_square(d: Detection, policy: CropPolicy) -> Square:
    """The square the model sees for a detection, through the spec's calibration for its
    source (a SpecError naming `facemtl calibrate` if the spec has none); a detection's own
    `square` where it has one."""
    if d.square is not None:
        return d.square
    return calibrated_square(d, policy.calibration(d.source), policy)
