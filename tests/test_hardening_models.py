"""Hostile model files and specs: every failure to load, allocate or run a model file is a
ModelFileError (one line, exit 2), and spec values are validated where they are read (the
spec embedded in the file, and a spec.json beside it)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.runtime.analyzer import FaceAnalyzer
from facemtl.runtime.backends import load_backend, load_backend_from_buffer
from facemtl.runtime.errors import ModelFileError, SpecError
from facemtl.runtime.spec import ModelSpec, default_spec
from runtime_models import ROOT, calibrated_spec, write_constant_onnx

PACKAGED = ROOT / "runtime" / "models" / "facemtl_int8.tflite"
CLI = [sys.executable, "-m", "facemtl.runtime.cli"]
CAL = "0.7192039071043731"  # the packaged file's Haar calibration scale, as its embedded JSON spells it


def _face(tmp_path) -> Path:
    p = tmp_path / "face.png"
    cv2.imwrite(str(p), np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return p


def _packaged() -> bytes:
    if not PACKAGED.is_file():
        pytest.skip(f"no packaged model at {PACKAGED}")
    return PACKAGED.read_bytes()


# --- spec values ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -0.8])
def test_a_calibration_scale_that_is_not_finite_and_positive_is_a_spec_error_naming_it(value):
    d = calibrated_spec().to_dict()
    d["crop"]["calibrations"]["haar"]["scale"] = value
    with pytest.raises(SpecError, match=r"crop.calibrations\['haar'\].scale must be a finite number > 0"):
        ModelSpec.from_json(json.dumps(d))  # json writes NaN and Infinity, as a hand-edited file may hold


@pytest.mark.parametrize("path, value, field", [
    (("input", "size"), 10**9, "input.size"),
    (("input", "min_std"), -1.0, "input.min_std"),
    (("crop", "scale"), math.nan, "crop.scale"),
    (("crop", "shift_y"), math.inf, "crop.shift_y"),
    (("heads", 1, "units"), 0, "heads['gender'].units"),
    (("heads", 0, "tolerance"), math.nan, "heads['landmarks'].tolerance"),
    (("heads", 2, "labels"), "ab", "heads['smile'].labels"),
])
def test_other_spec_values_are_validated(path, value, field):
    d = default_spec().to_dict()
    target = d
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(SpecError, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        ModelSpec.from_dict(d)


def test_quantization_values_are_validated():
    d = default_spec().to_dict()
    d["quantization"] = {"input": {"scale": 0.0, "zero_point": 0, "dtype": "int8"}}
    with pytest.raises(SpecError, match=r"quantization\['input'\]: quantization scale must be"):
        ModelSpec.from_dict(d)
    d["quantization"] = {"input": {"scale": 0.1, "zero_point": 300, "dtype": "int8"}}
    with pytest.raises(SpecError, match="zero_point must be an integer"):
        ModelSpec.from_dict(d)


def test_a_negative_calibration_embedded_in_a_tflite_file_is_refused_at_load(tmp_path):
    data = _packaged()
    assert data.count(CAL.encode()) == 1
    bad = tmp_path / "negative.tflite"
    bad.write_bytes(data.replace(CAL.encode(), ("-" + CAL[:-1]).encode()))  # same length: the file stays whole
    with pytest.raises(ModelFileError, match=r"negative.tflite: the embedded spec is invalid: "
                                             r"crop.calibrations\['haar'\].scale must be a finite number > 0"):
        load_backend(bad)
    r = subprocess.run(CLI + ["predict", "-m", str(bad), str(_face(tmp_path))], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("facemtl")] == r.stderr.strip().splitlines()[-1:]


@pytest.mark.parametrize("value", ["NaN", "0", "-0.9"])
def test_a_bad_calibration_in_spec_json_beside_the_model_is_a_spec_error(tmp_path, value):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = write_constant_onnx(tmp_path / "m.onnx")
    d = calibrated_spec().to_dict()
    text = json.dumps(d).replace('"scale": 0.435', f'"scale": {value}')  # the "none" detector's calibration
    assert text != json.dumps(d)
    (tmp_path / "spec.json").write_text(text)
    with pytest.raises(SpecError, match=r"spec.json: crop.calibrations\['none'\].scale must be a finite number > 0"):
        FaceAnalyzer.create_from_model_path(model, detector="none")


# --- model files that load but do not work ----------------------------------------------------
def test_a_truncated_model_is_one_line_and_exit_2(tmp_path):
    data = _packaged()
    for n in (0, 7, 100, len(data) // 3, len(data) - 1000):
        p = tmp_path / f"cut{n}.tflite"
        p.write_bytes(data[:n])
        with pytest.raises(ModelFileError, match=f"cut{n}.tflite"):
            load_backend(p).run(np.zeros((1, 40, 40, 1), np.float32))
    with pytest.raises(ModelFileError):
        load_backend_from_buffer(data[: len(data) // 2])


def test_a_model_that_answers_nan_is_refused_when_it_runs(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = write_constant_onnx(tmp_path / "nan.onnx", landmarks=np.full((5, 2), np.nan, np.float32))
    backend = load_backend(model)
    with pytest.raises(ModelFileError, match=r"nan.onnx: output 'landmarks' is not finite"):
        backend.run(np.zeros((2, 40, 40, 1), np.float32))
    r = subprocess.run(CLI + ["predict", "-m", str(model), "-d", "none", str(_face(tmp_path))], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "is not finite" in r.stderr


def test_structural_bytes_flipped_give_model_file_errors_never_other_exceptions(tmp_path):
    """The issue's case, seeded: a few bytes of the flatbuffer's tables (not the weights)
    changed; loading and running either works or raises ModelFileError."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from fuzz import mutate_model, structure_ranges
    finally:
        sys.path.pop(0)
    data = _packaged()
    ranges = structure_ranges(PACKAGED, data)
    rng = np.random.default_rng(19)
    outcomes = {"refused": 0, "ran": 0}
    x = np.random.default_rng(0).normal(size=(3, 40, 40, 1)).astype(np.float32)
    for i in range(40):
        mutant, how = mutate_model(rng, PACKAGED, data, ranges)
        try:
            load_backend_from_buffer(mutant, name=f"mutant{i}.tflite").run(x)
            outcomes["ran"] += 1
        except ModelFileError as e:
            assert f"mutant{i}.tflite" in str(e) and "\n" not in str(e), how
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0
