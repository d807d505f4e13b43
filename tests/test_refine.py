"""The refinement stage (issue 23): the patch cutter training and the runtime share, the
refinement file's contract, the runtime's geometry in both running modes, and a few training
steps on a small MTFL-like folder."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from facemtl.runtime.preprocess import from_patches, patch_targets, point_patches, point_squares
from facemtl.runtime.spec import InputSpec, ModelSpec, RefineSpec, SpecError, contract_id
from runtime_models import calibrated_spec, write_constant_onnx

FACE = np.array([[120.0, 90.0], [172.0, 97.0], [146.0, 122.0], [124.0, 142.0], [166.0, 148.0]])


def _refine_spec(first: ModelSpec, patch: float = 0.3, size: int = 16) -> ModelSpec:
    from facemtl.train.refine import refine_spec

    return refine_spec(first, patch=patch, size=size, first_name="test")


def write_constant_refine(path, spec: ModelSpec, offsets: np.ndarray):
    """A genuine ONNX refinement file: (N, S, S, K) patches -> constant per-point offsets."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facemtl.runtime.formats import FORMAT_KEY, SPEC_KEY

    s, k = spec.input.size, spec.input.channels
    nodes = [helper.make_node("Flatten", ["patches"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["landmarks"])]
    inits = [numpy_helper.from_array(np.zeros((s * s * k, 2 * k), np.float32), "w"),
             numpy_helper.from_array(np.asarray(offsets, np.float32).reshape(-1), "b")]
    graph = helper.make_graph(nodes, "constant_refine",
                              [helper.make_tensor_value_info("patches", TensorProto.FLOAT, ["N", s, s, k])],
                              [helper.make_tensor_value_info("landmarks", TensorProto.FLOAT, ["N", 2 * k])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, v in ((SPEC_KEY, spec.to_json()), (FORMAT_KEY, "onnx-fp32")):
        p = model.metadata_props.add()
        p.key, p.value = key, v
    onnx.save(model, str(path))
    return path


# --- the spec -----------------------------------------------------------------------------------

def test_refine_spec_round_trips_and_names_its_first_stage():
    first = calibrated_spec()
    spec = _refine_spec(first)
    back = ModelSpec.from_json(spec.to_json())
    assert back == spec
    assert back.refine.first == contract_id(first)
    assert back.input.channels == len(first.landmark_names)
    # the detector calibrations are no part of the contract; the crop scale is
    assert contract_id(first.replace(crop=dataclasses.replace(first.crop, calibrations={}))) == contract_id(first)
    assert contract_id(first.replace(crop=dataclasses.replace(first.crop, scale=3.6))) != contract_id(first)


def test_spec_refuses_channels_that_do_not_match_the_stage():
    first = calibrated_spec()
    with pytest.raises(SpecError, match="only grey input"):
        first.replace(input=InputSpec(channels=5))
    with pytest.raises(SpecError, match="one patch per landmark"):
        _refine_spec(first).replace(input=InputSpec(size=16, channels=3))
    with pytest.raises(SpecError, match="refine.patch"):
        RefineSpec("abc", patch=0.0)
    # an old spec (no "refine" key) still reads, as a first stage
    d = first.to_dict()
    del d["refine"]
    assert ModelSpec.from_dict(d).refine is None


# --- the patch cutter: one function for training and the runtime --------------------------------

def test_patches_are_centred_on_the_points_and_turned_by_the_roll():
    spec = _refine_spec(calibrated_spec())
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (240, 320), dtype=np.uint8)
    squares = point_squares(FACE, spec.crop, 0.3)
    assert [(s.cx, s.cy) for s in squares] == [tuple(p) for p in FACE]
    roll = math.degrees(math.atan2(FACE[1, 1] - FACE[0, 1], FACE[1, 0] - FACE[0, 0]))
    assert all(s.angle == pytest.approx(roll) for s in squares)
    x, mats = point_patches(grey, FACE, spec.crop, 0.3, spec.input)
    assert x.shape == (16, 16, 5) and x.dtype == np.float32
    assert np.allclose(x.mean(axis=(0, 1)), 0, atol=1e-4) and np.allclose(x.std(axis=(0, 1)), 1, atol=1e-3)
    # a point's own patch: offset 0 at its centre; one patch side along the patch's x axis = 1 unit
    assert np.allclose(patch_targets(FACE, mats), 0, atol=1e-9)
    side = squares[0].side
    a = math.radians(roll)
    moved = FACE + 0.25 * side * np.array([math.cos(a), math.sin(a)])
    assert np.allclose(patch_targets(moved, mats), [[0.25, 0.0]] * 5, atol=1e-9)
    assert np.allclose(from_patches(patch_targets(moved, mats), mats), moved, atol=1e-9)


@pytest.mark.parametrize("scale", [0.4, 1.0, 3.0])
def test_one_face_cut_gives_the_per_patch_crops_bit_for_bit(scale):
    """`point_patches` cuts a face's five patches in one go (one grey conversion, the warps
    into one stack, one resize); each patch must be, bit for bit, what `crop_region` cuts for
    its square alone, from grey, BGR and BGRA frames, small faces (no resize) and large ones
    (oversampled then resized), and patches cut by the frame edge (replicated border)."""
    from facemtl.runtime.preprocess import crop_region, normalize

    spec = _refine_spec(calibrated_spec(), size=24)
    rng = np.random.default_rng(7)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (720, 960, 3), dtype=np.uint8), (5, 5), 1.5)
    frames = [bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)]
    faces = [FACE * scale + 40, FACE * scale + [3.0 - FACE[0, 0] * scale, 2.0],  # at the top left edge
             (FACE - FACE.mean(0)) @ np.array([[0.94, -0.34], [0.34, 0.94]]) * scale + [480.3, 360.7]]  # rolled
    sides = set()
    for frame in frames:
        for points in faces:
            squares = point_squares(points, spec.crop, spec.refine.patch)
            sides.add(round(squares[0].side))
            cuts = [crop_region(frame, sq, spec.input.size) for sq in squares]
            want = normalize(np.stack([c[0] for c in cuts]), spec.input).transpose(1, 2, 0)
            x, mats = point_patches(frame, points, spec.crop, spec.refine.patch, spec.input)
            assert np.array_equal(x, want)
            assert np.array_equal(mats, np.stack([c[1] for c in cuts]))
    # the scales cover both branches of `crop`: no resize (side <= 24) and a warp at more pixels
    assert max(sides) <= 24 if scale < 1 else min(sides) > 24


