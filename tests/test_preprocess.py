"""Crop geometry, train/serve parity and augmentation on real MTFL images."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facemtl.runtime import preprocess as pp
from facemtl.runtime.spec import LANDMARK_FLIP, POSE_FLIP, InputSpec, default_spec


def blob_image(x0, y0, shape=(240, 320), sigma=3.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (255 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))).astype(np.uint8)


def centroid(patch, frac=0.5):
    w = np.where(patch >= frac * patch.max(), patch, 0).astype(np.float64)
    yy, xx = np.mgrid[: patch.shape[0], : patch.shape[1]]
    return np.array([(w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()])


@pytest.mark.parametrize("side, angle", [(30.0, 0.0), (40.0, 0.0), (100.0, 0.0), (100.0, 25.0), (300.0, -40.0)])
def test_crop_matrix_agrees_with_the_pixels(side, angle):
    """A blob at a known sub-pixel spot lands where crop_matrix says, at any scale and roll."""
    x0, y0 = 151.3, 117.8
    sq = pp.Square(160.0, 120.0, side, angle)
    patch, m = pp.crop(blob_image(x0, y0, sigma=max(1.5, side / 40)), sq, 40)
    u = pp.to_crop(np.array([x0, y0]), m) * 40 - 0.5
    np.testing.assert_allclose(centroid(patch), u, atol=0.15)
    np.testing.assert_allclose(pp.to_image(pp.to_crop(np.array([[x0, y0]]), m), m), [[x0, y0]], atol=1e-9)


def test_faces_at_the_border_are_padded_not_dropped():
    img = np.full((100, 100), 50, np.uint8)
    img[:, :10] = 200
    patch, m = pp.crop(img, pp.Square(5.0, 50.0, 60.0), 40)
    assert patch.shape == (40, 40) and np.isfinite(patch).all()
    # the left half of the square lies outside the image: it replicates the border column
    assert patch[:, :10].mean() > 190


@pytest.mark.parametrize("image, shape", [
    (np.zeros((30, 40), np.uint8), (30, 40)),
    (np.zeros((30, 40, 3), np.uint8), (30, 40)),
    (np.zeros((30, 40, 4), np.uint8), (30, 40)),
    (np.zeros((30, 40, 1), np.uint8), (30, 40)),
])
def test_to_grey_accepts_grey_bgr_bgra(image, shape):
    assert pp.to_grey(image).shape == shape


@pytest.mark.parametrize("image, message", [
    (np.zeros((30, 40, 2), np.uint8), "got shape"),
    (np.zeros((30, 40), np.float32), "uint8"),
    (np.zeros((1, 40), np.uint8), "too small"),
    (np.zeros((0, 0, 3), np.uint8), "empty"),
    ("not an array", "numpy array"),
])
def test_to_grey_refuses_junk_with_a_reason(image, message):
    with pytest.raises(pp.ImageError, match=message):
        pp.to_grey(image, where="frame 7")


def test_normalize_is_per_crop_and_floors_flat_crops():
    spec = InputSpec()
    x = np.random.default_rng(0).uniform(0, 255, (40, 40)).astype(np.float32)
    n = pp.normalize(x, spec)
    assert abs(n.mean()) < 1e-5 and abs(n.std() - 1) < 1e-4
    np.testing.assert_allclose(pp.normalize(2 * x + 7, spec), n, atol=1e-5)  # exposure-invariant
    flat = pp.normalize(np.full((40, 40), 100.0) + np.eye(40), spec)
    assert np.abs(flat).max() < 1.0 / spec.min_std * 40  # noise is not blown up to unit variance


def test_normalize_is_numpys_mean_and_std_bit_for_bit():
    """`normalize` computes the standard deviation from its own mean and centred crops (one
    pass fewer than x.std): the numbers must be exactly (x - x.mean()) / max(x.std(), floor),
    what the packaged models were trained on, for single crops, batches and flat crops."""
    spec = InputSpec()
    rng = np.random.default_rng(3)
    for shape in [(40, 40), (7, 40, 40), (35, 24, 24)]:
        for x in (rng.integers(0, 256, shape).astype(np.float32), rng.normal(90, 40, shape).astype(np.float32),
                  np.full(shape, 17, np.float32), rng.integers(0, 256, shape).astype(np.uint8)):
            f = np.asarray(x, np.float32)
            axes = (-2, -1)
            want = (f - f.mean(axis=axes, keepdims=True)) / np.maximum(f.std(axis=axes, keepdims=True), spec.min_std)
            assert np.array_equal(pp.normalize(x, spec), want)


def test_frame_crops_are_crop_region_bit_for_bit():
    """`frame_crops` (every square of a frame in one call: InferenceCore's crops) must give what
    `crop_region` gives square by square: the model's input does not depend on how many
    faces share the frame. Grey, BGR and BGRA; small and large squares, rolled, at and beyond
    the frame edge."""
    rng = np.random.default_rng(11)
    bgr = cv2.GaussianBlur(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8), (5, 5), 1.2)
    squares = [pp.Square(float(rng.uniform(-30, 430)), float(rng.uniform(-30, 330)), float(rng.uniform(8, 260)),
                         float(rng.uniform(-50, 50)) if k % 3 else 0.0) for k in range(24)]
    for frame in (bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)):
        for size in (40, 24):
            crops, mats = pp.frame_crops(frame, squares, size)
            assert crops.shape == (len(squares), size, size) and crops.dtype == np.float32
            for i, sq in enumerate(squares):
                want, m = pp.crop_region(frame, sq, size)
                assert np.array_equal(crops[i], want) and np.array_equal(mats[i], m)
    empty, _ = pp.frame_crops(bgr, [], 40)
    assert empty.shape == (0, 40, 40)


def test_canonical_square_is_rotation_invariant_in_size():
    pts = np.array([[100, 100], [140, 100], [120, 125], [105, 145], [135, 145]], float)
    sq = pp.canonical_square(pts, default_spec().crop)
    c = pts.mean(axis=0)
    a = np.radians(30)
    rot = (pts - c) @ np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) + c
    assert pp.canonical_square(rot, default_spec().crop).side == pytest.approx(sq.side)
    assert pp.eye_angle(rot) == pytest.approx(30.0)


# ---- on real MTFL images -----------------------------------------------------------------

@pytest.fixture(scope="module")
def real_faces(mtfl_dir):
    from facemtl.train.mtfl import load_images, load_split

    ann = load_split(mtfl_dir, "training")
    pick = np.flatnonzero(ann.labels["pose"] == 2)[::700][:12]  # frontal faces, LFW and net_7876
    return load_images(ann.subset(pick))


def test_pipeline_crops_are_the_runtime_crops(real_faces):
    """Train/serve parity: the tf.data side calls the runtime's code, bit for bit."""
    from facemtl.train.pipeline import FaceSource

    spec = default_spec()
    src = FaceSource(real_faces, spec, augment=None)
    idx = np.arange(len(src))
    x, y, _ = src.batch(idx, idx)
    for i in idx:
        sq = pp.canonical_square(real_faces.annotations.points[i], spec.crop)
        rt, mats = pp.prepare(real_faces.images[i], [sq], spec.input)
        np.testing.assert_array_equal(x[i], rt[0])
        np.testing.assert_allclose(pp.to_image(y[i].reshape(5, 2), mats[0]), real_faces.annotations.points[i], atol=1e-4)


def test_pipeline_tensors_match_runtime_through_tf_data(real_faces):
    from facemtl.train.pipeline import FaceSource, make_dataset

    spec = default_spec()
    ds = make_dataset(FaceSource(real_faces, spec, None), batch_size=5, shuffle=False)
    x, targets = next(iter(ds))
    rt, _ = pp.prepare(real_faces.images[0], [pp.canonical_square(real_faces.annotations.points[0], spec.crop)], spec.input)
    np.testing.assert_allclose(x.numpy()[0], rt[0], atol=1e-4)
    assert set(targets) == set(spec.head_names)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_augmented_targets_sit_on_the_features(real_faces, flip):
    """Draw a mark on one landmark of a real face, augment (roll, scale, shift, flip), and find
    the mark in the crop: it must sit on the target of that landmark, or of its mirror twin
    after a flip; the pose label mirrors with it."""
    from facemtl.train.pipeline import Augment, make_example

    spec = default_spec()
    aug = Augment(flip=flip, rotate=18, scale=0.12, shift=0.08, brightness=0, contrast=0, gamma=0, blur=0, noise=0)
    for i in range(6):
        grey = real_faces.images[i]
        pts = real_faces.annotations.points[i]
        attrs = np.array([0, 0, 0, 1], np.int32)  # pose "left"
        for k in range(5):
            marked = (grey // 3).astype(np.uint8)
            r = max(2, int(round(np.linalg.norm(pts[1] - pts[0]) / 12)))
            cv2.circle(marked, tuple(int(round(v)) for v in pts[k]), r, 255, -1)
            rng = np.random.default_rng([i, 7])
            x, target, a = make_example(marked, pts, attrs, spec, aug, rng)
            where = target.reshape(5, 2)[LANDMARK_FLIP[k] if flip else k] * 40 - 0.5
            assert np.linalg.norm(centroid(x) - where) < 0.75, f"face {i} landmark {k}"
            assert a[3] == (POSE_FLIP[1] if flip else 1)
        if flip:
            # after a flip, the image-left eye is still the one with the smaller x
            assert target.reshape(5, 2)[0, 0] < target.reshape(5, 2)[1, 0]


def test_random_erasing_covers_one_rectangle_and_keeps_the_targets(real_faces):
    """--erase: one axis-aligned block of the crop becomes noise, 2-20% of its area; the rest
    of the crop and the landmark targets are what they would be without it."""
    import dataclasses

    from facemtl.train.pipeline import Augment, erase, make_example, photometric

    rng = np.random.default_rng(0)
    flat = np.full((40, 40), 128.0, np.float32)
    for _ in range(200):
        out = erase(flat, rng)
        changed = np.argwhere(out != flat)
        (y0, x0), (y1, x1) = changed.min(0), changed.max(0)
        area = (y1 - y0 + 1) * (x1 - x0 + 1)
        assert 0.015 * 1600 <= area <= 0.21 * 1600
        assert len(changed) >= 0.9 * area  # one filled rectangle (noise may hit 128 by chance)
    assert np.array_equal(flat, np.full((40, 40), 128.0))  # the input is not changed in place

    spec = default_spec()
    grey, pts = real_faces.images[0], real_faces.annotations.points[0]
    attrs = np.array([0, 0, 0, 2], np.int32)
    plain = Augment(flip=0, brightness=0, contrast=0, gamma=0, blur=0, noise=0)
    erasing = dataclasses.replace(plain, erase=1.0)
    _, t0, _ = make_example(grey, pts, attrs, spec, plain, np.random.default_rng(5))
    _, t1, _ = make_example(grey, pts, attrs, spec, erasing, np.random.default_rng(5))
    assert np.array_equal(t0, t1)
    patch, _ = pp.crop(grey, pp.face_square(grey, pts, spec.crop), 40)
    differs = (photometric(patch, erasing, np.random.default_rng(1)) != patch).mean()
    assert 0.015 < differs < 0.21
