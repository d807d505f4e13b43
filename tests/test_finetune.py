"""Training on manifests and fine-tuning (issue 21): the MTFL manifest trains the weights of
the MTFL folder; `--init`, `--freeze trunk` and `--add-head` on a folder-per-class source; the
new head through `facemtl convert` (TFLite, ONNX) and the runtime; `evaluate` on the source."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from facemtl.runtime.spec import BoxCalibration, ModelSpec  # noqa: E402
from facemtl.train.config import TrainConfig  # noqa: E402
from facemtl.train.fit import train  # noqa: E402
from facemtl.train.model import load_model  # noqa: E402
from facemtl.train.mtfl import load_split  # noqa: E402
from facemtl.train.sources import mtfl_to_manifest  # noqa: E402

FACEMTL = [sys.executable, "-m", "facemtl.runtime.cli"]
pytestmark = pytest.mark.slow


def tiny(data, out, **kw) -> TrainConfig:
    options = dict(width=8, epochs=1, batch_size=32, verbose=0)
    options.update(kw)
    return TrainConfig(data=Path(data), out=Path(out), **options)


def test_mtfl_manifest_trains_the_weights_of_the_mtfl_folder(tiny_mtfl, tmp_path):
    manifest = tmp_path / "m" / "train.jsonl"
    mtfl_to_manifest(load_split(tiny_mtfl, "training"), manifest)
    folder = train(tiny(tiny_mtfl, tmp_path / "folder", seed=3))
    listed = train(tiny(manifest, tmp_path / "manifest", seed=3))
    a, b = load_model(folder.model_path).get_weights(), load_model(listed.model_path).get_weights()
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert folder.val_metrics == listed.val_metrics and "val/landmarks/nme" in folder.val_metrics


@pytest.fixture(scope="module")
def base_model(tiny_mtfl, tmp_path_factory) -> Path:
    """A tiny trained model whose spec calibrates the `none` detector (the whole image is the
    box), so that faces without landmarks can be framed without a face detector."""
    out = tmp_path_factory.mktemp("base") / "run"
    result = train(tiny(tiny_mtfl, out))
    spec = ModelSpec.load(result.spec_path)
    spec.replace(crop=dataclasses.replace(spec.crop, calibrations={"none": BoxCalibration(0.0, 0.02, 0.8, 1)})).save(
        result.spec_path)
    return result.model_path


@pytest.fixture(scope="module")
def hat_folder(tiny_mtfl, tmp_path_factory) -> Path:
    """A folder per class for a head MTFL does not have: the glasses drawn on the synthetic
    faces stand in for a hat."""
    root = tmp_path_factory.mktemp("hats") / "hat"
    ann = load_split(tiny_mtfl, "training")
    for i in range(60):
        label = ("hat", "no_hat")[int(ann.labels["glasses"][i])]
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_mtfl / ann.paths[i], root / label / f"{i}.jpg")
    return root


def run_cli(*args) -> subprocess.CompletedProcess:
    r = subprocess.run([*FACEMTL, *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_add_head_with_frozen_trunk_keeps_every_other_head_and_converts(base_model, hat_folder, tiny_mtfl, tmp_path):
    out = tmp_path / "hat"
    run_cli("train", "--init", base_model, "--freeze", "trunk", "--add-head", "hat:classification:hat,no_hat",
            "--data", hat_folder, "--detector", "none", "--epochs", "2", "--batch-size", "16", "--lr", "0.01",
            "--out", out, "--calibrate", "haar")
    base, tuned = load_model(base_model), load_model(out / "model.keras")
    spec = ModelSpec.load(out / "spec.json")
    assert spec.head_names == ("landmarks", "gender", "smile", "glasses", "pose", "hat")
    assert spec.head("hat").labels == ("hat", "no_hat")
    assert "none" in spec.crop.calibrations  # kept from --init
    # the trunk and the heads the folder does not label: bit for bit the initial model's
    for layer in base.layers:
        for w0, w1 in zip(layer.get_weights(), tuned.get_layer(layer.name).get_weights()):
            assert np.array_equal(w0, w1), layer.name
    assert tuned.get_layer("hat").get_weights()[0].shape == (tuned.get_layer("features").output.shape[-1], 2)
    summary = json.loads((out / "train.json").read_text())
    assert summary["sources"][0]["train_labels"] == {"landmarks": 0, "hat": summary["sources"][0]["train_faces"]}
    assert set(summary["val"]) >= {"val/hat/accuracy"} and "val/gender/accuracy" not in summary["val"]

    # evaluate on the folder per class: only the head it labels is scored
    report = tmp_path / "eval.json"
    run_cli("evaluate", out / "model.keras", "--data", hat_folder, "--detector", "none", "--json", report)
    heads = json.loads(report.read_text())["heads"]
    assert list(heads) == ["hat"] and heads["hat"]["faces"] == 60

    # conversion and the runtime carry the head by name, with no other change
    conv = tmp_path / "conv"
    run_cli("convert", out / "model.keras", "--data", tiny_mtfl, "--formats", "tflite-fp32", "onnx-fp32",
            "--out", conv)
    formats = json.loads((conv / "report.json").read_text())["formats"]
    assert [f["status"] for f in formats] == ["passed", "passed"]
    for f in formats:  # the per-head check: the new head agrees with Keras (MTFL has no hat labels)
        hat = next(h for h in f["heads"] if h["head"] == "hat")
        assert hat["passed"] and hat["agreement"] >= 0.98 and hat["keras"] is None
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    assert "hat" in {o.name for o in ort.InferenceSession(str(conv / "model_fp32.onnx")).get_outputs()}
    runner = Interpreter(model_path=str(conv / "model_fp32.tflite")).get_signature_runner()
    assert "hat" in runner.get_output_details()
    import cv2

    from facemtl.runtime.analyzer import FaceAnalyzer, load_model as load_backend

    x = np.random.default_rng(0).normal(size=(3, 40, 40, 1)).astype(np.float32)
    expected = np.asarray(tuned(x, training=False)["hat"])
    image = cv2.imread(str(next(hat_folder.glob("*/*.jpg"))))
    for name in ("model_fp32.tflite", "model_fp32.onnx"):
        backend = load_backend(conv / name)
        assert backend.spec.head("hat").labels == ("hat", "no_hat")
        np.testing.assert_allclose(backend.run(x)["hat"], expected, atol=1e-4)
        with FaceAnalyzer.create_from_model_path(conv / name, detector="none") as analyzer:
            hat = analyzer.analyze(image).faces[0].attributes["hat"]
        assert [c.category_name for c in hat.categories] == ["hat", "no_hat"]


def test_two_sources_with_partial_labels_report_per_source_metrics(base_model, tiny_mtfl, tmp_path):
    """An MTFL folder and a manifest without landmarks or gender on every other face, mixed in
    batches, weighted 1:3: the run reports every head per source, and each head on the faces
    that have its label."""
    ann = load_split(tiny_mtfl, "training")
    full = tmp_path / "m" / "faces.jsonl"
    mtfl_to_manifest(ann, full)
    records = [json.loads(line) for line in full.read_text().splitlines()]
    for r in records[1::2]:
        del r["landmarks"], r["labels"]["gender"]
    full.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    result = train(tiny(tiny_mtfl, tmp_path / "mixed", sources=(str(tiny_mtfl), str(full)), source_weights=(1.0, 3.0),
                        init=str(base_model), detector="none", epochs=2))
    rows = list(__import__("csv").DictReader(open(tmp_path / "mixed" / "history.csv")))
    assert len(rows) == 2
    from facemtl.train.sources import source_names

    assert source_names([str(tiny_mtfl), str(full)])[1] == "faces"
    for source in source_names([str(tiny_mtfl), str(full)]):
        for key in ("landmarks/nme", "gender/accuracy", "smile/accuracy", "pose/accuracy"):
            assert np.isfinite(float(rows[-1][f"val_{source}/{key}"]))
    summary = json.loads((tmp_path / "mixed" / "train.json").read_text())
    faces = next(s for s in summary["sources"] if s["name"] == "faces")
    assert faces["train_labels"]["landmarks"] < faces["train_labels"]["smile"] == faces["train_faces"]
    assert "val/faces/landmarks/nme" in result.val_metrics


def test_a_verifier_of_one_added_head_on_whole_images_trains_and_converts(tiny_mtfl, tmp_path):
    """`--heads face --add-head face:...` trains a model of that one head (no MTFL head rides
    along), `--crop image` cuts every face-less image whole, and `python -m facemtl.train.verify
    convert` checks and exports it with its tight-crop framing, which the runtime's
    FaceVerifier loads."""
    import cv2

    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.verify import FaceVerifier
    from facemtl.train.verify import make_data

    for part, folder in (("training", tmp_path / "data"), ("validation", tmp_path / "check")):
        make_data(tiny_mtfl, folder, part=part)
        rng = np.random.default_rng(len(part))
        for i in range(40 if part == "training" else 10):  # face-free: noise and gradients
            img = cv2.GaussianBlur(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), (7, 7), 2)
            cv2.imwrite(str(folder / "face" / "background" / f"n{i}.png"), img)
    out = tmp_path / "run"
    run_cli("train", "--data", tmp_path / "data" / "face", "--crop", "image", "--heads", "face",
            "--add-head", "face:classification:background,face", "--width", "8", "--depth", "1", "--features", "16",
            "--pool", "gdc", "--epochs", "2", "--batch-size", "16", "--out", out)
    spec = ModelSpec.load(out / "spec.json")
    assert spec.head_names == ("face",) and spec.crop.mode == "image"
    r = subprocess.run([sys.executable, "-m", "facemtl.train.verify", "convert", str(out), "--train", str(tmp_path / "data"),
                        "--check", str(tmp_path / "check"), "--data", str(tiny_mtfl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "converted" / "report.json").read_text())
    assert [f["status"] for f in report["formats"]] == ["passed", "passed"]
    v = FaceVerifier(load_backend(out / "converted" / "model_int8-float.tflite", threads=1))
    assert v.framing.faces > 0 and 0.0 <= v.probability(cv2.imread(str(next((tmp_path / "check").rglob("*.png"))))) <= 1.0