def test_frame_cut_gives_each_faces_patches_bit_for_bit():
    """`frame_patches` cuts every face of a frame in one pass (the runtime's Refiner); each
    face's patches and matrices must be, bit for bit, what `point_patches` (training's
    cutter) gives for that face alone: faces of different sizes (with and without the
    oversampled warp), rolled, at the frame edge, in one grey, BGR or BGRA frame."""
    from facemtl.runtime.preprocess import frame_patches

    spec = _refine_spec(calibrated_spec(), size=24)
    rng = np.random.default_rng(5)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (720, 960, 3), dtype=np.uint8), (5, 5), 1.5)
    rot = np.array([[0.94, -0.34], [0.34, 0.94]])
    faces = np.stack([FACE * 0.4 + 40, FACE * 3.0 + [3.0 - FACE[0, 0] * 3.0, 2.0],
                      (FACE - FACE.mean(0)) @ rot * 1.7 + [480.3, 360.7], FACE * 1.0 + [700.2, 500.9],
                      (FACE - FACE.mean(0)) @ rot.T * 0.7 + [950.0, 710.0]])
    for frame in (bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)):
        x, mats = frame_patches(frame, faces, spec.crop, spec.refine.patch, spec.input)
        assert x.shape == (len(faces), 24, 24, 5) and mats.shape == (len(faces), 5, 2, 3)
        for i, points in enumerate(faces):
            xi, mi = point_patches(frame, points, spec.crop, spec.refine.patch, spec.input)
            assert np.array_equal(x[i], xi) and np.array_equal(mats[i], mi)
    none, _ = frame_patches(bgr, np.zeros((0, 5, 2)), spec.crop, spec.refine.patch, spec.input)
    assert none.shape == (0, 24, 24, 5)


