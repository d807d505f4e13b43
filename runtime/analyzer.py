"""`FaceAnalyzer`: frame in, faces with landmarks and attributes out. MediaPipe Tasks style.

    from runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions

    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(detector="haar")) as analyzer:
        result = analyzer.analyze(cv2.imread("group.jpg"))
    for face in result.faces:
        face.landmarks                     # (5, 2) pixels of the image, MTFL order
        face.attributes["smile"].label     # "smiling"

Each frame: detect faces, map each box to the square the model was trained on (the
detector's calibration in the spec), cut every face with `runtime.preprocess.prepare`, run
all of them through the model in one batch, decode every head, and map the landmarks back
to image pixels. numpy, OpenCV and one interpreter; never TensorFlow.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from runtime.detectors import Detection, Detector, DetectorError, create_detector, crop_square
from runtime.mirror import flip_averaged
from runtime.preprocess import ImageError, Square, prepare, to_grey, to_image
from runtime.results import Category, Face, FrameResult
from runtime.spec import REGRESSION, ModelSpec, SpecError

# The packaged default model: the int8 TFLite file, else the float ONNX file.
PACKAGED_MODELS = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL_FILES = ("facemtl_int8.tflite", "facemtl_fp32.onnx")
# Model files looked for, in order, in a model folder given as --model DIR.
_DIR_MODEL_FILES = DEFAULT_MODEL_FILES + ("model_int8-float.tflite", "model_int8.tflite", "model_fp32.onnx",
                                          "model_fp16.tflite", "model_fp32.tflite", "model_dynamic.tflite",
                                          "model_int8.onnx")
_INTERPRETERS = {".tflite": ("ai_edge_litert", "tflite_runtime"), ".onnx": ("onnxruntime",)}
_INSTALL = {".tflite": "pip install ai-edge-litert (or tflite-runtime)", ".onnx": "pip install onnxruntime"}


class RunningMode(str, enum.Enum):
    """IMAGE: independent images, `analyze`. VIDEO: frames of one stream, `analyze_for_video`."""

    IMAGE = "image"
    VIDEO = "video"


@dataclass
class FaceAnalyzerOptions:
    """How to build a FaceAnalyzer; every field has a working default.

    model_path: a .tflite or .onnx file written by `facemtl convert`, or a folder holding
        one; None uses the model packaged with facemtl.
    detector: "haar", "haar:all", "haar:video", "yunet:PATH", "none" (the image is one face), or a
        Detector. Plain "haar" is Haar's setting for the running mode: in IMAGE mode the
        frontal cascade plus, where it finds no face, the profile and turned cascades; in
        VIDEO mode "haar:video", the upright frontal cascade alone (tracking follows faces
        between detections; see runtime.detectors.HAAR_PRESETS).
    detection_max_side: detect on a copy of the frame whose longer side is at most this many
        pixels; "auto" keeps the detector's default (Haar 288, haar:video 240, YuNet and none full size),
        None always detects at full size.
    min_detection_score: drop detections scoring below this (0..1).
    max_faces: analyse at most this many faces per frame, best scores first (None: all).
    num_threads: interpreter threads.
    tracking: VIDEO mode only: how faces are followed and smoothed between detections
        (`runtime.live.tracking.TrackingOptions`); None uses its defaults.
    flip_average: also run every face mirrored, in the same batch, and average the two
        answers (`runtime.mirror`): twice the model time for a lower landmark error.
    """

    model_path: str | os.PathLike | None = None
    detector: str | Detector = "haar"
    running_mode: RunningMode = RunningMode.IMAGE
    detection_max_side: int | None | str = "auto"
    min_detection_score: float = 0.0
    max_faces: int | None = None
    num_threads: int = 1
    tracking: "TrackingOptions | None" = None  # noqa: F821 (runtime.live.tracking, imported in VIDEO mode)
    flip_average: bool = False


def _interpreter_installed(suffix: str) -> bool:
    return any(importlib.util.find_spec(m) is not None for m in _INTERPRETERS.get(suffix, ()))


def default_model_path(folder: str | os.PathLike | None = None) -> Path:
    """The model file to run from `folder` (default: the one packaged in runtime/models/):
    the int8 TFLite file where a TFLite interpreter is installed, else the float ONNX file.
    A clear error says what is missing."""
    packaged = folder is None
    folder = PACKAGED_MODELS if packaged else Path(folder)
    names = DEFAULT_MODEL_FILES if packaged else _DIR_MODEL_FILES
    present = [folder / n for n in names if (folder / n).is_file()]
    if not packaged:
        present += sorted(p for p in folder.glob("*") if p.suffix in _INTERPRETERS and p not in present)
    for p in present:
        if _interpreter_installed(p.suffix):
            return p
    if present:
        need = " or ".join(sorted({_INSTALL[p.suffix] for p in present}))
        raise SpecError(f"{folder} has {', '.join(p.name for p in present)} but no interpreter to run "
                        f"{'it' if len(present) == 1 else 'them'} is installed: {need}")
    if packaged:
        raise SpecError(f"this facemtl install has no packaged model ({folder} holds none of "
                        f"{', '.join(DEFAULT_MODEL_FILES)}); pass a model with --model PATH (.tflite or .onnx)")
    keras_file = next(iter(folder.glob("*.keras")), None)
    hint = (f"; {keras_file.name} needs TensorFlow: convert it with `facemtl convert {folder}`" if keras_file else "")
    raise SpecError(f"{folder} holds no .tflite or .onnx model{hint}")


def _spec_beside(path: Path, spec: ModelSpec) -> ModelSpec:
    """Crop calibrations from a spec.json beside the model file (or beside its `converted/`
    folder, where `facemtl convert` writes), when it describes the same model: `facemtl
    calibrate MODEL_DIR` updates spec.json without rewriting the converted files."""
    file = path.parent / "spec.json"
    if not file.is_file() and path.parent.name == "converted":
        file = path.parent.parent / "spec.json"
    if not file.is_file():
        return spec
    try:
        beside = ModelSpec.load(file)
    except SpecError:
        return spec
    same = (beside.input == spec.input and beside.heads == spec.heads
            and beside.crop.scale == spec.crop.scale and beside.crop.shift_y == spec.crop.shift_y)
    if not same or not beside.crop.calibrations:
        return spec
    cals = {**spec.crop.calibrations, **beside.crop.calibrations}
    return spec.replace(crop=dataclasses.replace(spec.crop, calibrations=cals))


def load_model(model_path: str | os.PathLike | None = None, threads: int = 1):
    """A Backend for a model file, a model folder, or the packaged default (None)."""
    from runtime.backends import load_backend  # imported here: the interpreter loads with it

    path = Path(model_path) if model_path is not None else None
    if path is None or path.is_dir():
        path = default_model_path(path)
    try:
        return load_backend(path, threads=threads)
    except ImportError as e:
        raise SpecError(f"{path}: {e}") from None


class FaceAnalyzer:
    """Finds faces and runs every head of the model on all of them in one batch.

    Build with `create_from_options` / `create_from_model_path`; use as a context manager
    or call `close()`.
    """

    def __init__(self, backend, detector: Detector, options: FaceAnalyzerOptions | None = None,
                 spec: ModelSpec | None = None):
        self.options = options or FaceAnalyzerOptions()
        self.backend = backend
        self.detector = detector
        self.spec: ModelSpec = spec or backend.spec
        self._landmark_head = next((h.name for h in self.spec.heads if h.kind == REGRESSION), None)
        self._last_ts: float | None = None
        self._tracker = None  # VIDEO mode: runtime.live.tracking.FaceTracker, made on the first frame
        self._closed = False
        self._run = flip_averaged(backend.run, self.spec) if self.options.flip_average else backend.run
        # fail now, not on the first face: the spec must frame this detector's boxes
        for name in _calibration_names(detector):
            self.spec.crop.calibration(name)

    # --- factories -------------------------------------------------------------------------
    @classmethod
    def create_from_options(cls, options: FaceAnalyzerOptions) -> "FaceAnalyzer":
        if not isinstance(options.running_mode, RunningMode):
            try:
                options.running_mode = RunningMode(options.running_mode)
            except ValueError:
                raise ValueError(f"running_mode must be one of {[m.value for m in RunningMode]}, "
                                 f"got {options.running_mode!r}") from None
        if options.max_faces is not None and options.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {options.max_faces}")
        if not 0.0 <= options.min_detection_score <= 1.0:
            raise ValueError(f"min_detection_score must be in 0..1, got {options.min_detection_score}")
        if options.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {options.num_threads}")
        detector = create_detector(_detector_for_mode(options.detector, options.running_mode),
                                   max_side=options.detection_max_side)
        backend = load_model(options.model_path, threads=options.num_threads)
        spec = _spec_beside(Path(backend.path), backend.spec)
        try:
            return cls(backend, detector, options, spec)
        except Exception:
            backend.close()
            raise

    @classmethod
    def create_from_model_path(cls, model_path: str | os.PathLike | None, **options) -> "FaceAnalyzer":
        return cls.create_from_options(FaceAnalyzerOptions(model_path=model_path, **options))

    # --- running ---------------------------------------------------------------------------
    def analyze(self, image: np.ndarray) -> FrameResult:
        """Every face of one image (IMAGE mode). `image`: uint8 grey (H, W), BGR or BGRA."""
        if self.options.running_mode != RunningMode.IMAGE:
            raise ValueError("this analyzer was created with running_mode=VIDEO; call "
                             "analyze_for_video(frame, timestamp_ms), or create one with running_mode=IMAGE")
        return self._analyze(image, None)

    def analyze_for_video(self, frame: np.ndarray, timestamp_ms: float) -> FrameResult:
        """One frame of a stream (VIDEO mode); timestamps must increase."""
        if self.options.running_mode != RunningMode.VIDEO:
            raise ValueError("this analyzer was created with running_mode=IMAGE; call analyze(image), "
                             "or create one with running_mode=VIDEO for analyze_for_video")
        if self._last_ts is not None and timestamp_ms <= self._last_ts:
            raise ValueError(f"timestamp_ms must increase from frame to frame: got {timestamp_ms} after {self._last_ts}")
        self._last_ts = timestamp_ms
        if self._closed:
            raise ValueError("this FaceAnalyzer is closed")
        if self._tracker is None:
            from runtime.live.tracking import FaceTracker  # detection, tracking and smoothing

            self._tracker = FaceTracker(self, self.options.tracking)
        return self._tracker.process(frame, timestamp_ms)

    def _analyze(self, image: np.ndarray, timestamp_ms: float | None) -> FrameResult:
        if self._closed:
            raise ValueError("this FaceAnalyzer is closed")
        t0 = time.perf_counter()
        image, grey = _frames(image)
        t1 = time.perf_counter()
        found = self.detect(image)
        t2 = time.perf_counter()
        faces, stages = self.analyze_detections(grey, found)
        t3 = time.perf_counter()
        stages = {"decode": 1000 * (t1 - t0), "detect": 1000 * (t2 - t1), **stages}
        return FrameResult(faces, timestamp_ms, 1000 * (t3 - t0), stages)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """The detector's faces, filtered by score and capped at `max_faces`, best first."""
        found = [d for d in self.detector.detect(image) if d.score >= self.options.min_detection_score]
        found.sort(key=lambda d: -d.score)
        if self.options.max_faces is not None:
            found = found[: self.options.max_faces]
        return found

    def analyze_detections(self, grey: np.ndarray, detections: Sequence[Detection]) -> tuple[list[Face], dict]:
        """Faces for given detections of a grey frame (all in one batch), and stage times."""
        squares = [crop_square(d, self.spec.crop) for d in detections]
        faces, stages = self.analyze_squares(grey, squares)
        for face, d in zip(faces, detections):
            face.box = tuple(float(v) for v in d.box)
            face.score = float(d.score)
        return faces, stages

    def analyze_squares(self, grey: np.ndarray, squares: Sequence[Square]) -> tuple[list[Face], dict]:
        """Run the model on face squares of a grey frame (for trackers that frame faces from
        the last frame's landmarks). Boxes are the squares, scores 1."""
        if not squares:
            return [], {"crop": 0.0, "infer": 0.0}
        t0 = time.perf_counter()
        batch, mats = prepare(grey, list(squares), self.spec.input)
        t1 = time.perf_counter()
        raw = self._run(batch)
        t2 = time.perf_counter()
        decoded = {}
        for h in self.spec.heads:
            if h.name not in raw:
                raise SpecError(f"the model returned no output {h.name!r} (it returned {sorted(raw)})")
            decoded[h.name] = h.decode(raw[h.name])
        faces = []
        for i, sq in enumerate(squares):
            if self._landmark_head is not None:
                landmarks = to_image(decoded[self._landmark_head]["points"][i], mats[i])
            else:
                landmarks = np.zeros((0, 2))
            attrs = {}
            for h in self.spec.heads:
                if h.kind == REGRESSION:
                    continue
                p = decoded[h.name]["probabilities"][i]
                k = int(decoded[h.name]["class_ids"][i])
                attrs[h.name] = Category(k, h.labels[k], float(p[k]))
            faces.append(Face(box=sq.box(), score=1.0, landmarks=landmarks, attributes=attrs))
        return faces, {"crop": 1000 * (t1 - t0), "infer": 1000 * (t2 - t1)}

    # --- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self.backend, "close", None)
        if close:
            close()
        self.detector.close()

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FaceAnalyzer(model={str(getattr(self.backend, 'path', '?'))!r}, detector={self.detector!r}, "
                f"running_mode={self.options.running_mode.value})")


