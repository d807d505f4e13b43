"""Per-head metrics: the bootstrap intervals and the contradicted-label finder (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from facemtl.train.evaluate import confident_errors, contradicted
from facemtl.train.metrics import bootstrap_ci, calibration, class_metrics, landmark_metrics


def test_accuracy_interval_matches_the_binomial_spread_and_is_reproducible():
    truth = np.zeros(1000, np.int64)
    pred = np.where(np.arange(1000) < 850, 0, 1)  # 85.0% right
    m = class_metrics(pred, truth, ("a", "b"))
    lo, hi = m.accuracy_ci95
    assert lo < m.accuracy < hi
    # the normal approximation of a binomial: 1.96 * sqrt(p (1 - p) / n) = 2.21 points each side
    assert abs((hi - lo) / 2 - 2.21) < 0.3
    assert class_metrics(pred, truth, ("a", "b")).accuracy_ci95 == [lo, hi]
    # four times the faces, half the width
    m4 = class_metrics(np.tile(pred, 4), np.tile(truth, 4), ("a", "b"))
    assert abs((m4.accuracy_ci95[1] - m4.accuracy_ci95[0]) * 2 - (hi - lo)) < 0.5


def test_interval_collapses_when_every_face_agrees():
    assert bootstrap_ci(np.full(50, 7.5)) == [7.5, 7.5]
    assert all(np.isnan(bootstrap_ci(np.array([]))))


def test_landmark_intervals_bracket_the_mean_and_the_failure_rate():
    rng = np.random.default_rng(1)
    true = np.tile(np.array([[0, 0], [10, 0], [5, 5], [2, 9], [8, 9]], np.float64), (400, 1, 1))
    pred = true + rng.normal(scale=0.6, size=true.shape)
    m = landmark_metrics(pred, true, ["a", "b", "c", "d", "e"])
    assert m.nme_ci95[0] < m.nme < m.nme_ci95[1]
    assert m.failure_rate_ci95[0] <= m.failure_rate <= m.failure_rate_ci95[1]
    assert m.nme_ci95[1] - m.nme_ci95[0] < 0.1 * m.nme


def test_contradicted_lists_confident_disagreements_most_confident_first():
    p = np.array([[0.95, 0.05], [0.5, 0.5], [0.02, 0.98], [0.08, 0.92], [0.99, 0.01]])
    truth = np.array([1, 1, 0, 0, 0])
    assert contradicted(p, truth).tolist() == [2, 0, 3]  # p(annotated) 0.02, 0.05, 0.08; face 1 is unsure
    assert contradicted(p, truth, below=0.03).tolist() == [2]
    assert contradicted(p[:0], truth[:0]).tolist() == []


def test_confident_errors_are_the_wrong_predictions_most_confident_first():
    p = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05], [0.3, 0.3, 0.4]])
    truth = np.array([1, 0, 2, 2, 0])
    # faces 0, 3, 4 are wrong; p(annotated) 0.3, 0.05, 0.3: face 3 first, then 0 and 4 in order
    assert confident_errors(p, truth).tolist() == [3, 0, 4]
    assert contradicted(p, truth).tolist() == [3]


def test_calibration_is_zero_for_honest_scores_and_names_the_lean():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1.0, 20000)
    truth = np.zeros(20000, np.int64)
    pred = np.where(rng.uniform(size=20000) < conf, 0, 1)  # right exactly as often as the score says
    p = np.where(pred[:, None] == 0, np.stack([conf, 1 - conf], 1), np.stack([1 - conf, conf], 1))
    honest = calibration(p, truth, ("a", "b"))
    assert honest["ece"] < 1.5
    # the same answers, every score pushed to 0.99: overconfident by about 24 points
    sure = np.where(pred[:, None] == 0, [0.99, 0.01], [0.01, 0.99])
    assert abs(calibration(sure, truth, ("a", "b"))["ece"] - (99 - 100 * (pred == 0).mean())) < 1.0
    assert calibration(sure, truth, ("a", "b"))["p_true"]["a"] == pytest.approx(0.01 + 0.98 * (pred == 0).mean())
    assert set(calibration(sure, truth, ("a", "b"))["p_true"]) == {"a"}  # only classes that occur


def test_scores_are_broken_down_by_image_folder_when_a_split_mixes_several():
    from pathlib import Path

    from facemtl.runtime.mtfl import Annotations
    from facemtl.runtime.spec import default_spec
    from facemtl.train.evaluate import score
    from facemtl.train.mtfl import Images

    rng = np.random.default_rng(0)
    n = 12
    paths = [f"lfw_5590/{i}.jpg" for i in range(4)] + [f"net_7876/{i}.jpg" for i in range(8)]
    eyes = np.array([[30.0, 40.0], [70.0, 40.0], [50.0, 60.0], [35.0, 80.0], [65.0, 80.0]])
    points = eyes + rng.normal(0, 1, (n, 5, 2))
    labels = {"gender": np.array([0, 1] * 6), "smile": np.zeros(n, int), "glasses": np.ones(n, int),
              "pose": np.full(n, 2)}
    data = Images(Annotations(Path("."), paths, points.astype(np.float32), labels), [None] * n, [])
    mats = np.tile(np.array([[0.01, 0, 0], [0, 0.01, 0]]), (n, 1, 1))  # crop units = pixels / 100
    guess = points.copy()
    guess[4:, :, 0] += 4.0  # every net_7876 face 4 px off (10% of the 40-px eye distance)
    wrong = labels["gender"].copy()
    wrong[6:] = 1 - wrong[6:]  # the last six net_7876 faces get the other gender
    outputs = {"landmarks": (guess / 100.0).reshape(n, 10),
               "gender": np.eye(2)[wrong] * 5.0, "smile": np.eye(2)[labels["smile"]] * 5.0,
               "glasses": np.eye(2)[labels["glasses"]] * 5.0, "pose": np.eye(5)[labels["pose"]] * 5.0}
    heads = score(default_spec(), outputs, mats, data)

    lm = heads["landmarks"]["by_collection"]
    assert {g: v["faces"] for g, v in lm.items()} == {"lfw_5590": 4, "net_7876": 8}
    assert lm["lfw_5590"]["nme"] < 1e-3
    iod = np.linalg.norm(points[4:, 1] - points[4:, 0], axis=1)
    assert lm["net_7876"]["nme"] == pytest.approx(np.mean(100 * 4.0 / iod), rel=1e-4)
    gender = heads["gender"]["by_collection"]
    assert gender["lfw_5590"]["accuracy"] == 100.0
    assert gender["net_7876"]["accuracy"] == pytest.approx(100 * 2 / 8)
    assert heads["gender"]["accuracy"] == pytest.approx(100 * 6 / 12)
    assert heads["smile"]["by_collection"]["net_7876"]["accuracy"] == 100.0

    # one folder only (the test split): no breakdown
    one = Images(Annotations(Path("."), [f"AFLW/{i}.jpg" for i in range(n)], points.astype(np.float32), labels),
                 [None] * n, [])
    assert "by_collection" not in score(default_spec(), outputs, mats, one)["gender"]
