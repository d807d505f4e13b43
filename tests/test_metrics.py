"""Per-head metrics: the bootstrap intervals and the contradicted-label finder (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from train.evaluate import confident_errors, contradicted
from train.metrics import bootstrap_ci, calibration, class_metrics, landmark_metrics


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
