"""The face verifier for small images in which nothing is found (issue 18, run 59): its data,
its file, and the IMAGE-mode fallback, on real MTFL faces where the data set is present."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facemtl.runtime.analyzer import PACKAGED_MODELS, FaceAnalyzer, FaceAnalyzerOptions
from facemtl.runtime.backends import load_backend
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import CropPolicy, SpecError
from facemtl.runtime.verify import DEFAULT_THRESHOLD, FaceVerifier, VERIFY_MODEL_FILES, packaged_verify_path
from facemtl.train.verify import _FACE, background_squares, make_data, tight_crop


def _verifier(name: str = VERIFY_MODEL_FILES[0]) -> FaceVerifier:
    return FaceVerifier(load_backend(PACKAGED_MODELS / name, threads=1))


def test_background_squares_keep_clear_of_the_face():
    rng = np.random.default_rng(0)
    pts = np.array([[300.0, 200.0], [340.0, 200.0], [320.0, 225.0], [305.0, 245.0], [335.0, 245.0]])
    sq = canonical_square(pts, _FACE)
    squares = background_squares((480, 640, 3), pts, rng, 50, tries=400)
    assert len(squares) > 10
    for x, y, side in squares:
        assert side >= 32 and x >= 0 and y >= 0 and x + side <= 640 and y + side <= 480
        clear = (x + side <= sq.cx - 0.65 * sq.side or x >= sq.cx + 0.65 * sq.side
                 or y + side <= sq.cy - 0.65 * sq.side or y >= sq.cy + 0.65 * sq.side)
        assert clear, (x, y, side)


def test_tight_crop_puts_the_face_brows_to_chin():
    """Span 2 eye-to-mouth distances, upright: the eyes sit about a third down, the mouth
    corners about 0.7 down, centred; a turn moves the points with the image."""
    image = np.zeros((400, 400, 3), np.uint8)
    pts = np.array([[170.0, 180.0], [230.0, 180.0], [200.0, 210.0], [180.0, 240.0], [220.0, 240.0]])
    _, p = tight_crop(image, pts)
    assert p[:2, 1].mean() == pytest.approx(64 * (0.5 - 0.65 / 2), abs=0.5)
    assert p[3:, 1].mean() == pytest.approx(64 * (0.5 + 0.35 / 2), abs=0.5)
    assert p[:, 0].mean() == pytest.approx(31.5, abs=0.5)
    _, q = tight_crop(image, pts, angle=20.0)
    roll = math.degrees(math.atan2(q[1, 1] - q[0, 1], q[1, 0] - q[0, 0]))
    assert roll == pytest.approx(-20.0, abs=0.5)


def test_make_data_writes_the_training_part_as_a_folder_per_class(tiny_mtfl, tmp_path):
    from facemtl.train.mtfl import load_split, validation_mask

    counts = make_data(tiny_mtfl, tmp_path, part="training")
    paths = load_split(tiny_mtfl, "training").paths
    assert counts["face"] == int((~validation_mask(paths, 0.1)).sum())
    files = sorted((tmp_path / "face" / "face").glob("*.png"))
    assert len(files) == counts["face"] and cv2.imread(str(files[0])).shape == (64, 64, 3)
    held = make_data(tiny_mtfl, tmp_path / "v", part="validation")
    assert held["face"] == int(validation_mask(paths, 0.1).sum())


def test_a_model_that_is_not_a_verifier_is_refused():
    with pytest.raises(SpecError, match="not a face verifier"):
        FaceVerifier(load_backend(PACKAGED_MODELS / "facemtl_int8.tflite", threads=1))


def test_the_packaged_verifier_frames_like_the_packaged_model():
    v = _verifier()
    with load_backend(PACKAGED_MODELS / "facemtl_int8.tflite", threads=1) as first:
        assert v.frames(first.spec.crop)
    assert not v.frames(CropPolicy(scale=3.6))
    assert packaged_verify_path(PACKAGED_MODELS, PACKAGED_MODELS / "facemtl_fp32.onnx").suffix == ".onnx"
    with pytest.raises(ValueError):
        FaceAnalyzerOptions(running_mode="video", verify_small=True)
    assert FaceAnalyzerOptions(running_mode="video").verify_small is False
    assert FaceAnalyzerOptions().verify_small is True


def _validation_faces(mtfl_dir, n):
    from facemtl.train.mtfl import load_split, validation_mask

    ann = load_split(mtfl_dir, "training")
    idx = np.flatnonzero(validation_mask(ann.paths, 0.1))
    for i in idx[np.linspace(0, len(idx) - 1, n).astype(int)]:
        image = cv2.imread(str(ann.root / ann.paths[i]), cv2.IMREAD_COLOR)
        yield image, ann.points[i].astype(np.float64)


def test_the_verifier_tells_held_out_tight_faces_from_background(mtfl_dir):
    """On faces and photographs of the validation part (the verifier trained on the training
    part): at the default threshold most tight crops are faces and most face-free squares are
    not, in both packaged files, which agree."""
    rng = np.random.default_rng(1)
    faces, background = [], []
    for image, pts in _validation_faces(mtfl_dir, 60):
        faces.append(tight_crop(image, pts, span=float(rng.uniform(1.6, 2.2)))[0])
        for x, y, side in background_squares(image.shape, pts, rng, 1):
            background.append(cv2.resize(image[y:y + side, x:x + side], (64, 64), interpolation=cv2.INTER_AREA))
    assert len(background) >= 30
    for name in VERIFY_MODEL_FILES:
        v = _verifier(name)
        pf = np.array([v.probability(f) for f in faces])
        pb = np.array([v.probability(b) for b in background])
        assert (pf >= DEFAULT_THRESHOLD).mean() >= 0.9, (name, np.round(pf, 2))
        assert (pb < DEFAULT_THRESHOLD).mean() >= 0.9, (name, np.round(pb, 2))


def test_a_tight_crop_the_detector_misses_is_analysed_whole(mtfl_dir):
    """IMAGE mode's fallback end to end: a held-out face cut tight (span 1.3, where YuNet
    misses the most) that the detector does not find is one face with the default options,
    its box the whole image, its score P(face), its landmarks near the truth; none with
    `verify_small=False`."""
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions()) as on, \
            FaceAnalyzer.create_from_options(FaceAnalyzerOptions(verify_small=False)) as off:
        assert on.verify_model_path is not None and off.verify_model_path is None
        for image, pts in _validation_faces(mtfl_dir, 400):
            crop, truth = tight_crop(image, pts, span=1.3)
            if off.analyze(crop).faces:
                continue
            faces = on.analyze(crop).faces
            if not faces:
                continue  # the verifier said no too
            f = faces[0]
            assert f.box == (0.0, 0.0, 64.0, 64.0) and DEFAULT_THRESHOLD <= f.score <= 1.0
            iod = np.linalg.norm(truth[1] - truth[0])
            assert np.linalg.norm(f.landmarks - truth, axis=1).mean() / iod < 0.35
            # the score is a detection score like any other: min_detection_score filters it
            stricter = FaceAnalyzerOptions(min_detection_score=min(1.0, f.score + 1e-3))
            with FaceAnalyzer.create_from_options(stricter) as strict:
                assert strict.analyze(crop).faces == []
            return
    pytest.fail("no held-out tight crop that the detector misses and the verifier finds")


def test_a_verified_image_is_framed_as_a_tight_crop_frames_its_face(mtfl_dir):
    """The square of a verified whole image is the training square of a brows-to-chin crop's
    face (span 2): on held-out faces, centre within 0.1 of the side and side within 20% of
    the truth's for 90% of them (whole-photo framing, the "none" calibration's 0.38 of the
    image, fails this)."""
    v = _verifier()
    good = n = 0
    for image, pts in _validation_faces(mtfl_dir, 100):
        crop, truth = tight_crop(image, pts)
        got, want = v.square(crop), canonical_square(truth, v.spec.crop)  # the packaged model's crop
        n += 1
        good += (math.hypot(got.cx - want.cx, got.cy - want.cy) < 0.1 * want.side
                 and 0.8 < got.side / want.side < 1.25)
    assert good >= 0.9 * n, (good, n)
