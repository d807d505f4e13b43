"""Knowledge distillation (`facemtl train --teacher`): the loss's terms, the teacher's targets
riding each augmented crop with the labels, a student that learns the teacher's answers over
the labels', and the cached targets of a real (tiny) teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from facemtl.runtime.spec import default_spec  # noqa: E402
from facemtl.train.heads import DistillLoss, LandmarkLoss, MultiHead, NME, LabelAccuracy  # noqa: E402

POINTS = np.array([[0.35, 0.4, 0.65, 0.4, 0.5, 0.55, 0.38, 0.7, 0.62, 0.7]], np.float32)


def test_distill_loss_mixes_labels_and_teacher_and_validation_sees_labels_alone():
    base = LandmarkLoss()
    pred = POINTS + 0.02
    teacher = POINTS + np.array([0.05, 0.0] * 5, np.float32)
    only_labels = float(DistillLoss(base, "regression", 10, weight=0.5)(POINTS, pred))
    assert only_labels == pytest.approx(float(base(POINTS, pred)))  # a validation target: labels alone
    target = np.concatenate([POINTS, teacher], 1)
    iod = 0.3
    to_teacher = np.mean(np.linalg.norm((pred - teacher).reshape(5, 2), axis=1)) / iod
    for w in (0.0, 0.3, 1.0):
        got = float(DistillLoss(base, "regression", 10, weight=w)(target, pred))
        assert got == pytest.approx((1 - w) * only_labels + w * to_teacher, rel=1e-4)
    # a student on the teacher's points pays nothing for the teacher's term, only for the labels'
    assert float(DistillLoss(base, "regression", 10, weight=1.0)(target, teacher)) == pytest.approx(0.0, abs=1e-4)


def test_distill_loss_classes_kl_with_temperature_and_masked_faces():
    from facemtl.train.heads import AdjustedCE

    base = AdjustedCE(2, 0.0)
    teacher = np.array([[2.0, -1.0], [0.5, 0.0], [-3.0, 3.0]], np.float32)
    labels = np.array([1.0, 0.0, 1.0], np.float32)
    target = np.concatenate([labels[:, None], teacher], 1)
    loss = DistillLoss(base, "classification", 2, weight=1.0, temperature=3.0)
    assert float(loss(target, teacher)) == pytest.approx(0.0, abs=1e-5)  # the teacher's own answer
    student = np.array([[0.0, 0.0], [0.5, 0.0], [-3.0, 3.0]], np.float32)

    def kl(t, s, temp):
        p = np.exp(t / temp) / np.exp(t / temp).sum()
        q = np.exp(s / temp) / np.exp(s / temp).sum()
        return temp * temp * float(np.sum(p * np.log(p / q)))

    assert float(loss(target, student)) == pytest.approx(kl(teacher[0], student[0], 3.0) / 3, rel=1e-4)
    # a face without its label (weight 0, as masked targets carry) adds nothing to the mean
    loss.reduction = "mean_with_sample_weight"
    w = np.array([1.0, 1.0, 0.0], np.float32)
    assert float(loss(target, student, sample_weight=w)) == pytest.approx(kl(teacher[0], student[0], 3.0) / 2, rel=1e-4)
    # class ids alone (validation): the label loss alone
    assert float(loss(labels, student)) == pytest.approx(float(base(labels, student)), rel=1e-6)
    with pytest.raises(ValueError, match="0..1"):
        DistillLoss(base, "classification", 2, weight=1.5)
    # metrics read the labels part of a distillation target
    acc = LabelAccuracy()
    acc.update_state(target, student)
    assert float(acc.result()) == pytest.approx(float(np.mean(student.argmax(1) == labels)))
    nme = NME()
    nme.update_state(np.concatenate([POINTS, POINTS + 0.1], 1), POINTS)
    assert float(nme.result()) == 0.0


@pytest.fixture(scope="module")
def loaded(tiny_mtfl):
    from facemtl.train.mtfl import load_split
    from facemtl.train.sources import from_annotations, load_faces

    faces = from_annotations(load_split(tiny_mtfl, "training")).subset(np.arange(24))
    return load_faces(faces, default_spec(), progress=False)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_teacher_targets_ride_each_augmented_crop_with_the_labels(loaded, flip):
    """A teacher that answers the labels exactly: after any jitter and flip, its landmark
    targets are the labels' and its pose logits point at the (mirrored) pose label."""
    from facemtl.train.distill import TeacherTargets, face_keys
    from facemtl.train.pipeline import Augment, FaceSource

    spec = default_spec()
    n = len(loaded)
    logits = {h.name: 5.0 * np.eye(h.units, dtype=np.float32)[loaded.faces.labels[h.name]]
              for h in spec.heads if h.kind != "regression"}
    teacher = TeacherTargets(face_keys(loaded.faces), loaded.faces.points.copy(), logits, spec)
    src = FaceSource(loaded, spec, Augment(flip=flip), seed=3, teacher=teacher)
    idx = np.arange(n)
    x, y, a, _, t = src.distill_batch(idx, idx + 7)
    np.testing.assert_allclose(y[:, 10:], y[:, :10], atol=1e-5)
    k = 0
    for h in [h for h in spec.heads if h.kind != "regression"]:
        np.testing.assert_array_equal(t[:, k:k + h.units].argmax(1), a[:, src.columns[h.name]])
        k += h.units
    if flip:  # some pose labels mirrored, so the check above compared permuted logits
        assert (a[:, src.columns["pose"]] != loaded.faces.labels["pose"]).any()
    # the same crops and labels as without a teacher: the teacher changes no random draw
    x0, y0, a0, _ = FaceSource(loaded, spec, Augment(flip=flip), seed=3).weighted_batch(idx, idx + 7)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y[:, :10], y0)
    np.testing.assert_array_equal(a, a0)


