"""One Euro filter and steady labels, on signals whose truth is known."""

from __future__ import annotations

import numpy as np
import pytest

from facemtl.runtime.live.smoothing import LabelSmoother, OneEuroFilter, OneEuroParams

FPS = 30.0


def _face(t: float, speed: float) -> np.ndarray:
    """Five points of a 60-pixel face moving right at `speed` pixels per second."""
    base = np.array([[0.0, 0.0], [40.0, 0.0], [20.0, 20.0], [5.0, 40.0], [35.0, 40.0]]) + 100
    return base + [speed * t, 0.0]


def test_still_points_lose_most_of_their_noise():
    """The filter alone, open loop, on noise of 0.25% of the face size per point (what the
    tracker's raw landmarks show on the still sample face: 0.6 px on a 150-pixel face)."""
    rng = np.random.default_rng(0)
    f = OneEuroFilter(OneEuroParams())
    raw, out = [], []
    for i in range(300):
        x = _face(i / FPS, 0.0) + rng.normal(0, 0.15, (5, 2))
        raw.append(x)
        out.append(f(x, i / FPS, scale=60.0))
    raw, out = np.array(raw[100:]), np.array(out[100:])
    assert raw.std(axis=0).mean() / out.std(axis=0).mean() > 3.0


def test_moving_points_lag_by_at_most_one_frame():
    rng = np.random.default_rng(1)
    f = OneEuroFilter(OneEuroParams())
    speed = 150.0  # pixels per second: 2.5 face sizes per second
    lags = []
    for i in range(120):
        t = i / FPS
        y = f(_face(t, speed) + rng.normal(0, 1.0, (5, 2)), t, scale=60.0)
        if i > 30:
            lags.append((_face(t, speed)[:, 0] - y[:, 0]).mean() / speed * FPS)
    assert abs(np.mean(lags)) < 1.0


def test_shared_cutoff_keeps_the_shape():
    f = OneEuroFilter(OneEuroParams())
    for i in range(60):
        y = f(_face(i / FPS, 200.0), i / FPS, scale=60.0)
    d = y - y.mean(axis=0)
    truth = _face(0, 0) - _face(0, 0).mean(axis=0)
    assert np.allclose(d, truth, atol=1e-6)


def test_first_sample_passes_and_repeated_time_holds():
    f = OneEuroFilter()
    x = _face(0, 0)
    assert np.array_equal(f(x, 1.0), x)
    assert np.array_equal(f(x + 10, 1.0), x)


def test_bad_params():
    with pytest.raises(ValueError):
        OneEuroParams(min_cutoff=0)
    with pytest.raises(ValueError):
        OneEuroParams(beta=-1)


def test_labels_do_not_flicker_on_a_borderline_face():
    s = LabelSmoother(tau=0.5, margin=0.2)
    shown = set()
    for i in range(90):
        p = np.array([0.45, 0.55]) if i % 2 else np.array([0.55, 0.45])
        shown.add(s.update(p, i / FPS)[0])
    assert len(shown) == 1


def test_labels_follow_a_real_change_within_a_second():
    s = LabelSmoother(tau=0.5, margin=0.2)
    for i in range(30):
        assert s.update(np.array([0.9, 0.1]), i / FPS)[0] == 0
    switched = None
    for i in range(30, 90):
        k, score = s.update(np.array([0.1, 0.9]), i / FPS)
        if k == 1 and switched is None:
            switched = i - 30
    assert switched is not None and switched <= 30
    assert score > 0.8
