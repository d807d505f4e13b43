"""Shared pieces of the tests/test_live*.py files: models and detectors for video mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import YUNET
from facemtl.runtime.spec import CropPolicy
from runtime_models import MEAN_SHAPE, trained_model, write_constant_onnx


def canonical_shape(scale: float = CropPolicy().scale) -> np.ndarray:
    """The test mean face moved and sized to the canonical square's geometry (centroid in the
    middle, RMS spread 1/scale of the side): a face tracked by it stays where it is."""
    p = MEAN_SHAPE.astype(np.float64) - MEAN_SHAPE.mean(axis=0)
    p /= np.sqrt((p ** 2).sum(axis=1).mean()) * scale
    return (p + 0.5).astype(np.float32)


def constant_model(tmp_path: Path) -> Path:
    """A genuine ONNX model (onnxruntime) whose landmarks are a fixed canonical face in crop
    units: enough for everything in video mode but following motion."""
    pytest.importorskip("onnx", reason="writing the test ONNX model needs the onnx package")
    pytest.importorskip("onnxruntime", reason="running the test ONNX model needs onnxruntime")
    return write_constant_onnx(tmp_path / "constant.onnx", landmarks=canonical_shape())


def live_model() -> Path:
    """The trained model (FACEMTL_TEST_MODEL, the packaged one, or models/default), else skip."""
    path = trained_model()
    if path is None or not Path(path).is_file():
        pytest.skip("no trained model yet (runtime/models/facemtl_int8.tflite, models/default/, or set "
                    "FACEMTL_TEST_MODEL to a .tflite/.onnx file)")
    return Path(path)


def fast_detector():
    """YuNet at 320 pixels where its file is present, else the frontal Haar cascade alone
    (the profile cascades triple Haar's cost and the sample face is frontal)."""
    import os

    from facemtl.runtime.detectors import HaarDetector, YuNetDetector

    if YUNET.is_file() and os.environ.get("FACEMTL_TEST_DETECTOR") != "haar":
        return YuNetDetector(YUNET, max_side=320)
    return HaarDetector(profile=False, max_side=320)


def video_analyzer(model: Path, **tracking):
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions, RunningMode
    from facemtl.runtime.live.tracking import TrackingOptions
    from facemtl.runtime.spec import SpecError

    try:
        return FaceAnalyzer.create_from_options(FaceAnalyzerOptions(
            model_path=model, detector=fast_detector(), running_mode=RunningMode.VIDEO,
            tracking=TrackingOptions(**tracking)))
    except SpecError as e:
        pytest.skip(f"{model}: {e}")


def run_stream(analyzer, stream, indices):
    """Analyse stream frames `indices` in order; (results, truths)."""
    results, truths = [], []
    for i in indices:
        results.append(analyzer.analyze_for_video(stream.frame(i), stream.timestamp_ms(i)))
        truths.append(stream.truth(i))
    return results, truths


def rms_jitter(points: list[np.ndarray]) -> float:
    """RMS over the 10 coordinates of their standard deviation over frames, in pixels."""
    p = np.asarray(points, np.float64)
    return float(np.sqrt(np.mean(np.var(p, axis=0))))