def test_training_and_runtime_cut_the_same_patches(tmp_path):
    """train/serve parity: the examples `facemtl.train.refine` trains on are, bit for bit, what
    the runtime's Refiner feeds the model for the same face, from a BGR frame (the runtime
    greys only the region) as from the grey image training reads."""
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Refiner
    from facemtl.train.refine import examples

    first = calibrated_spec()
    spec = _refine_spec(first)
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    near_edge = FACE + np.array([-110.0, -80.0])  # patches cut by the frame edge: replicated border
    truth = np.stack([FACE + 2.0, near_edge + 1.0])
    firsts = np.stack([FACE, near_edge])
    x_train, y_train, mats = examples([grey, grey], truth, firsts, spec)
    refiner = Refiner(load_backend(write_constant_refine(tmp_path / "r.onnx", spec, np.zeros(10))), first)
    x_run, mats_run = refiner.inputs(bgr, firsts)
    assert np.array_equal(x_train, x_run)
    assert np.array_equal(mats, mats_run)
    assert np.allclose(y_train.reshape(2, 5, 2), [patch_targets(t, m) for t, m in zip(truth, mats)])


# --- the runtime ----------------------------------------------------------------------------------

def test_refiner_moves_each_point_by_its_answer_and_refuses_another_first_model(tmp_path):
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Refiner

    first = calibrated_spec()
    spec = _refine_spec(first)
    offsets = np.array([[0.1, 0.0], [0.0, -0.1], [0.05, 0.05], [0.0, 0.0], [-0.2, 0.1]])
    path = write_constant_refine(tmp_path / "r.onnx", spec, offsets)
    refiner = Refiner(load_backend(path), first)
    grey = np.random.default_rng(2).integers(0, 256, (240, 320), dtype=np.uint8)
    out, crop_ms, infer_ms = refiner(grey, FACE[None])
    side = point_squares(FACE, spec.crop, spec.refine.patch)[0].side
    a = math.radians(point_squares(FACE, spec.crop, spec.refine.patch)[0].angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert np.allclose(out[0], FACE + side * offsets @ rot.T, atol=1e-4)
    assert crop_ms >= 0 and infer_ms >= 0
    assert refiner(grey, np.zeros((0, 5, 2)))[0].shape == (0, 5, 2)
    other = first.replace(crop=dataclasses.replace(first.crop, scale=3.6))
    with pytest.raises(SpecError, match="another first model"):
        Refiner(load_backend(path), other)
    with pytest.raises(SpecError, match="not a refinement stage"):
        Refiner(load_backend(write_constant_onnx(tmp_path / "first.onnx", first)))


def test_a_cascade_runs_level_two_from_level_ones_answers_and_refuses_levels_out_of_order(tmp_path):
    """Level 2 (a smaller patch) cuts its patches around level 1's answers, not the first
    stage's: with constant answers, the two moves add up as two Refiners run by hand; a level
    2 file alone, or levels out of order, is refused (by `Cascade` and by the analyzer)."""
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Cascade, Refiner

    first = calibrated_spec()
    one, two = _refine_spec(first), _refine_spec(first, patch=0.15)
    two = two.replace(refine=dataclasses.replace(two.refine, level=2))
    assert ModelSpec.from_json(two.to_json()).refine.level == 2 and one.refine.level == 1
    p1 = write_constant_refine(tmp_path / "r1.onnx", one, np.tile([0.1, -0.05], 5))
    p2 = write_constant_refine(tmp_path / "r2.onnx", two, np.tile([-0.2, 0.1], 5))
    grey = np.random.default_rng(6).integers(0, 256, (240, 320), dtype=np.uint8)
    r1, r2 = Refiner(load_backend(p1), first), Refiner(load_backend(p2), first)
    by_hand = r2(grey, r1(grey, FACE[None])[0])[0]
    out, crop_ms, infer_ms = Cascade([r1, r2])(grey, FACE[None])
    assert np.allclose(out, by_hand) and crop_ms > 0 and infer_ms > 0
    # the second move is half the first's size (patch 0.15 against 0.3) and opposite in sign
    assert np.allclose(out, FACE[None], atol=1e-3)
    with pytest.raises(SpecError, match="levels"):
        Cascade([r2])
    with pytest.raises(SpecError, match="levels"):
        Cascade([r2, r1])
    with pytest.raises(SpecError, match="levels"):
        FaceAnalyzer.create_from_options(FaceAnalyzerOptions(
            model_path=write_constant_onnx(tmp_path / "first.onnx", first), detector="none", refine_model_path=p2))
    with pytest.raises(SpecError, match="refine.level"):
        RefineSpec("abc", level=0)


@pytest.mark.parametrize("mode", ["image", "video"])
def test_analyzer_refines_in_both_modes(tmp_path, mode):
    """The same face through refine on and off: every landmark moves by the refinement file's
    answer (here constant), in IMAGE and in VIDEO mode, and the model time grows."""
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions

    first = calibrated_spec()
    first_path = write_constant_onnx(tmp_path / "first.onnx", first)
    spec = _refine_spec(first)
    offsets = np.tile([0.1, -0.05], 5)
    refine_path = write_constant_refine(tmp_path / "refine.onnx", spec, offsets)
    frame = np.random.default_rng(3).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    answers = {}
    for refine in (False, True):
        opts = FaceAnalyzerOptions(model_path=first_path, detector="none", running_mode=mode, refine=refine,
                                   flip_average=False,
                                   refine_model_path=refine_path if refine else None)
        with FaceAnalyzer.create_from_options(opts) as analyzer:
            assert (analyzer.refine_model_path is not None) == refine
            result = analyzer.analyze(frame) if mode == "image" else analyzer.analyze_for_video(frame, 0)
            (face,) = result.faces
            answers[refine] = face.landmarks
    plain = answers[False]
    sq = point_squares(plain, spec.crop, spec.refine.patch)[0]
    a = math.radians(sq.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert np.allclose(answers[True], plain + sq.side * offsets.reshape(5, 2) @ rot.T, atol=1e-3)


def test_refine_options_fail_clearly(tmp_path):
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions

    first_path = write_constant_onnx(tmp_path / "first.onnx", calibrated_spec())
    with pytest.raises(ValueError, match="refine=False"):
        FaceAnalyzerOptions(refine=False, refine_model_path=first_path)
    with pytest.raises(SpecError, match="no refinement stage"):
        FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=first_path, detector="none", refine=True))
    # refine=None with a model that has no refinement stage: plain first stage
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=first_path, detector="none")) as a:
        assert a.refine_model_path is None


