"""The Raspberry Pi OS install profile: a fresh virtual environment with only the runtime's
dependencies plus `tflite-runtime` and `numpy<2`, no TensorFlow, running `facemtl predict`
on real MTFL images. Slow (it installs packages from the index); pip's cache makes reruns
quicker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from facemtl.runtime.calibration import read_landmark_file, spread_subset
from runtime_models import calibrated_spec, trained_model

pytestmark = pytest.mark.slow

def tflite_model(tmp_path: Path) -> tuple[Path, bool]:
    """(a .tflite model file, whether it is trained). The trained model where one exists;
    else a small untrained model exported to TFLite by convert/ here (TensorFlow is in the
    dev environment, never in the Pi one), so the profile is tested before the model is."""
    path = trained_model()
    if path is not None and path.suffix == ".tflite":
        return path, True
    pytest.importorskip("tensorflow", reason="needs TensorFlow here to export a test .tflite model")
    from facemtl.convert.export import ExportContext, export
    from facemtl.runtime.formats import get_format
    from facemtl.train.model import build_model

    spec = calibrated_spec()
    model = build_model(spec, width=8)
    out = tmp_path / "model_fp32.tflite"
    with ExportContext(model=model, spec=spec) as ctx:
        export(get_format("tflite-fp32"), ctx, out)
    return out, False


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def test_raspberry_pi_profile_runs_predict_without_tensorflow(tmp_path, mtfl_dir, pi_python):
    model, trained = tflite_model(tmp_path)
    env_dir = pi_python.parent.parent  # the session's Pi-profile environment (conftest.py)
    py = pi_python

    probe = run([py, "-c", (
        "import importlib.util as u, json, numpy, cv2, facemtl.runtime as runtime\n"
        "print(json.dumps({m: u.find_spec(m) is not None for m in "
        "['tensorflow', 'keras', 'ai_edge_litert', 'onnxruntime', 'tflite_runtime', 'runtime', 'train', 'convert']}"
        " | {'numpy': numpy.__version__, 'cv2': cv2.__version__, 'runtime_file': runtime.__file__}))")],
        cwd=tmp_path, timeout=120)
    assert probe.returncode == 0, probe.stderr
    info = json.loads(probe.stdout)
    assert not info["tensorflow"] and not info["keras"], info
    assert not info["runtime"] and not info["train"] and not info["convert"], info  # one top-level package
    assert info["tflite_runtime"] and not info["ai_edge_litert"] and not info["onnxruntime"], info
    assert info["numpy"].startswith("1."), info
    assert info["cv2"].startswith("4."), info
    assert str(env_dir) in info["runtime_file"]  # the installed package, not this checkout

    # LFW images (head and shoulders, 250x250): room around the face for Haar's windows,
    # unlike AFLW's tight test crops. An install check, not a benchmark.
    paths, pts = read_landmark_file(mtfl_dir / "training.txt", mtfl_dir)
    keep = spread_subset(4000, 12)
    images = [paths[i] for i in keep]
    out = tmp_path / "pi.jsonl"
    r = run([env_dir / "bin" / "facemtl", "predict", "--model", model, "--detector", "haar", "--out", out, *images],
            cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["image"]) for x in lines] == images
    found = [x for x in lines if x["faces"]]
    assert len(found) >= 10, f"Haar found faces in only {len(found)} of 12 LFW images"
    for x in found:
        assert np.array(x["faces"][0]["landmarks"]).shape == (5, 2)
    if trained:
        errs = []
        for x, i in zip(lines, keep):
            if x["faces"]:
                truth = pts[i]
                iod = np.linalg.norm(truth[1] - truth[0])
                errs.append(min(np.linalg.norm(np.array(f["landmarks"]) - truth, axis=1).mean() / iod for f in x["faces"]))
        assert np.median(errs) < 0.12