@pytest.mark.slow
def test_student_learns_the_teacher_over_the_labels(loaded):
    """On one tiny batch, with the whole loss the teacher's term, a student ends nearer the
    teacher's answers than the labels (which the teacher contradicts on purpose); with the
    weight 0 it ends nearer the labels."""
    import tensorflow as tf

    from facemtl.train.model import build_model
    from facemtl.train.pipeline import FaceSource

    spec = default_spec().select(["landmarks", "smile"])
    src = FaceSource(loaded, spec, None)
    idx = np.arange(16)
    x, y, a, _ = src.weighted_batch(idx, idx)
    labels = a[:, src.columns["smile"]]
    teacher_points = y + np.tile([0.06, -0.04], 5).astype(np.float32)  # the teacher's points, moved
    teacher_logits = np.where(labels[:, None] == np.arange(2), -3.0, 3.0).astype(np.float32)  # the other class
    targets = {"landmarks": np.concatenate([y, teacher_points], 1),
               "smile": np.concatenate([labels[:, None].astype(np.float32), teacher_logits], 1)}
    ends = {}
    for w in (1.0, 0.0):
        keras.utils.set_random_seed(0)
        model = build_model(spec, width=8, dropout=0.0, pool="gdc", features=32)
        model.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False,
                      **MultiHead.from_spec(spec).compile_args(distill=(w, 1.0)))
        batches = tf.data.Dataset.from_tensors((x, targets)).repeat()
        model.fit(batches, steps_per_epoch=100, epochs=1, verbose=0, shuffle=False)
        out = model(x, training=True)
        pts, smile = np.asarray(out["landmarks"]), np.asarray(out["smile"])
        ends[w] = (np.abs(pts - teacher_points).mean(), np.abs(pts - y).mean(), float(np.mean(smile.argmax(1) == labels)))
    to_teacher, to_labels, label_acc = ends[1.0]
    assert to_teacher < 0.5 * to_labels and label_acc <= 0.1
    to_teacher, to_labels, label_acc = ends[0.0]
    assert to_labels < 0.5 * to_teacher and label_acc >= 0.9