def test_the_packaged_refinement_is_on_by_default_in_both_modes_one_level_in_video():
    """The packaged model runs with its refinement unless told not to: both cascade levels in
    IMAGE mode, level 1 in VIDEO mode (run 57: a tracked crowd of eight faces stays above 500
    FPS with one level, not with two); `refine_levels` picks, and is checked."""
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions

    def levels(**kw):
        with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(detector="none", **kw)) as a:
            r = a._refiner
            return [] if r is None else [s.level for s in getattr(r, "stages", [r])]

    assert levels() == [1, 2] and levels(refine=False) == []
    assert levels(running_mode="video") == [1]
    assert levels(running_mode="video", refine_levels=2) == [1, 2]
    assert levels(refine_levels=1) == [1]
    for bad in ({"refine_levels": 3}, {"refine_levels": 0}, {"refine": False, "refine_levels": 1},
                {"refine_levels": 2, "refine_model_path": "x.tflite"}):
        with pytest.raises(ValueError, match="refine"):
            FaceAnalyzerOptions(detector="none", **bad)


def test_live_bench_and_demo_take_the_refinement_flags():
    """`facemtl bench --live` and `facemtl demo` pass --refine/--no-refine and --refine-levels
    to the analyzer; no flag leaves each mode's default (on, level 1 while tracking)."""
    import argparse

    from facemtl.runtime.live.bench import _analyzer, add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert [p.parse_args(a).refine for a in ([], ["--refine"], ["--no-refine"])] == [None, True, False]
    assert [p.parse_args(a).refine_levels for a in ([], ["--refine-levels", "2"])] == [None, 2]
    with pytest.raises(SystemExit):
        p.parse_args(["--refine-levels", "3"])
    for refine, levels, want in ((None, None, [1]), (False, None, []), (None, 2, [1, 2])):
        with _analyzer(None, "none", None, 1, True, refine=refine, refine_levels=levels) as a:
            r = a._refiner
            assert ([] if r is None else [s.level for s in getattr(r, "stages", [r])]) == want

    from facemtl.runtime.live import demo

    d = argparse.ArgumentParser()
    demo.add_arguments(d)
    for argv, tracking, want in (([], True, [1]), ([], False, [1, 2]), (["--refine-levels", "2"], True, [1, 2]),
                                 (["--no-refine"], True, [])):
        with demo.build_analyzer(d.parse_args(argv + ["--detector", "none"]), tracking) as a:
            r = a._refiner
            assert ([] if r is None else [s.level for s in getattr(r, "stages", [r])]) == want


