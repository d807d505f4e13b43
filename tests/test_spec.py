"""The model contract: JSON round trip, validation, numpy decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facemtl.runtime.spec import (BoxCalibration, HeadSpec, ModelSpec, QuantParams, SpecError, default_spec)


def test_json_round_trip_keeps_everything():
    spec = default_spec()
    spec = spec.replace(
        crop=spec.crop.__class__(scale=3.3, shift_y=0.05, calibrations={"haar": BoxCalibration(0.01, 0.1, 1.2, 900)}),
        quantization={"input": QuantParams(0.03, -5), "pose": QuantParams(0.1, 3)},
        trunk="mtfl",
    )
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec
    assert again.crop.calibration("haar").scale == 1.2
    assert json.loads(again.to_json()) == json.loads(spec.to_json())


def test_default_heads_and_labels():
    spec = default_spec()
    assert spec.head_names == ("landmarks", "gender", "smile", "glasses", "pose")
    assert spec.head("gender").labels == ("male", "female")
    assert spec.head("smile").labels == ("smiling", "not_smiling")
    assert spec.head("glasses").labels == ("glasses", "no_glasses")
    assert spec.head("pose").labels == ("left_profile", "left", "frontal", "right", "right_profile")
    assert spec.select(["landmarks", "pose"]).head_names == ("landmarks", "pose")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: HeadSpec("pose", "classification", 5, ("a", "b")), "5 units but 2 labels"),
        (lambda: HeadSpec("x", "ranking", 2), "kind must be"),
        (lambda: HeadSpec("bad name", "regression", 10), "identifier"),
        (lambda: default_spec().select(["landmarks", "age"]), "no head named 'age'"),
        (lambda: default_spec().with_weights({"age": 1.0}), "unknown heads"),
        (lambda: ModelSpec.from_json("{not json"), "not valid JSON"),
        (lambda: ModelSpec.from_json('{"heads": [{"name": "a"}]}'), "not a facemtl model spec"),
        (lambda: ModelSpec.from_json('{"version": 99, "heads": []}'), "newer"),
        (lambda: default_spec().crop.calibration("mtcnn"), "no crop calibration for detector 'mtcnn'"),
    ],
)
def test_bad_specs_are_refused_with_a_reason(make, message):
    with pytest.raises(SpecError, match=message):
        make()


def test_decode_classification_and_regression():
    spec = default_spec()
    out = spec.head("pose").decode(np.array([[0, 0, 5, 0, 0], [9, 0, 0, 0, 0]], np.float32))
    assert out["class_ids"].tolist() == [2, 0]
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1, rtol=1e-6)
    assert out["probabilities"][0, 2] > 0.9
    pts = spec.head("landmarks").decode(np.arange(10, dtype=np.float32)[None])["points"]
    assert pts.shape == (1, 5, 2) and pts[0, 1].tolist() == [2, 3]
    with pytest.raises(SpecError, match=r"expects outputs of shape \(N, 5\)"):
        spec.head("pose").decode(np.zeros((1, 4)))


def test_save_and_load_file(tmp_path):
    p = tmp_path / "spec.json"
    default_spec().save(p)
    assert ModelSpec.load(p) == default_spec()
    p.write_text("[]")
    with pytest.raises(SpecError, match=str(p)):
        ModelSpec.load(p)