@pytest.mark.slow
def test_train_with_a_teacher_caches_its_targets_once(tiny_mtfl, tmp_path):
    from facemtl.train.config import TrainConfig
    from facemtl.train.distill import TeacherTargets
    from facemtl.train.fit import train
    from facemtl.train.model import build_model, save_model

    # any model of the student's spec is a teacher; an untrained one answers arbitrary, finite things
    teacher = tmp_path / "teacher" / "model.keras"
    save_model(build_model(default_spec(), width=4), teacher)
    from facemtl.runtime.cli import main

    args = ["train", "--data", str(tiny_mtfl), "--epochs", "1", "--width", "8",
            "--batch-size", "32", "--limit", "48", "--pool", "gdc", "--calibrate", "", "--teacher", str(teacher),
            "--distill-weight", "0.7", "--temperature", "3", "--out", str(tmp_path / "runs" / "a")]
    assert main(args) == 0
    info = json.loads((tmp_path / "runs" / "a" / "train.json").read_text())["teacher"]
    cache = Path(info["cache"])
    assert cache.parent == tmp_path / "runs" / "teachers" and cache.exists()
    assert info["distill_weight"] == 0.7 and info["temperature"] == 3 and info["flip_average"] is True
    stored = TeacherTargets.load(cache, default_spec())
    assert stored.points.shape[1:] == (5, 2) and set(stored.logits) == {"gender", "smile", "glasses", "pose"}
    assert np.isfinite(stored.points).all() and len(stored) == info["faces"]
    stamp = cache.stat().st_mtime_ns
    # a second student reads the cache, it does not recompute it
    b = train(TrainConfig(data=tiny_mtfl, out=tmp_path / "runs" / "b", epochs=1, batch_size=32, width=8, verbose=0,
                          limit=48, teachers=(str(teacher),)))
    assert b.model_path.exists() and cache.stat().st_mtime_ns == stamp
    # two teachers: an ensemble, each cached apart (the first from the cache above), outputs averaged
    second = tmp_path / "teacher2" / "model.keras"
    save_model(build_model(default_spec(), width=6), second)
    args_d = [a if a != str(tmp_path / "runs" / "a") else str(tmp_path / "runs" / "d") for a in args]
    assert main(args_d + ["--teacher", str(second)]) == 0
    ens = json.loads((tmp_path / "runs" / "d" / "train.json").read_text())["teacher"]
    assert [e["model"] for e in ens["ensemble"]] == [str(teacher), str(second)]
    assert ens["ensemble"][0]["cache"] == str(cache) and ens["ensemble"][0]["computed_seconds"] == 0.0
    assert Path(ens["ensemble"][1]["cache"]).exists() and ens["faces"] == info["faces"]
    # a teacher that frames faces differently is refused, and says how to fix it
    with pytest.raises(ValueError, match="--crop-scale"):
        train(TrainConfig(data=tiny_mtfl, out=tmp_path / "runs" / "c", epochs=1, width=8, verbose=0, limit=48,
                          teachers=(str(teacher),), crop_scale=4.0))


