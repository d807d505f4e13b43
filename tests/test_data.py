"""Data sources (issue 21): the manifest and its checks, folder-per-class, `facemtl data`,
partial labels masked per head and face, and faces without landmarks framed as at run time."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facemtl.runtime.errors import DataError
from facemtl.runtime.spec import BoxCalibration, default_spec
from facemtl.train.mtfl import load_split, split_train_val
from facemtl.train.sources import (MISSING, load_faces, mtfl_to_manifest, raise_problems,
                                   read_class_folders, read_manifest, read_source, source_kind, validation_split)

FACEMTL = [sys.executable, "-m", "facemtl.runtime.cli"]


def spec_with_none_calibration():
    """The default spec, with a calibration for the `none` detector (the whole image is the
    box), so faces without landmarks can be framed without a face detector finding them."""
    spec = default_spec()
    return spec.replace(crop=dataclasses.replace(spec.crop, calibrations={"none": BoxCalibration(0.0, 0.02, 0.8, 1)}))


def write_lines(path: Path, records) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def test_convert_writes_the_mtfl_split_exactly(tiny_mtfl, tmp_path):
    ann = load_split(tiny_mtfl, "training")
    out = tmp_path / "sub" / "train.jsonl"
    assert mtfl_to_manifest(ann, out) == len(ann)
    faces, problems = read_manifest(out)
    assert problems == []
    assert faces.paths[0].startswith("../../")  # relative to the manifest, wherever it is written
    assert (faces.root / faces.paths[0]).resolve() == (tiny_mtfl / ann.paths[0]).resolve()
    np.testing.assert_array_equal(faces.points, ann.points)  # float32 values survive JSON exactly
    for name, values in ann.labels.items():
        np.testing.assert_array_equal(faces.labels[name], values)
    # the id keeps the MTFL path: the same faces are held out for validation
    _, va_ann = split_train_val(ann, 0.1)
    _, va = validation_split(faces, 0.1)
    assert va.ids == va_ann.paths and len(va) > 0


def test_cli_data_convert_then_check(tiny_mtfl, tmp_path):
    out = tmp_path / "m.jsonl"
    r = subprocess.run([*FACEMTL, "data", "convert", str(tiny_mtfl), "--split", "testing", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == len(load_split(tiny_mtfl, "testing"))
    r = subprocess.run([*FACEMTL, "data", "check", str(out)], capture_output=True, text=True)
    assert r.returncode == 0 and "0 bad" in r.stdout, r.stdout + r.stderr


def test_manifest_problems_name_file_and_line_and_are_listed_together(tiny_mtfl, tmp_path):
    good = {"image": "a.jpg", "labels": {"smile": "smiling"}}
    m = write_lines(tmp_path / "m.jsonl", [
        good,                                                      # 1
        "{not json",                                               # 2
        {"image": "b.jpg", "labels": {"smile": "grinning"}},       # 3: not one of the head's classes
        {"image": "c.jpg", "labels": {"smiel": "smiling"}},        # 4: no such head
        {"image": "d.jpg", "landmarks": [[1, 2], [3, 4]]},         # 5: two points, not five
        "",                                                        # 6: blank lines are fine
        {"image": "e.jpg", "box": [0, 0, -5, 10]},                 # 7
        {"img": "f.jpg"},                                          # 8: unknown key, no image
    ])
    faces, problems = read_manifest(m)
    assert len(faces) == 1 and faces.labels["smile"].tolist() == [0]
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == [2, 3, 4, 5, 7, 8]
    assert all(p.startswith(f"{m}:") for p in problems)
    assert "'grinning' is not one of the head's classes (smiling, not_smiling)" in problems[1]
    assert "unknown head 'smiel'" in problems[2]
    with pytest.raises(DataError) as e:
        raise_problems(problems, str(m), skip_bad=False)
    assert "6 bad face(s)" in str(e.value) and f"{m}:8:" in str(e.value) and "--skip-bad" in str(e.value)
    raise_problems(problems, str(m), skip_bad=True)  # counted, not raised


def test_image_problems_are_listed_together_or_skipped(tiny_mtfl, tmp_path):
    img = cv2.imread(str(tiny_mtfl / "lfw_5590" / "face_0000.jpg"))  # 64x64
    cv2.imwrite(str(tmp_path / "ok.jpg"), img)
    inside = [[20, 20], [40, 20], [30, 30], [22, 40], [38, 40]]
    m = write_lines(tmp_path / "m.jsonl", [
        {"image": "ok.jpg", "landmarks": inside, "labels": {"gender": "female"}},
        {"image": "missing.jpg", "landmarks": inside},
        {"image": "ok.jpg", "landmarks": [[20, 20], [70, 20], [30, 30], [22, 40], [38, 40]]},  # x=70 > 63
        {"image": "ok.jpg", "box": [100, 100, 10, 10], "labels": {"smile": "smiling"}},
    ])
    faces, problems = read_manifest(m)
    loaded = load_faces(faces, spec_with_none_calibration(), detector="none")
    assert len(loaded) == 1 and loaded.faces.labels["gender"].tolist() == [1]
    got = sorted(loaded.problems)
    assert got[0].startswith(f"{m}:2:") and "cannot read" in got[0]
    assert got[1].startswith(f"{m}:3:") and "landmarks outside the 64x64 image" in got[1]
    assert got[2].startswith(f"{m}:4:") and "outside the 64x64 image" in got[2]


def test_faces_without_landmarks_need_a_calibrated_spec(tiny_mtfl, tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), cv2.imread(str(tiny_mtfl / "lfw_5590" / "face_0000.jpg")))
    m = write_lines(tmp_path / "m.jsonl", [{"image": "a.jpg", "labels": {"smile": "smiling"}}])
    faces, _ = read_manifest(m)
    with pytest.raises(DataError, match="framed by the yunet detector through the spec's calibration"):
        load_faces(faces, default_spec(), detector="yunet")


def test_folder_per_class(tiny_mtfl, tmp_path):
    src = tiny_mtfl / "lfw_5590" / "face_0000.jpg"
    for label, n in (("smiling", 3), ("not_smiling", 2)):
        (tmp_path / "smile" / label).mkdir(parents=True)
        for i in range(n):
            (tmp_path / "smile" / label / f"{i}.jpg").write_bytes(src.read_bytes())
    (tmp_path / "smile" / "smiling" / "notes.txt").write_text("not an image")
    assert source_kind(tmp_path / "smile") == "folders"
    faces, _ = read_source(tmp_path / "smile", default_spec())
    assert sorted(faces.labels) == ["smile"] and sorted(faces.labels["smile"].tolist()) == [0, 0, 0, 1, 1]
    assert not faces.has_points.any() and faces.label_counts() == {"landmarks": 0, "smile": 5}
    (tmp_path / "smile" / "grinning").mkdir()
    with pytest.raises(DataError, match="grinning are not labels of head 'smile'"):
        read_class_folders(tmp_path / "smile", default_spec())
    (tmp_path / "hat" / "hat").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown head 'hat'.*--add-head hat:classification"):
        read_class_folders(tmp_path / "hat")


def partial_faces(tiny_mtfl, tmp_path):
    """The tiny MTFL training split as a manifest, landmarks and gender removed from every
    other face, pose from every third."""
    ann = load_split(tiny_mtfl, "training")
    full = tmp_path / "full.jsonl"
    mtfl_to_manifest(ann, full)
    records = [json.loads(line) for line in full.read_text().splitlines()]
    for i, r in enumerate(records):
        if i % 2:
            del r["landmarks"]
            del r["labels"]["gender"]
        if i % 3 == 0:
            del r["labels"]["pose"]
    faces, problems = read_manifest(write_lines(tmp_path / "partial.jsonl", records))
    assert problems == []
    return faces


def test_partial_labels_are_masked_per_head_and_face(tiny_mtfl, tmp_path):
    from facemtl.train.pipeline import Augment, FaceSource

    spec = spec_with_none_calibration()
    faces = partial_faces(tiny_mtfl, tmp_path)
    loaded = load_faces(faces, spec, detector="none")
    assert len(loaded) == len(faces)
    src = FaceSource(loaded, spec, Augment(flip=1.0), seed=1)
    assert src.masked
    idx = np.arange(12)
    x, y, a, w = src.weighted_batch(idx, idx)
    heads = list(spec.head_names)
    np.testing.assert_array_equal(w[:, heads.index("landmarks")], idx % 2 == 0)
    np.testing.assert_array_equal(w[:, heads.index("gender")], idx % 2 == 0)
    np.testing.assert_array_equal(w[:, heads.index("pose")], idx % 3 != 0)
    np.testing.assert_array_equal(w[:, heads.index("smile")], np.ones(12))
    assert np.isfinite(y).all() and (a >= 0).all()  # masked targets are finite placeholders
    # flipped (flip=1): a labelled pose is mirrored, a missing one stays missing
    pose = faces.labels["pose"][:12]
    have = pose != MISSING
    from facemtl.runtime.spec import POSE_FLIP

    np.testing.assert_array_equal(a[have, src.columns["pose"]], np.array(POSE_FLIP)[pose[have]])


def test_faces_without_landmarks_are_framed_by_the_runtime_code(tiny_mtfl, tmp_path):
    """The square is the runtime's `crop_square` of the detector's detection; unaugmented,
    the training crop is the runtime's `prepare`; augmented, it is that square jittered by
    the same `jitter` a landmark square gets."""
    from facemtl.runtime import preprocess as pp
    from facemtl.runtime.detectors import create_detector, crop_square
    from facemtl.train.pipeline import Augment, FaceSource, jitter, make_example

    spec = spec_with_none_calibration()
    loaded = load_faces(partial_faces(tiny_mtfl, tmp_path), spec, detector="none")
    i = 1  # no landmarks
    grey = loaded.images[i]
    expected = crop_square(create_detector("none").detect(grey)[0], spec.crop)
    np.testing.assert_allclose(loaded.squares[i], [expected.cx, expected.cy, expected.side, expected.angle])
    x, _, _ = FaceSource(loaded, spec, None).batch(np.array([i]), np.array([0]))
    runtime, _ = pp.prepare(grey, [expected], spec.input)
    np.testing.assert_array_equal(x[0], runtime[0])
    geometric = dataclasses.replace(Augment.none(), rotate=18.0, scale=0.12, shift=0.08)
    got, target, _ = make_example(grey, loaded.faces.points[i], np.zeros(4, np.int32), spec, geometric,
                                  np.random.default_rng(7), square=expected)
    patch, _ = pp.crop(grey, jitter(expected, geometric, np.random.default_rng(7)), spec.input.size)
    np.testing.assert_array_equal(got, pp.normalize(patch, spec.input))
    assert np.isnan(target).all()


def test_masked_faces_give_zero_landmark_gradient(tiny_mtfl, tmp_path):
    """A face without landmarks contributes nothing to the landmark head: the gradient of the
    compiled loss with respect to the landmark layer, over a batch, equals the gradient over
    the labelled faces alone, and is exactly zero when no face has landmarks."""
    import tensorflow as tf

    from facemtl.train.heads import MultiHead
    from facemtl.train.model import build_model
    from facemtl.train.pipeline import FaceSource

    spec = spec_with_none_calibration()
    loaded = load_faces(partial_faces(tiny_mtfl, tmp_path), spec, detector="none")
    src = FaceSource(loaded, spec, None)
    model = build_model(spec, width=8)
    model.compile(optimizer="adam", **MultiHead.from_spec(spec).compile_args(masked=True))
    kernel = model.get_layer("landmarks").kernel
    heads = list(spec.head_names)

    def grad(index, landmark_weight=None):
        x, y, a, w = src.weighted_batch(index, index)
        if landmark_weight is not None:
            w[:, heads.index("landmarks")] = landmark_weight
        cols = src.columns
        targets = {h.name: (y if h.kind == "regression" else a[:, cols[h.name]]) for h in spec.heads}
        weights = {h: w[:, k] for k, h in enumerate(heads)}
        with tf.GradientTape() as tape:
            pred = model(x, training=False)
            loss = model.compute_loss(x, targets, pred, weights, training=False)
        return tape.gradient(loss, kernel).numpy()

    mixed = np.arange(16)                # even faces have landmarks, odd ones not
    labelled = mixed[mixed % 2 == 0]
    g_mixed = grad(mixed)
    assert np.abs(g_mixed).max() > 0
    np.testing.assert_allclose(g_mixed, grad(labelled), rtol=1e-4, atol=1e-7)
    assert np.array_equal(grad(mixed[mixed % 2 == 1]), np.zeros_like(g_mixed))  # none has landmarks
    assert np.array_equal(grad(labelled, landmark_weight=0.0), np.zeros_like(g_mixed))


def test_cli_train_lists_every_bad_line_before_training(tiny_mtfl, tmp_path):
    m = write_lines(tmp_path / "bad.jsonl", [
        {"image": "x.jpg", "labels": {"pose": "sideways"}},
        {"image": "y.jpg", "landmarks": "five points"},
    ])
    r = subprocess.run([*FACEMTL, "train", "--data", str(tiny_mtfl), "--data", str(m), "--out", str(tmp_path / "run"),
                        "--width", "8", "--epochs", "1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert f"{m}:1: pose label 'sideways'" in r.stderr and f"{m}:2: \"landmarks\"" in r.stderr
    assert "2 bad face(s)" in r.stderr and "Traceback" not in r.stderr


def test_runs_from_scratch_borrow_the_packaged_calibrations_for_their_crop_policy():
    from facemtl.runtime.analyzer import PACKAGED_MODELS
    from facemtl.runtime.artifact import read_spec
    from facemtl.train.fit import with_packaged_calibration

    packaged = read_spec(PACKAGED_MODELS / "facemtl_int8.tflite").crop.calibrations
    got = with_packaged_calibration(default_spec(), "yunet")
    assert got.crop.calibrations["yunet"] == packaged["yunet"]
    own = spec_with_none_calibration()  # a spec's own calibration is kept, others are added
    assert with_packaged_calibration(own, "none").crop.calibrations == own.crop.calibrations
    other = default_spec().replace(crop=dataclasses.replace(default_spec().crop, scale=4.5))
    assert with_packaged_calibration(other, "yunet").crop.calibrations == {}  # another framing: not theirs


def test_source_weights_set_each_sources_share_of_the_draws():
    from types import SimpleNamespace

    from facemtl.train.config import TrainConfig
    from facemtl.train.fit import RunError, draw_weights_for

    sources = [SimpleNamespace(train=range(100)), SimpleNamespace(train=range(300))]
    pose = np.full(400, MISSING, np.int32)
    cfg = TrainConfig(data=Path("."), out=Path("."))
    assert draw_weights_for(sources, cfg, pose) is None  # no weights: every face once an epoch
    w = draw_weights_for(sources, dataclasses.replace(cfg, source_weights=(3.0, 1.0)), pose)
    assert w.shape == (400,) and np.isclose(w.mean(), 1.0)
    assert np.isclose(w[:100].sum() / w.sum(), 0.75)  # 3:1, whatever the sources' sizes
    with pytest.raises(RunError, match="2 weights for 3 --data sources"):
        draw_weights_for(sources + sources[:1], dataclasses.replace(cfg, source_weights=(1.0, 1.0)), pose)
