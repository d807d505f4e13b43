"""Flip averaging (facemtl.runtime.mirror): the mirror maps agree with training's flip, averaging makes
a real model exactly mirror-consistent, the analyzer runs it in one batch, and on real MTFL
faces it lowers the landmark error."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions
from facemtl.runtime.backends import load_backend
from facemtl.runtime.detectors import create_detector
from facemtl.runtime.mirror import flip_averaged, mirror_name, mirror_permutation, unmirror
from facemtl.runtime.preprocess import crop, face_square, normalize, to_image
from facemtl.runtime.spec import LANDMARK_FLIP, LANDMARK_NAMES, POSE_FLIP, SpecError, default_spec
from runtime_models import MEAN_SHAPE, calibrated_spec, trained_model, write_constant_onnx


def test_mirror_maps_are_the_ones_training_flips_with():
    spec = default_spec()
    assert mirror_name("left_profile") == "right_profile" and mirror_name("right_eye") == "left_eye"
    assert mirror_permutation(LANDMARK_NAMES) == LANDMARK_FLIP
    assert mirror_permutation(spec.head("pose").labels) == POSE_FLIP
    assert mirror_permutation(spec.head("gender").labels) == (0, 1)


def test_a_label_without_its_mirror_twin_is_refused():
    spec = default_spec()
    heads = tuple(dataclasses.replace(h, labels=("left", "frontal", "up", "down", "tilted")) if h.name == "pose" else h
                  for h in spec.heads)
    bad = spec.replace(heads=heads)
    with pytest.raises(SpecError, match=r"head 'pose'.*'left' \(no 'right'\)"):
        flip_averaged(lambda x: {}, bad)


def test_unmirror_of_landmarks_and_pose():
    spec = default_spec()
    pts = np.array([[[0.30, 0.40], [0.70, 0.42], [0.52, 0.55], [0.35, 0.70], [0.66, 0.71]]], np.float32)
    raw = {"landmarks": pts.reshape(1, -1), "gender": np.array([[1.0, -1.0]], np.float32),
           "smile": np.zeros((1, 2), np.float32), "glasses": np.zeros((1, 2), np.float32),
           "pose": np.array([[0.0, 1.0, 2.0, 3.0, 4.0]], np.float32)}
    back = unmirror(spec, raw)
    got = back["landmarks"].reshape(5, 2)
    # the mirrored face's image-left eye is the original's right eye, at 1 - x
    np.testing.assert_allclose(got[0], [1 - 0.70, 0.42], atol=1e-6)
    np.testing.assert_allclose(got[3], [1 - 0.66, 0.71], atol=1e-6)
    np.testing.assert_allclose(back["pose"], [[4.0, 3.0, 2.0, 1.0, 0.0]])
    np.testing.assert_allclose(back["gender"], raw["gender"])
    # mirroring twice is the identity
    twice = unmirror(spec, back)
    for k in raw:
        np.testing.assert_allclose(twice[k], raw[k], atol=1e-6)


@pytest.fixture(scope="module")
def real_model():
    path = trained_model()
    if path is None:
        pytest.skip("no trained model yet (runtime/models/facemtl_int8.tflite or models/default/*.tflite|onnx)")
    backend = load_backend(path)
    yield backend
    backend.close()


def _faces(n: int, seed: int = 0) -> np.ndarray:
    """Face-like crops: a bright oval with dark eyes and mouth, off-centre, so that the mirror
    image differs from the crop."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 40, 40, 1), np.float32)
    spec = default_spec().input
    for i in range(n):
        img = np.full((40, 40), 60, np.uint8)
        cx, cy = 20 + rng.integers(-4, 5), 21 + rng.integers(-3, 4)
        cv2.ellipse(img, (int(cx), int(cy)), (12, 15), float(rng.uniform(-20, 20)), 0, 360, 190, -1)
        for dx in (-5, 5):
            cv2.circle(img, (int(cx + dx), int(cy - 4)), 2, 40, -1)
        cv2.line(img, (int(cx - 5), int(cy + 7)), (int(cx + 4), int(cy + 6 + rng.integers(0, 3))), 50, 2)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        out[i, :, :, 0] = normalize(img, spec)
    return out


