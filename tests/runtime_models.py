"""Model files for the runtime tests: small real ONNX files the tests write, and the trained
model where one exists.

`write_constant_onnx` writes a genuine ONNX model (run by onnxruntime through
`facemtl.runtime.backends`, with the spec embedded the way `facemtl convert` embeds it) whose heads
answer fixed values whatever the crop: the geometry of detection -> calibration -> crop ->
decode -> image pixels can then be checked exactly.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from facemtl.runtime.formats import FORMAT_KEY, SPEC_KEY
from facemtl.runtime.spec import BoxCalibration, ModelSpec, default_spec

ROOT = Path(__file__).resolve().parents[1]

# A plausible mean face in crop units (MTFL order), inside the square.
MEAN_SHAPE = np.array([[0.33, 0.38], [0.67, 0.38], [0.50, 0.55], [0.36, 0.72], [0.64, 0.72]], np.float32)

# Calibrations as measured on MTFL training images for the default crop policy (docs/runtime.md).
CALIBRATIONS = {
    "haar": BoxCalibration(-0.000, 0.087, 0.857, 499),
    "haar_profile": BoxCalibration(-0.174, 0.095, 0.697, 95),
    "yunet": BoxCalibration(-0.004, 0.004, 1.010, 600),
    "yunet_box": BoxCalibration(0.013, 0.095, 1.023, 596),
    "none": BoxCalibration(0.001, 0.028, 0.435, 450),
}


def calibrated_spec(**calibrations: BoxCalibration) -> ModelSpec:
    spec = default_spec()
    cals = {**CALIBRATIONS, **calibrations}
    return spec.replace(crop=dataclasses.replace(spec.crop, calibrations=cals))


def default_logits(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Fixed logits per class head: the last class wins with a known probability."""
    return {h.name: np.linspace(0.0, 1.0, h.units).astype(np.float32) for h in spec.heads if h.kind == "classification"}


def write_constant_onnx(path: Path, spec: ModelSpec | None = None, landmarks: np.ndarray = MEAN_SHAPE,
                        logits: dict[str, np.ndarray] | None = None, fmt: str = "onnx-fp32") -> Path:
    """An ONNX file: image (N, 40, 40, 1) -> one output per head, named after it, constant
    per face (a zero-weight MatMul plus a bias keeps the batch dimension real)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    spec = spec or calibrated_spec()
    logits = {**default_logits(spec), **(logits or {})}
    s = spec.input.size
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1)]
    inits, outputs = [], []
    for h in spec.heads:
        bias = (np.asarray(landmarks, np.float32).reshape(-1) if h.kind == "regression" else logits[h.name])
        inits += [numpy_helper.from_array(np.zeros((s * s, h.units), np.float32), f"{h.name}_w"),
                  numpy_helper.from_array(bias.astype(np.float32), f"{h.name}_b")]
        nodes += [helper.make_node("MatMul", ["flat", f"{h.name}_w"], [f"{h.name}_mm"]),
                  helper.make_node("Add", [f"{h.name}_mm", f"{h.name}_b"], [h.name])]
        outputs.append(helper.make_tensor_value_info(h.name, TensorProto.FLOAT, ["N", h.units]))
    graph = helper.make_graph(nodes, "constant_facemtl",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", s, s, 1])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for k, v in ((SPEC_KEY, spec.to_json()), (FORMAT_KEY, fmt)):
        p = model.metadata_props.add()
        p.key, p.value = k, v
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def trained_model() -> Path | None:
    """A trained model the runtime can load ($FACEMTL_TEST_MODEL, the packaged default, or the
    converted files in models/default/), or None."""
    env = os.environ.get("FACEMTL_TEST_MODEL")
    if env:
        return Path(env)
    candidates = [ROOT / "runtime" / "models" / "facemtl_int8.tflite", ROOT / "runtime" / "models" / "facemtl_fp32.onnx"]
    for folder in (ROOT / "models" / "default", ROOT / "models" / "default" / "converted"):
        candidates += [folder / n for n in ("facemtl_int8.tflite", "model_int8.tflite", "facemtl_fp32.onnx",
                                            "model_fp32.onnx")]
    return next((p for p in candidates if p.is_file()), None)