def test_the_packaged_model_runs_both_cascade_levels():
    """The install packages run 56's level 2 beside run 54's level 1 (docs/experiments.md):
    wherever the refinement is on with the packaged model, both run, level 1 first, files of
    the packaged model's kind; level 2's patches are half as wide."""
    from facemtl.runtime.analyzer import PACKAGED_MODELS, FaceAnalyzer, FaceAnalyzerOptions
    from facemtl.runtime.refine import Cascade, packaged_refine_paths

    for kw in ({}, {"running_mode": "video", "refine_levels": 2}):
        with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(detector="none", **kw)) as a:
            r = a._refiner
            assert isinstance(r, Cascade) and [s.level for s in r.stages] == [1, 2]
            assert [p.name for p in r.paths] == ["facemtl_refine_int8.tflite", "facemtl_refine2_int8.tflite"]
            assert r.stages[1].spec.refine.patch == r.stages[0].spec.refine.patch / 2
    onnx = packaged_refine_paths(PACKAGED_MODELS, PACKAGED_MODELS / "facemtl_fp32.onnx")
    assert [p.name for p in onnx] == ["facemtl_refine_fp32.onnx", "facemtl_refine2_fp32.onnx"]


# --- training, a handful of steps -------------------------------------------------------------------

def test_cache_fit_and_convert_on_a_small_folder(tiny_mtfl, tmp_path):
    """The first stage's answers cached, a refinement model trained for one epoch on them (the
    first stage here answers a fixed mean face, so its errors are large and real), saved with a
    spec that names the first stage, and converted to a file the runtime pairs with it."""
    import json

    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Refiner
    from facemtl.train.refine import convert_refine, first_stage_cache, fit_refine, load_cache

    first = calibrated_spec()
    first_path = write_constant_onnx(tmp_path / "first.onnx", first)
    summary = first_stage_cache(tiny_mtfl, tmp_path / "cache.npz", first_path, draws=2, val_fraction=0.25)
    c = load_cache(tmp_path / "cache.npz")
    n_val = int(c["val"].sum())
    assert 0 < n_val < 160 and len(c["face"]) == 2 * (160 - n_val) + n_val
    assert c["first"].shape == c["truth"].shape == (len(c["face"]), 5, 2)
    assert summary["contract"] == contract_id(first) and summary["val_nme"] > 5  # a mean face errs
    out = fit_refine(tmp_path / "cache.npz", tmp_path / "run", tiny_mtfl, epochs=1, batch=32, width=4, size=16,
                     first_model=first_path)
    assert (tmp_path / "run" / "model.keras").is_file()
    spec = ModelSpec.load(tmp_path / "run" / "spec.json")
    assert spec.refine.first == contract_id(first) and spec.input.shape == (16, 16, 5)
    saved = json.loads((tmp_path / "run" / "train.json").read_text())
    assert saved["val"]["first_nme"] == pytest.approx(summary["val_nme"])
    assert np.isfinite(out["val"]["refined_nme"]) and len(saved["history"]) == 1
    report = convert_refine(tmp_path / "run", tmp_path / "conv", tmp_path / "cache.npz", tiny_mtfl,
                            formats=("onnx-fp32",), calibration=20)
    (row,) = report["formats"]
    assert row["status"] == "passed", row
    refiner = Refiner(load_backend(tmp_path / "conv" / row["file"]), first)
    assert refiner.spec.refine.first_name == "first.onnx"


