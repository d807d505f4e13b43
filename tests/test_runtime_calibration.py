"""Detector calibration: the fit on boxes with a known offset, the MTFL reader, the
`facemtl calibrate` command, and the measured calibrations of Haar and YuNet on MTFL."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from facemtl.runtime import calibration as C
from facemtl.runtime.cli import main
from facemtl.runtime.detectors import Detection, Detector, YuNetDetector, create_detector
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import BoxCalibration, CropPolicy, ModelSpec, default_spec

POLICY = CropPolicy()


def random_faces(n: int, seed: int = 0):
    """n (image, landmarks) pairs: blank 200x200 images, a random face square each."""
    rng = np.random.default_rng(seed)
    template = np.array([[-1, -0.6], [1, -0.6], [0, 0.1], [-0.8, 1.0], [0.8, 1.0]])
    pts = []
    for _ in range(n):
        s = rng.uniform(8, 20)
        c = rng.uniform(70, 130, 2)
        pts.append(template * s + c + rng.normal(0, 0.5, (5, 2)))
    return [np.zeros((200, 200), np.uint8) for _ in range(n)], np.array(pts)


class KnownBoxes(Detector):
    """A detector whose box for the face in image i is a known transform of the truth,
    with noise, an occasional mirrored box, and a distractor box elsewhere."""

    name = "known"

    def __init__(self, points, dx, dy, scale, noise=0.01, miss_every=10, seed=1):
        super().__init__(None)
        self.points, self.k = points, (dx, dy, scale)
        self.noise, self.miss_every = noise, miss_every
        self.rng = np.random.default_rng(seed)
        self.i = 0

    def detect(self, image):
        i, self.i = self.i, self.i + 1
        out = [Detection((0.0, 0.0, 20.0, 20.0), 0.9, "known")]  # a false positive in the corner
        if i % self.miss_every == 0:
            return out
        sq = canonical_square(self.points[i], POLICY)
        dx, dy, scale = self.k
        mirrored = i % 4 == 1
        if mirrored:
            dx = -dx
        w = sq.side / scale * math.exp(self.rng.normal(0, self.noise))
        cx = sq.cx - dx * w + self.rng.normal(0, self.noise) * w
        cy = sq.cy - dy * w + self.rng.normal(0, self.noise) * w
        out.append(Detection((cx - w / 2, cy - w / 2, w, w), 0.8, "known", mirrored=mirrored))
        return out


def test_fit_recovers_a_known_offset_with_mirrored_boxes_and_misses():
    images, pts = random_faces(120)
    report = C.measure(KnownBoxes(pts, dx=-0.15, dy=0.1, scale=0.8), images, pts, POLICY)
    cal = report.calibrations["known"]
    assert cal.dx == pytest.approx(-0.15, abs=0.01)
    assert cal.dy == pytest.approx(0.1, abs=0.01)
    assert cal.scale == pytest.approx(0.8, rel=0.02)
    assert report.matched == 120 - 12  # every 10th image has only the false positive
    assert report.match_rate == pytest.approx(108 / 120)
    fit = report.fits["known"]
    assert fit.faces == cal.faces == 108
    assert fit.shift_p50 < 0.02 and fit.within_jitter > 0.95
    assert "known" in report.summary() and json.dumps(report.to_dict())


def test_fit_is_robust_to_outliers():
    images, pts = random_faces(100, seed=3)
    det = KnownBoxes(pts, dx=0.0, dy=0.2, scale=1.1, noise=0.08, miss_every=1000)
    cal = C.calibrate(det, images, pts, POLICY)["known"]
    assert cal.dy == pytest.approx(0.2, abs=0.04) and cal.scale == pytest.approx(1.1, rel=0.06)


def test_too_few_matches_is_an_error():
    images, pts = random_faces(12)
    with pytest.raises(C.CalibrationError, match="too few"):
        C.calibrate(KnownBoxes(pts, 0, 0, 1, miss_every=2), images, pts, POLICY)
    with pytest.raises(C.CalibrationError, match="one face per image"):
        C.measure(KnownBoxes(pts, 0, 0, 1), images[:3], pts, POLICY)


def test_calibrate_spec_merges_and_keeps_others():
    images, pts = random_faces(40)
    spec = default_spec().replace(crop=CropPolicy(calibrations={"yunet": BoxCalibration(0.1, 0.2, 1.3, 5)}))
    new, reports = C.calibrate_spec(spec, [KnownBoxes(pts, 0.05, 0.0, 0.9)], images, pts)
    assert set(new.crop.calibrations) == {"yunet", "known"}
    assert new.crop.calibrations["yunet"] == spec.crop.calibrations["yunet"]
    assert new.heads == spec.heads and len(reports) == 1


def test_read_landmark_file_takes_the_mtfl_quirks(tmp_path):
    (tmp_path / "t.txt").write_bytes(
        b"a\\x.jpg 1 2 3 4 5 6 7 8 9 10 1 2 2 3\r\n b/y.jpg 1 1 1 1 1 2 2 2 2 2 1 1 1 1\r\n\r\n")
    paths, pts = C.read_landmark_file(tmp_path / "t.txt")
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a/x.jpg", "b/y.jpg"]
    np.testing.assert_array_equal(pts[0], [[0, 5], [1, 6], [2, 7], [3, 8], [4, 9]])  # 1-based -> 0-based
    _, raw = C.read_landmark_file(tmp_path / "t.txt", origin=0.0)
    np.testing.assert_array_equal(raw[0], [[1, 6], [2, 7], [3, 8], [4, 9], [5, 10]])
    (tmp_path / "bad.txt").write_text("a.jpg 1 2 3\n")
    with pytest.raises(C.CalibrationError, match="bad.txt:1"):
        C.read_landmark_file(tmp_path / "bad.txt")


def test_spread_subset():
    assert list(C.spread_subset(5, None)) == [0, 1, 2, 3, 4]
    idx = C.spread_subset(1000, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 999


# --- the command -------------------------------------------------------------------------
def test_calibrate_command_writes_spec_json(tmp_path, tiny_mtfl):
    model = tmp_path / "model"
    model.mkdir()
    default_spec().save(model / "spec.json")
    before = (model / "spec.json").read_text()
    rc = main(["calibrate", str(model), "--data", str(tiny_mtfl), "--detectors", "none", "--limit", "40",
               "--json", str(tmp_path / "report.json")])
    assert rc == 0
    spec = ModelSpec.load(model / "spec.json")
    assert set(spec.crop.calibrations) == {"none"} and spec.crop.calibrations["none"].faces == 40
    assert spec.heads == default_spec().heads and (model / "spec.json").read_text() != before
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reports"][0]["matched"] == 40


def test_calibrate_command_errors_leave_spec_alone(tmp_path, tiny_mtfl, capsys):
    model = tmp_path / "model"
    model.mkdir()
    default_spec().save(model / "spec.json")
    before = (model / "spec.json").read_bytes()
    assert main(["calibrate", str(model), "--data", str(tiny_mtfl), "--detectors", "sift"]) == 2
    assert "unknown detector" in capsys.readouterr().err
    assert main(["calibrate", str(model), "--data", str(tmp_path), "--detectors", "none"]) == 2
    assert "training.txt" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path / "nope"), "--data", str(tiny_mtfl)]) == 2
    assert (model / "spec.json").read_bytes() == before


# --- on MTFL training images ---------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(mtfl_dir):
    paths, pts = C.read_landmark_file(mtfl_dir / "training.txt", mtfl_dir)
    keep = C.spread_subset(len(paths), 40)
    return [cv2.imread(str(paths[i])) for i in keep], pts[keep]


@pytest.mark.data
def test_haar_calibration_on_mtfl(sample):
    images, pts = sample
    report = C.measure(create_detector("haar"), images, pts, POLICY)
    assert report.match_rate > 0.8
    cal = report.calibrations["haar"]
    # the frontal box sits high on the face and is wider than the landmarks' square: about 4.1
    # RMS landmark radii (measured on 1,000 images: dy 0.083, box = 4.17 radii at crop scale 3.0,
    # 4.17 at 3.6); in radii, so the check holds whatever square the policy asks for
    box_radii = POLICY.scale / cal.scale
    assert abs(cal.dx) < 0.03 and 0.05 < cal.dy < 0.14 and 3.8 < box_radii < 4.5
    # residual centre error p90 in landmark radii (the fit reports it in units of the square)
    assert report.fits["haar"].shift_p90 * POLICY.scale < 0.29


@pytest.mark.data
def test_yunet_landmark_square_needs_almost_no_calibration(sample, yunet_path):
    images, pts = sample
    report = C.measure(YuNetDetector(yunet_path), images, pts, POLICY)
    assert report.match_rate > 0.97
    cal = report.calibrations["yunet"]
    assert abs(cal.dx) < 0.02 and abs(cal.dy) < 0.03 and abs(cal.scale - 1) < 0.05
    box = C.measure(YuNetDetector(yunet_path, from_landmarks=False), images, pts, POLICY)
    # framing by its points is tighter than by its box
    assert report.fits["yunet"].shift_p90 < box.fits["yunet_box"].shift_p90