def test_flip_averaging_makes_a_real_model_exactly_mirror_consistent(real_model):
    """F(mirror(x)) == unmirror(F(x)) for the averaged model F, which the single pass is not."""
    spec = real_model.spec
    x = _faces(16)
    averaged = flip_averaged(real_model.run, spec)
    a, b = averaged(x), unmirror(spec, averaged(x[:, :, ::-1]))
    single_a, single_b = real_model.run(x), unmirror(spec, real_model.run(x[:, :, ::-1]))
    for h in spec.heads:
        np.testing.assert_allclose(a[h.name], b[h.name], atol=1e-5, err_msg=h.name)
    gap = max(np.abs(np.asarray(single_a[h.name]) - single_b[h.name]).max() for h in spec.heads)
    assert gap > 1e-3  # the single pass disagrees with its own mirror image: the check above has teeth


class _Counting:
    """A backend that records the batch size of every call."""

    def __init__(self, backend):
        self.backend, self.spec, self.path, self.calls = backend, backend.spec, backend.path, []

    def run(self, batch):
        self.calls.append(len(batch))
        return self.backend.run(batch)

    def close(self):
        self.backend.close()


def test_the_analyzer_averages_in_one_batch(tmp_path):
    """A constant model answers c for a crop and its mirror image alike, so the averaged answer
    is (c + unmirror(c)) / 2: pose logits 0..4 average to a five-way tie, a face shape shifted
    right averages back to the symmetric shape, and both images go through one call."""
    spec = calibrated_spec()
    shifted = write_constant_onnx(tmp_path / "shifted.onnx", spec, landmarks=MEAN_SHAPE + np.float32([0.03, 0.0]))
    symmetric = write_constant_onnx(tmp_path / "symmetric.onnx", spec)  # MEAN_SHAPE is its own mirror image
    image = np.full((120, 100), 128, np.uint8)
    faces = {}
    for name, path, flip in (("plain", shifted, False), ("flipped", shifted, True), ("symmetric", symmetric, False)):
        backend = _Counting(load_backend(path))
        with FaceAnalyzer(backend, create_detector("none"), FaceAnalyzerOptions(flip_average=flip, passes=1), spec) as fa:
            faces[name] = fa.analyze(image).faces[0]
        assert backend.calls == [2 if flip else 1]
    p, f = faces["plain"], faces["flipped"]
    assert p.attributes["pose"].top.category_name == "right_profile" and p.attributes["pose"].top.score > 0.3
    assert f.attributes["pose"].top.score == pytest.approx(0.2, abs=1e-6)
    assert f.attributes["gender"].top.score == pytest.approx(p.attributes["gender"].top.score, abs=1e-6)
    np.testing.assert_allclose(f.landmarks, faces["symmetric"].landmarks, atol=1e-3)
    assert np.abs(p.landmarks - faces["symmetric"].landmarks).max() > 1.0


@pytest.mark.data
def test_flip_averaging_lowers_the_landmark_error_on_real_faces(mtfl_dir, real_model):
    """On 300 real MTFL training faces, cut by the canonical crop, the averaged landmarks are
    closer to the annotation than the single pass's (the held-out split: NME 4.83 -> 4.47)."""
    from facemtl.runtime.calibration import read_landmark_file, spread_subset

    spec = real_model.spec
    paths, pts = read_landmark_file(mtfl_dir / "training.txt", mtfl_dir)
    keep = spread_subset(len(paths), 300)
    x = np.empty((len(keep), 40, 40, 1), np.float32)
    mats, truth = [], []
    for j, i in enumerate(keep):
        grey = cv2.imread(str(paths[i]), cv2.IMREAD_GRAYSCALE)
        patch, m = crop(grey, face_square(grey, pts[i], spec.crop), spec.input.size)
        x[j, :, :, 0] = normalize(patch, spec.input)
        mats.append(m)
        truth.append(pts[i])

    def nme(raw) -> float:
        pred = raw["landmarks"].reshape(len(x), 5, 2)
        err = [np.linalg.norm(to_image(p, m) - t, axis=1).mean() / np.linalg.norm(t[1] - t[0])
               for p, m, t in zip(pred, mats, truth)]
        return 100 * float(np.mean(err))

    single, averaged = nme(real_model.run(x)), nme(flip_averaged(real_model.run, spec)(x))
    assert averaged < single - 0.1, (single, averaged)