def _detector_for_mode(detector, mode: RunningMode):
    """Plain "haar" in VIDEO mode is "haar:video": a tracked face needs no detection, so
    re-detections run the cheap upright frontal cascade alone."""
    if mode == RunningMode.VIDEO and isinstance(detector, str) and detector.strip().lower() == "haar":
        return "haar:video"
    return detector


def _calibration_names(detector: Detector) -> tuple[str, ...]:
    from runtime.detectors import HAAR_PROFILE, HaarDetector, YuNetDetector

    if isinstance(detector, HaarDetector):
        return (detector.name, HAAR_PROFILE) if detector.profile else (detector.name,)
    if isinstance(detector, YuNetDetector) and not detector.from_landmarks:
        return (YuNetDetector.BOX,)
    return (detector.name,) if detector.name else ()


def _frames(image) -> tuple[np.ndarray, np.ndarray]:
    """(image for the detector: grey or BGR, grey for the crops) from grey, BGR or BGRA."""
    if isinstance(image, np.ndarray) and image.size == 0:
        raise ImageError(f"image: empty image of shape {image.shape} (too small to analyse)")
    grey = to_grey(image)  # validates type, dtype, shape and size with a clear ImageError
    if image.ndim == 3 and image.shape[2] == 4:
        import cv2

        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR), grey
    if image.ndim == 3 and image.shape[2] == 1:
        return grey, grey
    return image, grey


__all__ = ["FaceAnalyzer", "FaceAnalyzerOptions", "RunningMode", "load_model", "default_model_path",
           "ImageError", "DetectorError", "SpecError"]
