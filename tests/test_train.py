"""The Keras side: config round trip, safe-mode loading, a tiny train -> export -> load ->
evaluate run on data the tests make, resume after SIGKILL, the mirrored strategy."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from facemtl.runtime.spec import default_spec  # noqa: E402
from facemtl.train.heads import MultiHead, make_head  # noqa: E402
from facemtl.train.model import FaceMTL, ModelFileError, build_model, load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("trunk", ["mtfl", "tcdcn"])
def test_keras_config_round_trip(trunk):
    model = build_model(default_spec(), trunk=trunk, width=8)
    config = model.get_config()
    again = FaceMTL.from_config(config)
    assert again.get_config() == config
    assert list(model.output.keys() if isinstance(model.output, dict) else model.output_names) == list(default_spec().head_names)
    assert again.count_params() == model.count_params()


def test_trunk_depth_drops_the_last_blocks_and_round_trips():
    deep, shallow = build_model(default_spec(), width=8, depth=6), build_model(default_spec(), width=8)
    names = {layer.name for layer in shallow.layers}
    assert "block5_pw" in names and "block6_pw" not in names
    assert "block6_pw" in {layer.name for layer in deep.layers}
    assert shallow.count_params() < deep.count_params()
    assert FaceMTL.from_config(shallow.get_config()).get_config()["depth"] == 5
    old = {k: v for k, v in deep.get_config().items() if k != "depth"}  # a file from before the option
    assert FaceMTL.from_config(old).count_params() == deep.count_params()
    with pytest.raises(ValueError, match="depth must be 1..6"):
        build_model(default_spec(), width=8, depth=7)


def test_gdc_fine_reads_the_10x10_map_and_counts_its_channels_in_features():
    model = build_model(default_spec(), width=8, pool="gdc-fine", features=40)
    # the fine branch reads block 3's output (10x10, 2 widths), the input of the last stride-2 block
    assert model.get_layer("fine_dw2").input.shape[1:] == (10, 10, 16)
    assert model.get_layer("gdc_pw").filters == 40 - 16
    assert model.get_layer("features").output.shape[-1] == 40
    again = FaceMTL.from_config(model.get_config())
    assert again.get_config()["pool"] == "gdc-fine" and again.count_params() == model.count_params()
    # what the fine features see: a change confined to one 4x4 input patch reaches them only
    # through the 10x10 map, and moves them
    probe = keras.Model(model.input, model.get_layer("fine_act").output)
    x = np.zeros((2, 40, 40, 1), np.float32)
    x[1, 8:12, 8:12] = 1.0
    out = np.asarray(probe(x, training=False))
    assert not np.allclose(out[0], out[1])
    with pytest.raises(ValueError, match="must exceed the fine map's 16 channels"):
        build_model(default_spec(), width=8, pool="gdc-fine", features=16)
    with pytest.raises(ValueError, match="needs a stride-2 block"):
        build_model(default_spec(), width=8, pool="gdc-fine", depth=1)


def test_stem_first_block_features_and_head_hidden_options_round_trip():
    narrow = build_model(default_spec(), width=8, first_block=1)
    wide = build_model(default_spec(), width=8)  # the default: two widths
    assert narrow.get_layer("block1_pw").filters == 8 and wide.get_layer("block1_pw").filters == 16
    old = {k: v for k, v in narrow.get_config().items() if k != "first_block"}  # a file from before the option
    assert FaceMTL.from_config(old).get_layer("block1_pw").filters == 16
    small_stem = build_model(default_spec(), width=8, stem=4)
    assert small_stem.get_layer("stem_conv").filters == 4 and wide.get_layer("stem_conv").filters == 8
    assert FaceMTL.from_config(small_stem.get_config()).get_layer("stem_conv").filters == 4
    hidden = build_model(default_spec(), width=8, head_hidden=16)
    assert hidden.get_layer("gender_hidden").units == 16 and "landmarks_hidden" not in {l.name for l in hidden.layers}
    assert list(hidden.output.keys()) == list(default_spec().head_names)
    again = FaceMTL.from_config(hidden.get_config())
    assert again.get_config() == hidden.get_config() and again.count_params() == hidden.count_params()
    assert hidden.count_params() == wide.count_params() + 4 * (256 * 16 + 16) + 16 * (2 + 2 + 2 + 5) - 256 * (2 + 2 + 2 + 5)
    slim = build_model(default_spec(), width=8, features=32)
    assert slim.get_layer("features_dense").units == 32 and wide.get_layer("features_dense").units == 256
    assert FaceMTL.from_config(slim.get_config()).get_layer("features_dense").units == 32
    old = {k: v for k, v in slim.get_config().items() if k != "features"}  # a file from before the option
    assert FaceMTL.from_config(old).get_layer("features_dense").units == 256
    with pytest.raises(ValueError, match="features must be >= 1"):
        build_model(default_spec(), width=8, features=0)


def test_crop_scale_option_reaches_the_spec_the_model_carries():
    from facemtl.train.config import TrainConfig
    from facemtl.train.fit import run_spec

    assert run_spec(TrainConfig(data=Path("."), out=Path("."))).crop.scale == default_spec().crop.scale
    spec = run_spec(TrainConfig(data=Path("."), out=Path("."), crop_scale=4.5))
    assert spec.crop.scale == 4.5
    model = build_model(spec, width=8)
    assert FaceMTL.from_config(model.get_config()).model_spec.crop.scale == 4.5


def test_input_size_option_reaches_the_spec_and_the_model_input():
    from facemtl.train.config import TrainConfig
    from facemtl.train.fit import run_spec

    assert run_spec(TrainConfig(data=Path("."), out=Path("."))).input.size == 40
    spec = run_spec(TrainConfig(data=Path("."), out=Path("."), input_size=64))
    assert spec.input.size == 64
    model = build_model(spec, width=8)
    assert tuple(model.input_shape[1:]) == (64, 64, 1)
    out = model.predict(np.zeros((2, 64, 64, 1), np.float32), verbose=0)
    assert out["landmarks"].shape == (2, 10)
    assert FaceMTL.from_config(model.get_config()).model_spec.input.size == 64


def test_pose_sampling_weights_pool_mirrors_and_equalise_at_one():
    from facemtl.train.pipeline import pose_sampling_weights

    pose = np.array([0] * 10 + [1] * 40 + [2] * 400 + [3] * 60 + [4] * 30)
    assert np.allclose(pose_sampling_weights(pose, 0.0), 1.0)
    w = pose_sampling_weights(pose, 1.0)
    assert np.isclose(w.mean(), 1.0)
    share = np.array([w[pose == k].sum() for k in range(5)])
    # a flip turns a pose into its mirror, so after flips each of the five poses gets a fifth:
    # the two profiles together get two fifths, as do the two turned poses; frontal one fifth
    assert np.allclose([share[0] + share[4], share[1] + share[3]], 2 * share[2], rtol=1e-9)
    assert w[pose == 0][0] == w[pose == 4][0]  # left and right profile faces weigh the same
    half = pose_sampling_weights(pose, 0.5)
    assert half[pose == 0][0] > 1.0 > half[pose == 2][0]


def test_weighted_dataset_draws_by_weight_and_redraws_each_epoch():
    from facemtl.train.pipeline import make_dataset

    class Source:  # make_dataset needs only len(), .spec and .batch(index, draw)
        spec = default_spec()

        def __len__(self):
            return 400

        def batch(self, index, draw):
            n = len(index)
            return (np.broadcast_to(index.astype(np.float32)[:, None, None, None], (n, 40, 40, 1)).copy(),
                    np.zeros((n, 10), np.float32), np.zeros((n, 4), np.int32))

    weights = np.where(np.arange(400) < 40, 9.0, 1.0)  # the first 10% of faces: half the mass

    def epoch(ds):
        return np.concatenate([x[:, 0, 0, 0].numpy() for x, _ in ds]).astype(int)

    ds = make_dataset(Source(), 50, shuffle=True, seed=3, weights=weights)
    first, second = epoch(ds), epoch(ds)
    assert len(first) == 400
    assert 0.4 < (first < 40).mean() < 0.6 and 0.4 < (second < 40).mean() < 0.6
    assert (first != second).mean() > 0.5
    again = make_dataset(Source(), 50, shuffle=True, seed=3, weights=weights)
    assert np.array_equal(epoch(again), first)  # deterministic for a seed
    with pytest.raises(ValueError, match="3 sampling weights for 400 faces"):
        make_dataset(Source(), 50, shuffle=True, weights=np.ones(3))


def test_class_priors_follow_the_resampling():
    from facemtl.train.fit import class_priors

    class Ann:  # class_priors reads only .labels of the loader's annotations
        labels = {"gender": np.array([0, 0, 0, 1]), "pose": np.array([2, 2, 2, 0])}

    spec = default_spec()
    plain = class_priors(Ann, spec, ("gender", "pose"))
    assert np.allclose(plain["gender"], [0.75, 0.25])
    assert plain["pose"][0] == plain["pose"][4] < plain["pose"][2]  # a flip mirrors the pose
    weighted = class_priors(Ann, spec, ("gender",), sample_weights=np.array([1.0, 1.0, 1.0, 3.0]))
    assert np.allclose(weighted["gender"], [0.5, 0.5]) and "pose" not in weighted


def test_outputs_are_named_after_the_heads():
    spec = default_spec().select(["landmarks", "pose"])
    model = build_model(spec, width=8)
    out = model(np.zeros((2, 40, 40, 1), np.float32))
    assert set(out) == {"landmarks", "pose"}
    assert out["landmarks"].shape == (2, 10) and out["pose"].shape == (2, 5)
    assert model.get_layer("pose").units == 5


def test_multihead_refuses_wrong_weights():
    heads = [make_head(h) for h in default_spec().heads]
    with pytest.raises(ValueError, match="one weight per head"):
        MultiHead(heads, weights={"landmarks": 1.0})
    mh = MultiHead(heads)
    assert mh.compile_args()["loss_weights"]["landmarks"] == 1.0
    assert MultiHead.metric_key("val_pose_accuracy", mh.heads) == "val/pose/accuracy"
    assert MultiHead.metric_key("landmarks_nme", mh.heads) == "landmarks/nme"
    # one head: Keras leaves the output's name out of the metric names
    assert MultiHead.metric_key("val_accuracy", ["gender"]) == "val/gender/accuracy"
    assert MultiHead.metric_key("nme", ["landmarks"]) == "landmarks/nme"
    assert MultiHead.metric_key("val_loss", ["gender"]) == "val/loss"


def test_landmark_loss_is_the_nme():
    from facemtl.train.heads import NME, LandmarkLoss

    true = np.array([[0.3, 0.4, 0.7, 0.4, 0.5, 0.6, 0.35, 0.75, 0.65, 0.75]], np.float32)
    pred = true + np.array([[0.04, 0, 0, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    # one of five points off by 0.04, inter-ocular distance 0.4: 0.04 / 5 / 0.4 = 2%
    assert float(LandmarkLoss()(true, pred)) == pytest.approx(0.02, rel=1e-3)
    m = NME()
    m.update_state(true, pred)
    assert float(m.result()) == pytest.approx(2.0, rel=1e-3)


POSE_PRIOR = np.array([0.0136, 0.1113, 0.7445, 0.1111, 0.0195])  # MTFL training.txt, left profile .. right profile


def _optimum_checks(smooth_to: str):
    """The raw logits that minimise the balanced pose loss for a frontal face, and the loss
    there and one small step away along each logit."""
    from facemtl.train.heads import AdjustedCE

    eps, y = 0.05, 2
    ce = AdjustedCE(5, eps, POSE_PRIOR.tolist(), smooth_to=smooth_to)
    spread = POSE_PRIOR if smooth_to == "prior" else np.full(5, 0.2)
    target = (1 - eps) * np.eye(5)[y] + eps * spread
    z = np.log(target / POSE_PRIOR).astype(np.float32)  # softmax(z + log prior) = target
    loss = lambda v: float(ce(np.array([y]), v[None].astype(np.float32)))  # noqa: E731
    steps = [loss(z + d * np.eye(5)[k]) for k in range(5) for d in (-0.05, 0.05)]
    p = np.exp(z) / np.exp(z).sum()
    return loss(z), steps, p


def test_smoothing_toward_the_prior_gives_wrong_classes_equal_raw_scores():
    at, steps, p = _optimum_checks("prior")
    assert all(at <= s + 1e-6 for s in steps)  # the minimum
    others = np.delete(p, 2)
    np.testing.assert_allclose(others, others[0], rtol=1e-5)  # no class favoured among the wrong ones
    assert p[2] > 0.85


def test_uniform_smoothing_with_balance_favours_the_rare_classes_in_raw_scores():
    # why `--smooth-to prior` exists: Keras's uniform smoothing in the adjusted space makes a
    # perfectly fitted frontal face score under 0.5 frontal, its runner-ups the rare profiles
    at, steps, p = _optimum_checks("uniform")
    assert all(at <= s + 1e-6 for s in steps)
    assert p[2] < 0.5 and p[0] > p[1] and p[4] > p[3]


def test_adjusted_ce_config_round_trips_and_old_configs_smooth_uniformly():
    from facemtl.train.heads import AdjustedCE

    ce = AdjustedCE(5, 0.05, POSE_PRIOR.tolist(), smooth_to="prior")
    assert AdjustedCE.from_config(ce.get_config()).smooth_to == "prior"
    old = {k: v for k, v in ce.get_config().items() if k != "smooth_to"}
    assert AdjustedCE.from_config(old).smooth_to == "uniform"
    with pytest.raises(ValueError, match="smooth_to"):
        AdjustedCE(5, 0.05, smooth_to="labels")


def facemtl(*args, **kw):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "facemtl", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, **kw)


@pytest.mark.slow
def test_tiny_train_export_load_evaluate(tiny_mtfl, tmp_path):
    from facemtl.train.evaluate import evaluate, keras_predictor
    from facemtl.train.fit import TrainConfig, train

    run = tmp_path / "run"
    res = train(TrainConfig(data=tiny_mtfl, out=run, epochs=3, batch_size=32, width=8, verbose=0))
    assert res.model_path.exists() and res.spec_path.exists()
    assert {"backup", "logs", "history.csv", "best.weights.h5", "train.json"} <= {p.name for p in run.iterdir()}
    assert not [p for p in run.iterdir() if p.name.startswith(".")], "no temporary files left behind"
    model = load_model(res.model_path)  # safe_mode=True inside
    x = np.random.default_rng(0).normal(size=(4, 40, 40, 1)).astype(np.float32)
    best = build_model(default_spec(), width=8)
    best.load_weights(run / "best.weights.h5")
    for k, v in best(x, training=False).items():
        np.testing.assert_allclose(model(x, training=False)[k], v, atol=1e-6)
    summary = json.loads((run / "train.json").read_text())
    assert 1 <= summary["best_epoch"] <= 3 and "val/landmarks/nme" in summary["val"]

    report = evaluate(keras_predictor(model), model.model_spec, tiny_mtfl, "testing", plots=tmp_path / "plots",
                      progress=False)
    assert report.faces == 40
    assert set(report.heads) == set(default_spec().head_names)
    lm = report.heads["landmarks"]
    assert np.isfinite(lm["nme"]) and 0 <= lm["failure_rate"] <= 100 and 0 <= lm["auc10"] <= 1
    assert sum(map(sum, report.heads["pose"]["confusion"])) == 40
    lo, hi = report.heads["smile"]["accuracy_ci95"]
    assert lo <= report.heads["smile"]["accuracy"] <= hi
    assert 0 <= report.heads["smile"]["contradicted"] <= 40
    assert {p.name for p in (tmp_path / "plots").iterdir()} >= {"landmarks_ced.png", "faces.png", "pose_confusion.png",
                                                                 "smile_contradicted.png"}


@pytest.mark.slow
def test_ema_averages_the_exported_weights_not_the_training(tiny_mtfl, tmp_path):
    """With --ema the exported model holds the moving average of the weights; training itself
    follows the same path (BatchNorm statistics, which are not averaged, come out identical)."""
    from facemtl.train.fit import TrainConfig, train

    models = {}
    for ema in (0.0, 0.5):
        res = train(TrainConfig(data=tiny_mtfl, out=tmp_path / f"ema{ema}", epochs=1, batch_size=16, width=8,
                                ema=ema, verbose=0))
        models[ema] = load_model(res.model_path)
    plain, averaged = models[0.0], models[0.5]
    for a, b in zip(plain.trainable_weights, averaged.trainable_weights):
        assert a.path == b.path
    differ = [not np.allclose(a.numpy(), b.numpy(), atol=1e-6) for a, b in zip(plain.trainable_weights, averaged.trainable_weights)]
    assert all(differ), "every trainable weight is averaged"
    for a, b in zip(plain.non_trainable_weights, averaged.non_trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, err_msg=a.path)


@pytest.mark.slow
def test_cli_train_subset_of_heads_and_evaluate_json(tiny_mtfl, tmp_path):
    run = tmp_path / "run"
    r = facemtl("train", "--data", tiny_mtfl, "--out", run, "--epochs", 1, "--width", 8, "--heads", "landmarks,pose",
                "--calibrate", "")
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "spec.json").read_text())["heads"][1]["name"] == "pose"
    r = facemtl("evaluate", run / "model.keras", "--data", tiny_mtfl, "--json", tmp_path / "e.json")
    assert r.returncode == 0, r.stderr
    got = json.loads((tmp_path / "e.json").read_text())
    assert set(got["heads"]) == {"landmarks", "pose"} and got["faces"] == 40 and got["flip_average"] is False
    r = facemtl("evaluate", run / "model.keras", "--data", tiny_mtfl, "--json", tmp_path / "f.json", "--flip-average")
    assert r.returncode == 0, r.stderr
    flipped = json.loads((tmp_path / "f.json").read_text())
    assert flipped["flip_average"] is True and "flip-averaged" in r.stdout
    assert flipped["heads"]["landmarks"]["nme"] != got["heads"]["landmarks"]["nme"]
    # one head alone: its validation metric is still reported under the head's name
    one = tmp_path / "one"
    r = facemtl("train", "--data", tiny_mtfl, "--out", one, "--epochs", 1, "--width", 8, "--heads", "gender",
                "--calibrate", "")
    assert r.returncode == 0, r.stderr
    assert "gender/accuracy" in r.stderr  # the per-epoch table is logged (stderr)
    r = facemtl("--quiet", "train", "--data", tiny_mtfl, "--out", tmp_path / "quiet", "--epochs", 1, "--width", 8,
                "--heads", "gender", "--calibrate", "")
    assert r.returncode == 0 and "gender/accuracy" not in r.stderr, r.stderr
    val = json.loads((one / "train.json").read_text())["val"]
    assert set(val) == {"val/gender/accuracy", "val/loss"}
    # an existing run is not overwritten by accident
    r = facemtl("train", "--data", tiny_mtfl, "--out", run, "--epochs", 1, "--width", 8)
    assert r.returncode == 2 and "--resume" in r.stderr


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    r = facemtl("evaluate", bad, "--data", tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and str(bad) in r.stderr
    r = facemtl("train", "--data", tmp_path / "missing", "--out", tmp_path / "run")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_load_model_refuses_non_models(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "missing.keras")
    p = tmp_path / "x.onnx"
    p.write_bytes(b"\0")
    with pytest.raises(ModelFileError, match="expected a .keras"):
        load_model(p)


def _epochs_done(history: Path) -> list[int]:
    if not history.exists():
        return []
    with open(history, newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_after_sigkill_loses_at_most_one_epoch(tiny_mtfl, tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "facemtl", "train", "--data", str(tiny_mtfl), "--out", str(run),
            "--epochs", "12", "--width", "8", "--batch-size", "16", "--calibrate", ""]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while len(_epochs_done(run / "history.csv")) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _epochs_done(run / "history.csv")
    assert len(done) >= 3, "training did not get far enough before the deadline"
    assert not (run / "model.keras").exists()
    r = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    epochs = _epochs_done(run / "history.csv")
    assert epochs[-1] == 11
    # the resumed run starts at most one epoch before the last one logged before the kill
    resumed_from = epochs[len(done)]
    assert resumed_from >= done[-1], (done, epochs)
    assert (run / "model.keras").exists()


@pytest.mark.slow
def test_mirrored_strategy_on_one_device(tiny_mtfl, tmp_path):
    from facemtl.train.fit import TrainConfig, train

    res = train(TrainConfig(data=tiny_mtfl, out=tmp_path / "run", epochs=1, batch_size=32, width=8, verbose=0,
                            strategy="mirrored"))
    assert res.model_path.exists()
    assert np.isfinite(res.val_metrics["val/loss"])


def test_multiworker_needs_a_cluster(monkeypatch):
    from facemtl.train.fit import RunError, make_strategy

    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(RunError, match="TF_CONFIG"):
        make_strategy("multiworker")
