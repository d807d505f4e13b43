"""Detectors: NMS, the Haar cascades and their mirror, YuNet, `none`, downscaled detection,
the calibrated square, and the errors users meet."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from facemtl.runtime import detectors as D
from facemtl.runtime.calibration import read_landmark_file
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import BoxCalibration, CropPolicy, SpecError


def det(box, score=0.9, source="haar", **kw):
    return D.Detection(tuple(float(v) for v in box), score, source, **kw)


# --- NMS and overlaps ------------------------------------------------------------------------
def test_box_overlap_iou_and_containment():
    iou, iom = D.box_overlap([[0, 0, 10, 10]], [[5, 0, 10, 10], [2, 2, 4, 4], [20, 20, 5, 5]])
    np.testing.assert_allclose(iou[0], [50 / 150, 16 / 100, 0.0])
    np.testing.assert_allclose(iom[0], [0.5, 1.0, 0.0])


def test_nms_keeps_the_best_of_overlapping_boxes_and_separate_faces():
    dets = [det((0, 0, 100, 100), 0.6), det((5, 5, 100, 100), 0.9), det((300, 0, 80, 80), 0.5),
            det((20, 20, 40, 40), 0.95, "haar_profile")]  # inside the first two: same face
    kept = D.nms(dets)
    assert [d.box for d in kept] == [(20.0, 20.0, 40.0, 40.0), (300.0, 0.0, 80.0, 80.0)]
    assert D.nms([]) == []


def test_nms_tie_keeps_the_earlier_detection():
    kept = D.nms([det((0, 0, 50, 50), 0.5, "haar"), det((2, 2, 50, 50), 0.5, "haar_profile")])
    assert [d.source for d in kept] == ["haar"]


# --- squares and calibrations ----------------------------------------------------------------
def test_calibrated_square_matches_box_calibration_apply():
    cal = BoxCalibration(0.05, 0.1, 0.9)
    d = det((40, 30, 80, 90))
    sq = D.calibrated_square(d, cal, CropPolicy())
    np.testing.assert_allclose([sq.cx, sq.cy, sq.side], cal.apply(d.box)[0])
    assert sq.angle == 0.0


def test_mirrored_detection_negates_dx():
    cal = BoxCalibration(-0.2, 0.1, 0.7)
    plain = D.calibrated_square(det((100, 50, 60, 60)), cal, CropPolicy())
    mirrored = D.calibrated_square(det((100, 50, 60, 60), mirrored=True), cal, CropPolicy())
    assert plain.cx == pytest.approx(130 - 0.2 * 60) and mirrored.cx == pytest.approx(130 + 0.2 * 60)
    assert plain.cy == mirrored.cy and plain.side == mirrored.side


def test_landmark_detection_uses_canonical_square_and_rotates_offsets():
    policy = CropPolicy()
    pts = np.array([[40, 50], [80, 50], [60, 70], [45, 90], [75, 90]], float)
    identity = BoxCalibration()
    sq = D.calibrated_square(det((0, 0, 1, 1), source="yunet", landmarks=pts), identity, policy)
    ref = canonical_square(pts, policy)
    assert (sq.cx, sq.cy, sq.side) == pytest.approx((ref.cx, ref.cy, ref.side))
    # with a 90-degree square, a dy offset moves the centre along -x of the image
    sq90 = D.calibrated_square(det((0, 0, 1, 1), source="yunet", landmarks=pts, angle=90.0),
                               BoxCalibration(0.0, 0.1, 1.0), policy)
    assert sq90.cx == pytest.approx(ref.cx - 0.1 * ref.side) and sq90.cy == pytest.approx(ref.cy)
    assert sq90.angle == 90.0


def test_crop_square_without_calibration_names_the_fix():
    with pytest.raises(SpecError, match="facemtl calibrate"):
        D.crop_square(det((0, 0, 10, 10), source="haar"), CropPolicy())


# --- none, names, errors ------------------------------------------------------------------------
def test_none_is_the_whole_image():
    found = D.create_detector("none").detect(np.zeros((30, 50), np.uint8))
    assert len(found) == 1 and found[0].box == (0.0, 0.0, 50.0, 30.0) and found[0].source == "none"


@pytest.mark.parametrize("name, match", [
    ("sift", "unknown detector"), ("", "detector must be"), ("yunets", "unknown detector"),
    ("yunet:/nonexistent/yunet.onnx", "does not exist"), ("haar:x", "unknown detector"),
])
def test_bad_detector_names(name, match):
    with pytest.raises(D.DetectorError, match=match):
        D.create_detector(name)


def test_corrupt_yunet_file(tmp_path):
    bad = tmp_path / "yunet.onnx"
    bad.write_bytes(b"not an onnx file at all")
    with pytest.raises(D.DetectorError, match="cannot load it as a YuNet model"):
        D.create_detector(f"yunet:{bad}")


def test_opencv_without_haar_cascades_says_how_to_fix(monkeypatch, tmp_path):
    # what opencv-python 5.0 looks like: no cascade folder
    monkeypatch.setattr(cv2.data, "haarcascades", str(tmp_path / "missing"))
    with pytest.raises(D.DetectorError, match=r"default `--detector yunet`.*opencv-python-headless>=4.8,<5"):
        D.create_detector("haar")


def test_bad_haar_settings():
    with pytest.raises(D.DetectorError, match="scale_factor"):
        D.HaarDetector(scale_factor=1.0)
    with pytest.raises(D.DetectorError, match="max_side"):
        D.HaarDetector(max_side=8)


def test_haar_finds_nothing_in_a_flat_image():
    for name in ("haar", "haar:all", "haar:video"):
        assert D.create_detector(name).detect(np.full((240, 320), 128, np.uint8)) == []


def test_haar_presets():
    image, every, video = (D.create_detector(n) for n in ("haar", "haar:all", "haar:video"))
    assert image.fallback and image.profile and image.rotations and image.max_side == 288
    assert not every.fallback and every.profile and every.rotations
    assert not video.profile and not video.rotations and video.max_side == 240
    assert D.create_detector("haar:video", max_side=320).max_side == 320  # --detect-size wins
    assert "where it finds no face" in image.describe() and "always" in every.describe()
    with pytest.raises(D.DetectorError, match="haar:video"):
        D.create_detector("haar:fastest")


class _Cascade:
    """Stands in for a cascade: answers fixed boxes and counts its calls."""

    def __init__(self, rects, counts=5):
        self.rects, self.calls, self.counts = rects, 0, counts

    def detectMultiScale2(self, grey, **kw):
        self.calls += 1
        return self.rects, [self.counts] * len(self.rects)


def _stubbed(fallback, frontal_rects, profile_rects):
    haar = D.HaarDetector(max_side=None, profile_max_side=None, rotation_max_side=None, fallback=fallback)
    haar._frontal, haar._profile = _Cascade(frontal_rects), _Cascade(profile_rects)
    return haar


def test_haar_second_pass_runs_only_where_the_frontal_cascade_finds_no_face():
    img = np.full((100, 200), 128, np.uint8)
    haar = _stubbed(True, [(10, 10, 40, 40)], [(120, 20, 40, 40)])
    found = haar.detect(img)
    assert [d.source for d in found] == ["haar"] and haar._profile.calls == 0
    assert haar._frontal.calls == 1  # no turned runs either
    haar = _stubbed(True, [], [(120, 20, 40, 40)])
    found = haar.detect(img)
    assert haar._profile.calls == 2 and haar._frontal.calls == 3  # upright, then turned -25 and +25
    assert {d.source for d in found} == {"haar_profile"}


def test_a_weak_frontal_face_does_not_stop_the_second_pass():
    """A frontal box that few windows agreed on (under `confident_neighbors`) may be a false
    one: pass 2 still runs, and adds only faces away from it."""
    img = np.full((100, 200), 128, np.uint8)
    haar = _stubbed(True, [(10, 10, 40, 40)], [(120, 50, 40, 40)])
    haar._frontal.counts = 3  # min_neighbors 2 < 3 < confident_neighbors 4
    found = haar.detect(img)
    assert haar._profile.calls == 2
    assert {d.source for d in found} == {"haar", "haar_profile"}
    haar = _stubbed(True, [(10, 10, 40, 40)], [(120, 50, 40, 40)])
    haar._frontal.counts = 4
    assert [d.source for d in haar.detect(img)] == ["haar"] and haar._profile.calls == 0


def test_haar_without_fallback_adds_second_pass_faces_but_keeps_the_frontal_box():
    img = np.full((100, 200), 128, np.uint8)
    # the profile cascade finds the frontal face again (overlapping it) and a second face
    haar = _stubbed(False, [(10, 10, 40, 40)], [(12, 8, 44, 44), (120, 50, 40, 40)])
    found = haar.detect(img)
    assert haar._profile.calls == 2
    frontal = [d for d in found if d.source == "haar" and d.angle == 0]
    assert [d.box for d in frontal] == [(10.0, 10.0, 40.0, 40.0)]
    added = [d for d in found if d.source == "haar_profile"]
    assert (120.0, 50.0, 40.0, 40.0) in [d.box for d in added]
    iou, _ = D.box_overlap([d.box for d in added], [frontal[0].box])
    assert (iou <= 0.3).all()  # the profile box of the frontal face is not a second face


# --- on real faces -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training(mtfl_dir):
    paths, points = read_landmark_file(mtfl_dir / "training.txt", mtfl_dir)
    return paths, points


def _first_hit(detections, truth, policy=CropPolicy()):
    sq = canonical_square(truth, policy)
    for d in detections:
        x, y, w, h = d.box
        if abs(x + w / 2 - sq.cx) < sq.side / 3 and abs(y + h / 2 - sq.cy) < sq.side / 3:
            return d
    return None


@pytest.mark.data
def test_haar_finds_frontal_mtfl_faces(training):
    paths, points = training
    haar = D.create_detector("haar")
    hits = sum(_first_hit(haar.detect(cv2.imread(str(paths[i]))), points[i]) is not None for i in range(0, 400, 20))
    assert hits >= 17  # of 20 LFW faces


@pytest.mark.data
def test_haar_profile_boxes_mirror_with_the_image(mtfl_dir):
    """A profile face is found by the profile cascade on one side and by its mirrored run on
    the other: flipping the image flips the box and the `mirrored` flag."""
    ann = (mtfl_dir / "training.txt").read_text().splitlines()
    # the profile pair on every image; on the 240 px copies the live tools use (full-size
    # images took a minute and show nothing more about mirroring)
    haar = D.HaarDetector(max_side=240, rotations=(), fallback=False)
    checked = 0
    for line in ann:
        f = line.split()
        if not f or f[-1] not in ("1", "5"):
            continue
        img = cv2.imread(str(mtfl_dir / f[0].replace("\\", "/")), cv2.IMREAD_GRAYSCALE)
        a = [d for d in haar.detect(img) if d.source == "haar_profile"]
        b = [d for d in haar.detect(cv2.flip(img, 1)) if d.source == "haar_profile"]
        if len(a) != 1 or len(b) != 1:
            continue
        w = img.shape[1]
        x, y, bw, bh = a[0].box
        np.testing.assert_allclose(b[0].box, (w - x - bw, y, bw, bh), atol=2.0)
        assert a[0].mirrored != b[0].mirrored
        checked += 1
        break  # one face shows it; the first is about 30 profile images in
    assert checked == 1, "no profile face found by the cascade in the training set"


@pytest.mark.data
def test_downscaled_detection_maps_boxes_back(training):
    paths, points = training
    img = cv2.resize(cv2.imread(str(paths[0])), None, fx=2.5, fy=2.5)  # 625 px
    full = D.HaarDetector(max_side=None, profile=False).detect(img)
    small = D.HaarDetector(max_side=320, profile=False).detect(img)
    truth = points[0] * 2.5 + 0.75
    a, b = _first_hit(full, truth), _first_hit(small, truth)
    assert a is not None and b is not None
    iou, _ = D.box_overlap([a.box], [b.box])
    assert iou[0, 0] > 0.7


@pytest.mark.data
def test_yunet_points_are_mtfl_points_in_mtfl_order(training, yunet_path):
    paths, points = training
    yunet = D.create_detector(f"yunet:{yunet_path}")
    errors = []
    for i in range(0, 300, 15):
        d = _first_hit(yunet.detect(cv2.imread(str(paths[i]))), points[i])
        assert d is not None and d.source == "yunet" and d.landmarks.shape == (5, 2)
        iod = np.linalg.norm(points[i][1] - points[i][0])
        errors.append(np.linalg.norm(d.landmarks - points[i], axis=1).mean() / iod)
    assert np.median(errors) < 0.12  # the same five points, within annotation noise


@pytest.mark.data
def test_yunet_on_grey_and_downscaled(training, yunet_path):
    paths, points = training
    grey = cv2.imread(str(paths[3]), cv2.IMREAD_GRAYSCALE)
    big = cv2.resize(grey, None, fx=3, fy=3)
    d = _first_hit(D.YuNetDetector(yunet_path, max_side=400).detect(big), points[3] * 3 + 1)
    assert d is not None
    iod = np.linalg.norm(points[3][1] - points[3][0]) * 3
    assert np.linalg.norm(d.landmarks - (points[3] * 3 + 1), axis=1).mean() < 0.2 * iod


@pytest.mark.data
def test_haar_rotated_runs_find_rolled_faces_and_turn_the_square(training):
    """A face rolled by 25 degrees is found by the frontal cascade on the frame turned back,
    and its square is turned by the roll, so the crop shows it upright."""
    paths, points = training
    img = cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE)
    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), -25, 1.0)  # clockwise on screen: roll +25
    rolled = cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    truth = points[0] @ m[:, :2].T + m[:, 2]
    found = D.HaarDetector(profile=False, rotations=(-25.0, 25.0), fallback=False).detect(rolled)
    d = _first_hit(found, truth)
    assert d is not None and d.angle == 25.0
    sq = D.base_square(d, CropPolicy())
    assert sq.angle == 25.0
    assert np.hypot(sq.cx - truth[:, 0].mean(), sq.cy - truth[:, 1].mean()) < 0.25 * sq.side


# --- the packaged YuNet and tight crops -------------------------------------------------------
def test_yunet_without_a_path_is_the_packaged_file(mtfl_dir):
    det = D.create_detector("yunet")
    assert isinstance(det, D.YuNetDetector) and det.path == D.PACKAGED_YUNET
    assert D.PACKAGED_YUNET.stat().st_size > 100_000
    assert (D.PACKAGED_YUNET.parent / "LICENSE-yunet.txt").read_text().startswith("MIT License")
    from facemtl.runtime.mtfl import read_annotations

    ann = read_annotations(mtfl_dir / "training.txt", mtfl_dir)
    found = 0
    for i in range(0, 400, 20):
        image = cv2.imread(str(ann.root / ann.paths[i]))
        dets = det.detect(image)
        truth = ann.points[i]
        found += any(np.linalg.norm(d.landmarks - truth, axis=1).mean() < 0.3 * np.linalg.norm(truth[1] - truth[0])
                     for d in dets)
    assert found >= 18, found


def _tight(image, pts, span):
    """A tight upright crop around the face, side `span` eye-to-mouth distances, at 64x64."""
    eyes, mouth = pts[:2].mean(axis=0), pts[3:5].mean(axis=0)
    d = float(np.linalg.norm(mouth - eyes))
    centre = (eyes + mouth) / 2 + 0.15 * (mouth - eyes)
    k = 64 / (span * d)
    m = np.array([[k, 0.0, 31.5 - k * centre[0]], [0.0, k, 31.5 - k * centre[1]]])
    return cv2.warpAffine(image, m, (64, 64), borderMode=cv2.BORDER_REPLICATE), pts @ m[:, :2].T + m[:, 2]


def test_padded_retry_maps_detections_back_to_the_image(mtfl_dir):
    """A detection made on the padded copy of a tight crop lands on the face in the crop: its
    landmarks are near the truth, and would be far from it had the offset not been undone."""
    from facemtl.runtime.mtfl import read_annotations

    ann = read_annotations(mtfl_dir / "training.txt", mtfl_dir)
    det = D.YuNetDetector(pad_small=0.25)
    errors, unshifted = [], []
    for i in range(0, 900, 30):
        crop, truth = _tight(cv2.imread(str(ann.root / ann.paths[i])), ann.points[i].astype(np.float64), 1.8)
        padded = det._detect_padded(crop)
        if not padded:
            continue
        iod = np.linalg.norm(truth[1] - truth[0])
        errors.append(np.linalg.norm(padded[0].landmarks - truth, axis=1).mean() / iod)
        unshifted.append(np.linalg.norm(padded[0].landmarks + 16 - truth, axis=1).mean() / iod)
    assert len(errors) >= 25
    assert np.median(errors) < 0.2 and np.median(unshifted) > 0.4


def test_nothing_found_in_a_small_image_retries_padded_and_only_then():
    calls = []

    class Sees(D.Detector):
        """Finds a face only where the image is bigger than the original (i.e. padded)."""

        def _detect(self, image):
            calls.append(image.shape[:2])
            h, w = image.shape[:2]
            return [D.Detection((w / 4, h / 4, w / 2, h / 2), 0.9, "none")] if h > 64 else []

    found = Sees(pad_small=0.25).detect(np.zeros((64, 64, 3), np.uint8))
    assert calls == [(64, 64), (96, 96)]
    assert len(found) == 1 and found[0].box == (8.0, 8.0, 48.0, 48.0)  # back in the 64x64 image
    calls.clear()
    assert Sees(pad_small=0.0).detect(np.zeros((64, 64, 3), np.uint8)) == [] and calls == [(64, 64)]
    calls.clear()
    assert Sees(pad_small=0.25).detect(np.zeros((300, 300, 3), np.uint8))  # big: found, no retry
    assert calls == [(300, 300)]
    calls.clear()
    assert Sees(pad_small=0.25).detect(np.zeros((40, 300, 3), np.uint8)) == [] and calls == [(40, 300)]


class _SeesAbove(D.Detector):
    """Finds one face, in the middle, only in images whose shorter side exceeds `need`."""

    def __init__(self, need, **kw):
        super().__init__(**kw)
        self.need, self.calls = need, []

    def _detect(self, image):
        self.calls.append(image.shape[:2])
        h, w = image.shape[:2]
        return [D.Detection((w / 4, h / 4, w / 2, h / 2), 0.9, "none")] if min(h, w) > self.need else []


def test_retry_full_detects_at_full_size_only_where_the_downscaled_copy_found_nothing():
    frame = np.zeros((480, 640, 3), np.uint8)
    det = _SeesAbove(300, max_side=320, retry_full=True)  # the 320x240 copy finds nothing
    found = det.detect(frame)
    assert det.calls == [(240, 320), (480, 640)]
    assert len(found) == 1 and found[0].box == (160.0, 120.0, 320.0, 240.0)  # full-size pixels, not rescaled twice
    det = _SeesAbove(200, max_side=320, retry_full=True)  # found on the copy: no second detection
    assert det.detect(frame)[0].box == (160.0, 120.0, 320.0, 240.0) and det.calls == [(240, 320)]
    det = _SeesAbove(300, max_side=320)  # off: nothing
    assert det.detect(frame) == [] and det.calls == [(240, 320)]


def test_pad_chain_tries_each_padding_in_turn_until_one_finds_a_face():
    det = _SeesAbove(100, pad_small=(0.25, 0.5, 1.0))  # 64 -> 96 (no), 128 (yes); 1.0 never tried
    found = det.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.calls == [(64, 64), (96, 96), (128, 128)]
    assert found[0].box == (0.0, 0.0, 64.0, 64.0)  # 128/4 - 32 of padding
    with pytest.raises(D.DetectorError, match="pad_small"):
        D.Detector(pad_small=(0.25, 3.0))


def test_small_scale_retries_on_an_enlarged_copy_and_maps_back():
    det = _SeesAbove(150, small_scale=2.0)  # 64 + 2*16 = 96, enlarged to 192: found
    found = det.detect(np.zeros((64, 64, 3), np.uint8))
    assert det.calls == [(64, 64), (192, 192)]
    assert found[0].box == (8.0, 8.0, 48.0, 48.0)


def test_yunet_small_score_threshold_applies_to_the_padded_retry_only(mtfl_dir):
    from facemtl.runtime.mtfl import read_annotations

    ann = read_annotations(mtfl_dir / "training.txt", mtfl_dir)
    crop, _ = _tight(cv2.imread(str(ann.root / ann.paths[0])), ann.points[0].astype(np.float64), 1.8)
    low = D.YuNetDetector(small_score_threshold=0.05)
    scores = [d.score for d in low._detect_padded(crop)]
    assert [s for s in scores if s >= 0.6] == [d.score for d in D.YuNetDetector()._detect_padded(crop)]
    assert min(scores) < 0.6  # a box only the lower threshold lets through
    assert low._net.getScoreThreshold() == pytest.approx(0.6)  # restored after the retry
    assert D.YuNetDetector(pad_small=0.25)._detect(np.zeros((64, 64, 3), np.uint8)) == []
