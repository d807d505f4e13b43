"""`FaceAnalyzer`: frame in, faces with landmarks and attributes out. MediaPipe Tasks style.

    from facemtl import FaceAnalyzer, FaceAnalyzerOptions

    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions()) as analyzer:
        result = analyzer.analyze(cv2.imread("group.jpg"))
    for face in result.faces:
        face.landmarks                              # (5, 2) pixels of the image, MTFL order
        face.attributes["smile"].top.category_name  # "smiling"

Each frame: detect faces, map each box to the square the model was trained on (the
detector's calibration in the spec), then the inference core (`facemtl.runtime.core`) cuts,
runs and decodes all of them in one batch and maps the landmarks back to image pixels.
VIDEO mode follows faces between detections (`facemtl.runtime.live.tracking`) through the
same core. numpy, OpenCV and one interpreter; never TensorFlow.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import importlib.util
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from facemtl.runtime.core import InferenceCore, landmark_square, size_anchor
from facemtl.runtime.detectors import (SMALL_IMAGE, Detection, Detector, DetectorError, WholeImage,
                                       create_detector, crop_square)
from facemtl.runtime.errors import ConcurrentUseError
from facemtl.runtime.preprocess import ImageError, to_grey
from facemtl.runtime.results import Classification, Face, FrameResult
from facemtl.runtime.spec import ModelSpec, SpecError

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


@dataclass(frozen=True)
class FaceAnalyzerOptions:
    """How to build a FaceAnalyzer; every field has a working default. Checked when made;
    never changed by the analyzer.

    model_path: a .tflite or .onnx file written by `facemtl convert`, or a folder holding
        one; None (and no `model_buffer`) uses the model packaged with facemtl.
    model_buffer: the bytes of such a file, instead of a path.
    detector: "yunet" (the YuNet file packaged with facemtl), "yunet:PATH", "haar", "haar:all",
        "haar:video", "none" (the image is one face), or a Detector. Plain "haar" is Haar's setting for the running mode: in IMAGE mode the
        frontal cascade plus, where it finds no face, the profile and turned cascades; in
        VIDEO mode "haar:video", the upright frontal cascade alone (tracking follows faces
        between detections; see facemtl.runtime.detectors.HAAR_PRESETS).
    running_mode: IMAGE (`analyze`) or VIDEO (`analyze_for_video`); the string "image" or
        "video" is taken too.
    detection_max_side: detect on a copy of the frame whose longer side is at most this many
        pixels; "auto" is the detector's default for the running mode (YuNet: 320 in IMAGE mode,
        480 in VIDEO mode; Haar 288, haar:video 240; none: full size), None always detects at
        full size. At 320, faces under about 40 pixels between the eyes in a 640x480 frame
        start to be missed: an image in which nothing is found is detected again at full size
        (`detection_retry_full`), but in a group photograph where one face is found the small
        ones stay missed: give None for photographs of groups or distant faces.
    detection_retry_full: where nothing is found on the downscaled copy, detect again at full
        size (only images without a found face pay for it). None (the default): on in IMAGE
        mode, off in VIDEO mode (`RETRY_FULL`; a scene without faces would pay a full-size
        detection at every detection frame).
    min_detection_score: drop detections scoring below this (0..1).
    max_faces: analyse at most this many faces per frame, best scores first (None: all).
    num_threads: interpreter threads.
    tracking: VIDEO mode only: how faces are followed and smoothed between detections
        (`facemtl.TrackingOptions`); None uses its defaults.
    flip_average: also run every face mirrored, in the same batch, and average the two
        answers (`facemtl.runtime.mirror`): twice the model time for a lower landmark error.
        None (the default): on in IMAGE mode, off in VIDEO mode (where the model time is most
        of a tracked frame's cost).
    refine: run the refinement stage after the last pass (`facemtl.runtime.refine`): a second,
        small model looks at a patch of the frame around each landmark, at the frame's own
        resolution, and moves the point; in both running modes. None (the default): on where
        the model has a refinement stage to pair with (the packaged model has one; see
        `facemtl.runtime.refine.DEFAULT_ON`), off otherwise. True: on, and an error if there
        is none. False: off. With `flip_average` the refinement is flip-averaged too.
    refine_levels: how many levels of the packaged refinement cascade run (1 or 2; each level
        looks at smaller patches around the last one's answers). None (the default): every
        level in IMAGE mode, level 1 in VIDEO mode (`REFINE_LEVELS`: a tracked crowd of eight
        faces stays above 500 FPS with one level, not with two).
    refine_model_path: the refinement file (written by `python -m facemtl.train.refine
        convert`) to run with `model_path`'s model; None: the packaged one, for the packaged
        model. A file trained after another first model is refused.
    verify_small: IMAGE mode: where nothing is found in an image of at most 256 pixels a side
        (even on the padded copies tried for tight crops), ask the packaged face verifier
        (`facemtl.runtime.verify`) whether the whole image is one face, and if so analyse it,
        cut as a tight crop (brows to chin) frames its face, its probability as the face's
        score. None (the default): `VERIFY_SMALL` (IMAGE mode as run 59 decided; never in
        VIDEO mode). On only where the install packages a verifier and the model crops faces
        as the packaged model does (the verifier's framing is fitted for that crop).
    passes: IMAGE mode: model runs per face. Pass 1 crops the detector's square; each further
        pass crops again from the previous pass's landmarks (re-centred, turned upright by
        their roll, the detector's size kept), which frames the face as training did more
        closely than any detector box. VIDEO mode's tracker crops from landmarks anyway
        (`TrackingOptions.passes`).
    """

    model_path: str | os.PathLike | None = None
    model_buffer: bytes | None = None
    detector: str | Detector = "yunet"
    running_mode: RunningMode = RunningMode.IMAGE
    detection_max_side: int | None | str = "auto"
    detection_retry_full: bool | None = None
    min_detection_score: float = 0.0
    max_faces: int | None = None
    num_threads: int = 1
    tracking: "TrackingOptions | None" = None  # noqa: F821 (facemtl.runtime.live.tracking, imported in VIDEO mode)
    flip_average: bool | None = None
    passes: int = 2
    refine: bool | None = None
    refine_levels: int | None = None
    refine_model_path: str | os.PathLike | None = None
    verify_small: bool | None = None

    def __post_init__(self) -> None:
        try:
            mode = self.running_mode.lower() if isinstance(self.running_mode, str) else self.running_mode
            object.__setattr__(self, "running_mode", RunningMode(mode))
        except ValueError:
            raise ValueError(f"running_mode must be one of {[m.value for m in RunningMode]}, "
                             f"got {self.running_mode!r}") from None
        if self.model_path is not None and self.model_buffer is not None:
            raise ValueError("give model_path or model_buffer, not both")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces must be >= 1 or None, got {self.max_faces}")
        if not 0.0 <= self.min_detection_score <= 1.0:
            raise ValueError(f"min_detection_score must be in 0..1, got {self.min_detection_score}")
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")
        if self.passes not in (1, 2, 3):
            raise ValueError(f"passes must be 1, 2 or 3, got {self.passes}")
        if self.flip_average is None:
            object.__setattr__(self, "flip_average", self.running_mode == RunningMode.IMAGE)
        if self.refine is False and self.refine_model_path is not None:
            raise ValueError("refine_model_path given with refine=False; leave refine as None or True to use it")
        if self.detection_retry_full is None:
            object.__setattr__(self, "detection_retry_full", RETRY_FULL[self.running_mode])
        if self.refine_levels is not None and self.refine_levels not in (1, 2):
            raise ValueError(f"refine_levels must be 1, 2 or None, got {self.refine_levels}")
        if self.refine_levels is not None and self.refine is False:
            raise ValueError("refine_levels given with refine=False; leave refine as None or True to use it")
        if self.refine_levels == 2 and self.refine_model_path is not None:
            raise ValueError("refine_levels=2 runs the packaged cascade; a refine_model_path is one level")
        if self.refine_levels is None:
            object.__setattr__(self, "refine_levels", REFINE_LEVELS[self.running_mode])
        if self.verify_small and self.running_mode == RunningMode.VIDEO:
            raise ValueError("verify_small is for IMAGE mode (single images); VIDEO mode tracks what it detects")
        if self.verify_small is None:
            object.__setattr__(self, "verify_small", VERIFY_SMALL[self.running_mode])


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
    beside = ModelSpec.load(file)  # there but invalid (a NaN calibration): an error naming it, never ignored
    same = (beside.input == spec.input and beside.heads == spec.heads
            and beside.crop.scale == spec.crop.scale and beside.crop.shift_y == spec.crop.shift_y)
    if not same or not beside.crop.calibrations:
        return spec
    cals = {**spec.crop.calibrations, **beside.crop.calibrations}
    return spec.replace(crop=dataclasses.replace(spec.crop, calibrations=cals))


def load_model(model_path: str | os.PathLike | None = None, threads: int = 1, buffer: bytes | None = None):
    """A Backend for a model file, a model folder, the bytes of a model file, or the packaged
    default (None)."""
    from facemtl.runtime.backends import load_backend, load_backend_from_buffer  # the interpreter loads with it

    try:
        if buffer is not None:
            return load_backend_from_buffer(buffer, threads=threads)
        path = Path(model_path) if model_path is not None else None
        if path is None or path.is_dir():
            path = default_model_path(path)
        return load_backend(path, threads=threads)
    except ImportError as e:
        raise SpecError(f"{model_path or 'model buffer'}: {e}") from None


class FaceAnalyzer:
    """Finds faces and runs every head of the model on all of them in one batch.

    Build with `create_from_options` or `create_from_model_path`; use as a context manager
    or call `close()`. One analyzer serves one thread at a time: give each thread its own.
    """

    def __init__(self, backend, detector: Detector, options: FaceAnalyzerOptions | None = None,
                 spec: ModelSpec | None = None, refiner=None, verifier=None):
        # internal: the factories build the backend, detector, refiner and verifier from the options
        self._options = options or FaceAnalyzerOptions()
        self._backend = backend
        self._detector = detector
        self._spec: ModelSpec = spec or backend.spec
        self._refiner = refiner
        self._verifier = verifier  # facemtl.runtime.verify.FaceVerifier, or None
        self._core = InferenceCore(backend.run, self._spec, flip_average=self._options.flip_average, refiner=refiner)
        self._last_ts: float | None = None
        self._tracker = None  # VIDEO mode: facemtl.runtime.live.tracking.FaceTracker, made on the first frame
        self._closed = False
        self._busy = threading.Lock()
        # fail now, not on the first face: the spec must frame this detector's boxes
        for name in _calibration_names(detector):
            self._spec.crop.calibration(name)

    # --- factories -------------------------------------------------------------------------
    @classmethod
    def create_from_options(cls, options: FaceAnalyzerOptions) -> "FaceAnalyzer":
        detector = create_detector(_detector_for_mode(options.detector, options.running_mode),
                                   max_side=_detection_size(options.detector, options.detection_max_side,
                                                            options.running_mode))
        if isinstance(options.detector, str):  # a Detector passed in keeps its own setting
            detector.retry_full = options.detection_retry_full
        backend = load_model(options.model_path, threads=options.num_threads, buffer=options.model_buffer)
        refiner = verifier = None
        try:
            spec = backend.spec if options.model_buffer is not None else _spec_beside(Path(backend.path), backend.spec)
            refiner = _load_refiner(options, backend, spec)
            verifier = _load_verifier(options, backend, spec, detector)
            return cls(backend, detector, options, spec, refiner, verifier)
        except Exception:
            backend.close()
            detector.close()
            for stage in (refiner, verifier):
                if stage is not None:
                    stage.close()
            raise

    @classmethod
    def create_from_model_path(cls, model_path: str | os.PathLike | None, **options) -> "FaceAnalyzer":
        return cls.create_from_options(FaceAnalyzerOptions(model_path=model_path, **options))

    @classmethod
    def create_from_buffer(cls, model_buffer: bytes, **options) -> "FaceAnalyzer":
        return cls.create_from_options(FaceAnalyzerOptions(model_buffer=model_buffer, **options))

    # --- what it is --------------------------------------------------------------------------
    @property
    def options(self) -> FaceAnalyzerOptions:
        return self._options

    @property
    def spec(self) -> ModelSpec:
        """The model's contract: input, crop policy, heads and their labels, landmark names."""
        return self._spec

    @property
    def refine_model_path(self) -> Path | None:
        """The refinement file in use, None when the refinement stage is off."""
        return None if self._refiner is None else self._refiner.path

    @property
    def verify_model_path(self) -> Path | None:
        """The face verifier file in use for small images, None when that is off."""
        return None if self._verifier is None else self._verifier.path

    @property
    def landmark_names(self) -> tuple[str, ...]:
        return tuple(self._spec.landmark_names)

    # --- running ---------------------------------------------------------------------------
    def analyze(self, image: np.ndarray) -> FrameResult:
        """Every face of one image (IMAGE mode). `image`: uint8 grey (H, W), BGR or BGRA."""
        if self._options.running_mode != RunningMode.IMAGE:
            raise ValueError("this analyzer was created with running_mode=VIDEO; call "
                             "analyze_for_video(frame, timestamp_ms), or create one with running_mode=IMAGE")
        with self._one_caller():
            return self._analyze(image)

    def _analyze(self, image: np.ndarray) -> FrameResult:
        self._check_open()
        t0 = time.perf_counter()
        image, grey = _frames(image)
        t1 = time.perf_counter()
        found = self._detect(image)
        if not found and self._verifier is not None and max(image.shape[:2]) <= SMALL_IMAGE:
            # a small image in which nothing was found may itself be one tight face crop
            whole = self._verifier.detect(grey)
            found = [whole] if whole is not None and whole.score >= self._options.min_detection_score else []
        t2 = time.perf_counter()
        faces, stages = self._analyze_detections(grey, found)
        t3 = time.perf_counter()
        stages = {"decode": 1000 * (t1 - t0), "detect": 1000 * (t2 - t1), **stages}
        return FrameResult(faces, None, 1000 * (t3 - t0), stages)

    def analyze_for_video(self, frame: np.ndarray, timestamp_ms: float) -> FrameResult:
        """One frame of a stream (VIDEO mode); timestamps must increase."""
        if self._options.running_mode != RunningMode.VIDEO:
            raise ValueError("this analyzer was created with running_mode=IMAGE; call analyze(image), "
                             "or create one with running_mode=VIDEO for analyze_for_video")
        with self._one_caller():
            return self._analyze_for_video(frame, timestamp_ms)

    def _analyze_for_video(self, frame: np.ndarray, timestamp_ms: float) -> FrameResult:
        self._check_open()
        if self._last_ts is not None and timestamp_ms <= self._last_ts:
            raise ValueError(f"timestamp_ms must increase from frame to frame: got {timestamp_ms} after {self._last_ts}")
        self._last_ts = timestamp_ms
        if self._tracker is None:
            from facemtl.runtime.live.tracking import FaceTracker  # detection, tracking and smoothing

            self._tracker = FaceTracker(self._detect, self._core, self._spec, self._options.tracking,
                                        max_faces=self._options.max_faces)
        return self._tracker.process(frame, timestamp_ms)

    # --- pieces ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _one_caller(self):
        """Refuse a second thread while one is inside: the interpreter and OpenCV's cascades
        keep per-call state, so two threads at once would silently mix their answers."""
        if not self._busy.acquire(blocking=False):
            raise ConcurrentUseError("this FaceAnalyzer is already analysing a frame in another thread; "
                                     "give each thread its own analyzer (facemtl predict --workers does)")
        try:
            yield
        finally:
            self._busy.release()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this FaceAnalyzer is closed")

    def _detect(self, image: np.ndarray) -> list[Detection]:
        """The detector's faces, filtered by score and capped at `max_faces`, best first."""
        found = [d for d in self._detector.detect(image) if d.score >= self._options.min_detection_score]
        found.sort(key=lambda d: -d.score)
        if self._options.max_faces is not None:
            found = found[: self._options.max_faces]
        return found

    def _analyze_detections(self, frame: np.ndarray, detections: Sequence[Detection]) -> tuple[list[Face], dict]:
        """Faces for given detections of a frame (all in one batch), and stage times."""
        policy = self._spec.crop
        squares = [crop_square(d, policy) for d in detections]
        out = self._core(frame, squares)
        crop_ms, infer_ms = out.crop_ms, out.infer_ms
        if self._options.passes > 1 and squares and out.points.shape[1] and policy.mode == "landmarks":
            anchors = [size_anchor(sq, p, policy) for sq, p in zip(squares, out.points)]
            for _ in range(self._options.passes - 1):
                squares = [landmark_square(p, policy, anchor=a) for p, a in zip(out.points, anchors)]
                out = self._core(frame, squares)
                crop_ms, infer_ms = crop_ms + out.crop_ms, infer_ms + out.infer_ms
        points, refine_crop_ms, refine_ms = self._core.refine(frame, out.points)
        crop_ms, infer_ms = crop_ms + refine_crop_ms, infer_ms + refine_ms
        names = self.landmark_names
        faces = [Face(box=tuple(float(v) for v in d.box), score=float(d.score), square=sq, landmarks=points[i],
                      landmark_names=names,
                      attributes={h: Classification.of(self._spec.head(h), p[i]) for h, p in out.probabilities.items()})
                 for i, (d, sq) in enumerate(zip(detections, squares))]
        return faces, {"crop": crop_ms, "infer": infer_ms}

    # --- lifetime --------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        close = getattr(self._backend, "close", None)
        if close:
            close()
        for stage in (self._refiner, self._verifier):
            if stage is not None:
                stage.close()
        self._detector.close()

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FaceAnalyzer(model={str(getattr(self._backend, 'path', '?'))!r}, detector={self._detector!r}, "
                f"running_mode={self._options.running_mode.value})")


def _load_refiner(options: FaceAnalyzerOptions, backend, spec: ModelSpec):
    """The refinement stage the options ask for, paired with `backend`'s model, or None.

    refine=None: the packaged refinement file for the packaged model (when `DEFAULT_ON`), or
    `refine_model_path`'s; silently none for another model without one. refine=True: one is
    required. A refinement file trained after another first model is an error when asked for
    by name or by refine=True."""
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import DEFAULT_ON, Cascade, Refiner, packaged_refine_paths

    if options.refine is False or (options.refine is None and not DEFAULT_ON and options.refine_model_path is None):
        return None
    path = options.refine_model_path
    packaged = options.model_path is None and options.model_buffer is None
    paths = [path] if path is not None else []
    if path is None and packaged:
        # the packaged cascade: level 1, then level 2 where the install has it
        paths = packaged_refine_paths(PACKAGED_MODELS, getattr(backend, "path", None))[: options.refine_levels]
    if not paths:
        if options.refine:
            where = ("this facemtl install has no packaged refinement file" if packaged
                     else "give refine_model_path (--refine-model) for a model other than the packaged one")
            raise SpecError(f"refine=True but there is no refinement stage: {where}")
        return None
    stages = []
    try:
        for p in paths:
            try:
                rb = load_backend(p, threads=options.num_threads)
            except ImportError as e:
                raise SpecError(f"{p}: {e}") from None
            try:
                stages.append(Refiner(rb, first_spec=spec, flip_average=bool(options.flip_average)))
            except SpecError:
                rb.close()
                raise
        if len(stages) == 1 and stages[0].level == 1:
            return stages[0]
        return Cascade(stages)
    except SpecError:
        for r in stages:
            r.close()
        raise


def _load_verifier(options: FaceAnalyzerOptions, backend, spec: ModelSpec, detector: Detector):
    """The packaged face verifier where `verify_small` asks for it, or None: not for a model
    whose crop its framing was not fitted for, nor with detector "none" (every image is a face
    already)."""
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.verify import FaceVerifier, packaged_verify_path

    if not options.verify_small or isinstance(detector, WholeImage):
        return None
    path = packaged_verify_path(PACKAGED_MODELS, getattr(backend, "path", None))
    if path is None:
        return None
    try:
        vb = load_backend(path, threads=options.num_threads)
    except ImportError as e:
        raise SpecError(f"{path}: {e}") from None
    try:
        verifier = FaceVerifier(vb)
    except SpecError:
        vb.close()
        raise
    if not verifier.frames(spec.crop):
        verifier.close()  # a model cropped otherwise: the verifier's squares are not its squares
        return None
    return verifier


def _detector_for_mode(detector, mode: RunningMode):
    """Plain "haar" in VIDEO mode is "haar:video": a tracked face needs no detection, so
    re-detections run the cheap upright frontal cascade alone."""
    if mode == RunningMode.VIDEO and isinstance(detector, str) and detector.strip().lower() == "haar":
        return "haar:video"
    return detector


# YuNet's detection size per running mode (the longer side of the copy it detects on).
# IMAGE: chosen on training frames with passes and flip averaging (docs/experiments.md, run 41);
# VIDEO: 320 lost small faces, which 480 keeps (run 39).
YUNET_SIZE = {RunningMode.IMAGE: 320, RunningMode.VIDEO: 480}
# Detect again at full size where nothing was found on the downscaled copy: IMAGE mode, chosen
# on training frames (docs/experiments.md, run 51: found 99.8% -> 100% of turned heads, for
# less time than detecting at 480). Never in
# VIDEO mode: a scene without faces would pay a full-size detection at every detection frame.
RETRY_FULL = {RunningMode.IMAGE: True, RunningMode.VIDEO: False}

# The packaged refinement levels each running mode runs by default (`refine_levels=None`): both
# in IMAGE mode (run 56); level 1 in VIDEO mode, where a tracked crowd of eight faces keeps
# above 500 FPS with one level and not with two (docs/experiments.md, run 57).
REFINE_LEVELS = {RunningMode.IMAGE: 2, RunningMode.VIDEO: 1}

# Whether `verify_small=None` asks the packaged face verifier about small images in which
# nothing was found: set by run 59's rule (docs/experiments.md); never in VIDEO mode.
VERIFY_SMALL = {RunningMode.IMAGE: True, RunningMode.VIDEO: False}


def _detection_size(detector, max_side, mode: RunningMode):
    """"auto" for YuNet is its size for the running mode; everything else as given."""
    if max_side == "auto" and isinstance(detector, str) and detector.strip().lower().split(":")[0] == "yunet":
        return YUNET_SIZE[mode]
    return max_side


def _calibration_names(detector: Detector) -> tuple[str, ...]:
    from facemtl.runtime.detectors import HAAR_PROFILE, HaarDetector, YuNetDetector

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
