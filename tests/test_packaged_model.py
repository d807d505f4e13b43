"""The packaged default model against its source: the int8 TFLite file (LiteRT), the fp32
ONNX file (ONNX Runtime) and models/default/model.keras (Keras), on the same real MTFL crops,
head by head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facemtl.runtime.backends import load_backend
from facemtl.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
PACKAGED = ROOT / "runtime" / "models"


@pytest.fixture(scope="module")
def crops_and_truth(mtfl_dir):
    from facemtl.train.evaluate import canonical_crops, split_annotations
    from facemtl.train.mtfl import load_images

    ann = split_annotations(mtfl_dir, "validation")
    data = load_images(ann.subset(np.arange(0, len(ann), 4)))  # 254 held-out faces
    spec = ModelSpec.load(ROOT / "models" / "default" / "spec.json")
    x, mats = canonical_crops(data, spec)
    return spec, data, x, mats


@pytest.mark.slow
def test_packaged_files_agree_with_the_keras_model_per_head(crops_and_truth):
    pytest.importorskip("keras")
    from facemtl.train.evaluate import keras_predictor, score
    from facemtl.train.model import load_model

    spec, data, x, mats = crops_and_truth
    keras_out = keras_predictor(load_model(ROOT / "models" / "default" / "model.keras"))(x)
    ref = score(spec, keras_out, mats, data)
    for name in ("facemtl_int8.tflite", "facemtl_fp32.onnx"):
        backend = load_backend(PACKAGED / name)
        assert backend.spec.heads == spec.heads, f"{name} was not converted from models/default"
        assert backend.spec.crop.calibrations == spec.crop.calibrations
        out = backend.run(x)
        got = score(spec, out, mats, data)
        assert got["landmarks"]["nme"] - ref["landmarks"]["nme"] < 0.3, name
        for h in spec.heads:
            if h.kind == "classification":
                a = h.decode(out[h.name])["class_ids"]
                b = h.decode(keras_out[h.name])["class_ids"]
                assert (a == b).mean() >= 0.97, (name, h.name)
                assert abs(got[h.name]["accuracy"] - ref[h.name]["accuracy"]) <= 1.5, (name, h.name)
        if name.endswith("fp32.onnx"):
            for k in keras_out:
                np.testing.assert_allclose(out[k], keras_out[k], atol=1e-4)


def test_packaged_model_landmarks_land_on_the_faces(crops_and_truth):
    """No TensorFlow needed: the int8 file alone, its landmarks mapped back to image pixels."""
    from facemtl.runtime.preprocess import to_image
    from facemtl.train.metrics import nme_per_face

    spec, data, x, mats = crops_and_truth
    backend = load_backend(PACKAGED / "facemtl_int8.tflite")
    pts = spec.head("landmarks").decode(backend.run(x)["landmarks"])["points"]
    img_pts = np.stack([to_image(p, m) for p, m in zip(pts, mats)])
    nme = nme_per_face(img_pts, data.annotations.points)
    assert np.median(nme) < 7.0 and nme.mean() < 8.0


def test_packaged_default_is_the_small_model_and_its_teacher_ships():
    """Issue 20's size floor on the file users get, and the default's recipe reproducible from
    the repository: the teacher and warm start its train.json names is the shipped
    models/teacher/model.keras, byte for byte (the digest distillation recorded)."""
    import hashlib
    import json

    assert (PACKAGED / "facemtl_int8.tflite").stat().st_size <= 150_000
    train = json.loads((ROOT / "models" / "default" / "train.json").read_text())
    teacher = ROOT / train["teacher"]["model"]
    assert teacher == ROOT / "models" / "teacher" / "model.keras"
    assert hashlib.sha256(teacher.read_bytes()).hexdigest()[:16] == train["teacher"]["sha256"]
    assert ROOT / train["warm_start"]["model"] == teacher
    config = json.loads((ROOT / "models" / "default" / "config.json").read_text())
    # the options README's "Train, convert, ship" gives for the shipped model
    assert {k: config[k] for k in ("pool", "features", "first_block", "stem", "dropout", "epochs", "seed")} == {
        "pool": "gdc", "features": 256, "first_block": 1, "stem": 16, "dropout": 0.0, "epochs": 120, "seed": 2}
    assert config["teachers"] == [str(teacher.relative_to(ROOT))] and config["warm_prune"] is True