def test_the_refinement_runtime_imports_without_tensorflow(tmp_path):
    from import_blocker import run_blocked

    r = run_blocked("import facemtl.runtime.refine, facemtl.runtime.analyzer\nprint('ok')", tmp_path)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_flip_averaged_refinement_is_the_mean_of_straight_and_mirrored_answers(tmp_path):
    """A constant answer d for every patch: the mirrored half answers d too, which put back
    into the face's frame is (-dx, dy) of the twin; the average is what the Refiner returns.
    And the mirrored patches are those of the mirror image (up to the warp's rounding)."""
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Refiner, mirror_patches

    first = calibrated_spec()
    spec = _refine_spec(first, size=24)
    offsets = np.array([[0.1, 0.02], [0.0, -0.1], [0.05, 0.05], [0.0, 0.0], [-0.2, 0.1]])
    path = write_constant_refine(tmp_path / "r.onnx", spec, offsets)
    grey = cv2.GaussianBlur(np.random.default_rng(4).integers(0, 256, (240, 320), dtype=np.uint8), (7, 7), 2)
    refiner = Refiner(load_backend(path), first, flip_average=True)
    out, _, _ = refiner(grey, FACE[None])
    perm = [1, 0, 2, 4, 3]
    back = offsets[perm] * [-1, 1]
    sq = point_squares(FACE, spec.crop, spec.refine.patch)[0]
    a = math.radians(sq.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    assert np.allclose(out[0], FACE + sq.side * (0.5 * (offsets + back)) @ rot.T, atol=1e-4)
    x, _ = point_patches(grey, FACE, spec.crop, spec.refine.patch, spec.input)
    mirrored = np.array([[grey.shape[1] - 1 - FACE[k, 0], FACE[k, 1]] for k in perm])
    xm, _ = point_patches(np.ascontiguousarray(grey[:, ::-1]), mirrored, spec.crop, spec.refine.patch, spec.input)
    assert np.abs(mirror_patches(x[None], perm)[0] - xm).mean() < 0.02


def test_collapsed_points_give_finite_patches():
    spec = _refine_spec(calibrated_spec())
    grey = np.random.default_rng(5).integers(0, 256, (60, 80), dtype=np.uint8)
    x, mats = point_patches(grey, np.full((5, 2), 30.0), spec.crop, spec.refine.patch, spec.input)
    assert np.isfinite(x).all() and np.isfinite(mats).all()


def test_facemtl_convert_points_a_refinement_stage_to_its_own_conversion(tmp_path):
    from facemtl.convert.run import ConvertError, convert_model

    _refine_spec(calibrated_spec()).save(tmp_path / "spec.json")
    (tmp_path / "model.keras").write_bytes(b"not read")
    with pytest.raises(ConvertError, match="facemtl.train.refine convert"):
        convert_model(tmp_path / "model.keras", tmp_path / "out", tmp_path)