def test_warm_start_copies_the_layers_a_smaller_pool_shares():
    from facemtl.train.finetune import warm_start
    from facemtl.train.model import build_model

    teacher = build_model(default_spec(), width=8)  # flatten + Dense
    student = build_model(default_spec(), width=8, pool="gdc")
    before = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in student.layers}
    copied, pruned, kept = warm_start(student, teacher)
    assert pruned == []
    assert {"stem_conv", "block1_dw", "block5_pw_bn", "landmarks", "pose"} <= set(copied)
    assert {"gdc_pw", "gdc_dw"} <= set(kept) and "features_dense" not in copied + kept
    for name in copied:
        for a, b in zip(student.get_layer(name).get_weights(), teacher.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for name in kept:
        for a, b in zip(student.get_layer(name).get_weights(), before[name]):
            np.testing.assert_array_equal(a, b)


def test_warm_prune_starts_a_thinner_stem_and_first_block_from_the_strongest_channels():
    """`--warm-prune`: a student with half the stem filters and a one-width first block gets
    the teacher's channels with the largest batch-norm |gamma|, and the maps it computes on
    those channels are the teacher's own (the stem's and the first depthwise layer's);
    layers of unchanged shape after the pruned ones are plain copies."""
    import keras

    from facemtl.train.finetune import warm_start
    from facemtl.train.model import build_model

    keras.utils.set_random_seed(3)
    teacher = build_model(default_spec(), width=8)
    rng = np.random.default_rng(0)
    for layer in teacher.layers:  # distinct scales, so the choice by |gamma| is a real one
        if isinstance(layer, keras.layers.BatchNormalization):
            g, b, m, v = layer.get_weights()
            layer.set_weights([rng.normal(0, 1, g.shape).astype(np.float32), rng.normal(0, 0.3, b.shape).astype(np.float32),
                               rng.normal(0, 0.3, m.shape).astype(np.float32), rng.uniform(0.5, 2, v.shape).astype(np.float32)])
    student = build_model(default_spec(), width=8, stem=4, first_block=1, pool="gdc")
    copied, pruned, kept = warm_start(student, teacher, prune=True)
    assert {"stem_conv", "stem_bn", "block1_dw", "block1_dw_bn", "block1_pw", "block1_pw_bn", "block2_dw",
            "block2_dw_bn", "block2_pw"} == set(pruned)
    assert {"block2_pw_bn", "block3_dw", "block5_pw_bn"} <= set(copied) and {"gdc_pw", "gdc_dw"} <= set(kept)
    stem_sel = np.sort(np.argsort(-np.abs(teacher.get_layer("stem_bn").get_weights()[0]))[:4])
    x = rng.normal(0, 1, (3, 40, 40, 1)).astype(np.float32)
    for name in ("stem_relu", "block1_dw_relu"):
        t = np.asarray(keras.Model(teacher.input, teacher.get_layer(name).output)(x, training=False))
        s = np.asarray(keras.Model(student.input, student.get_layer(name).output)(x, training=False))
        np.testing.assert_allclose(s, t[..., stem_sel], atol=1e-5)
    pw_sel = np.sort(np.argsort(-np.abs(teacher.get_layer("block1_pw_bn").get_weights()[0]))[:8])
    np.testing.assert_array_equal(student.get_layer("block1_pw").get_weights()[0],
                                  teacher.get_layer("block1_pw").get_weights()[0][:, :, stem_sel][..., pw_sel])
    np.testing.assert_array_equal(student.get_layer("block2_dw").get_weights()[0],
                                  teacher.get_layer("block2_dw").get_weights()[0][:, :, pw_sel])


def test_an_ensemble_teacher_is_the_mean_of_its_members():
    from facemtl.train.distill import TeacherTargets, average

    spec = default_spec()
    rng = np.random.default_rng(0)
    keys = ["a.jpg", "b.jpg", "c.jpg"]
    members = [TeacherTargets(keys, rng.normal(size=(3, 5, 2)).astype(np.float32),
                              {h.name: rng.normal(size=(3, h.units)).astype(np.float32) for h in spec.heads
                               if h.name != "landmarks"}, spec) for _ in range(3)]
    ens = average(members)
    np.testing.assert_allclose(ens.points, (members[0].points + members[1].points + members[2].points) / 3, atol=1e-6)
    np.testing.assert_allclose(ens.logits["pose"], np.mean([m.logits["pose"] for m in members], 0), atol=1e-6)
    assert ens.keys == keys and ens.class_row(0, False).shape == members[0].class_row(0, False).shape
    other = TeacherTargets(["a.jpg", "c.jpg", "b.jpg"], members[0].points, members[0].logits, spec)
    with pytest.raises(ValueError, match="other faces"):
        average([members[0], other])


def test_warm_start_option_conflicts_are_refused_before_the_run_folder_is_made(tmp_path):
    from facemtl.train.config import TrainConfig
    from facemtl.train.fit import RunError, train

    for opts, message in (({"warm_prune": True}, "--warm-prune"),
                          ({"warm_start": "a/model.keras", "init": "b/model.keras"}, "--init keeps")):
        out = tmp_path / "run"
        with pytest.raises(RunError, match=message):
            train(TrainConfig(data=tmp_path / "nowhere", out=out, **opts))
        assert not out.exists()
