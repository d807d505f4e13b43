"""One Euro filter and steady labels, on signals whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from facemtl.runtime.live.smoothing import HeadsSmoother, LabelSmoother, OneEuroFilter, OneEuroParams

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


class _OneHead:
    """The label smoothing of one head written out plainly (how LabelSmoother was written
    before the tracker smoothed all heads at once): the reference for HeadsSmoother."""

    def __init__(self, tau, margin):
        self.tau, self.margin, self.p, self.t, self.index = tau, margin, None, None, None

    def update(self, p, t):
        p = np.asarray(p, np.float64)
        if self.p is None:
            self.p = p.copy()
        else:
            self.p = self.p + (1.0 - math.exp(-max(t - self.t, 0.0) / self.tau)) * (p - self.p)
        self.t = t
        best = int(np.argmax(self.p))
        if self.index is None or self.p[best] - self.p[self.index] > self.margin:
            self.index = best
        return self.index


def test_heads_smoother_is_one_label_smoother_per_head():
    """The tracker smooths every head of a face as one vector (`HeadsSmoother`); the labels
    and averages must be exactly those of smoothing each head alone, LabelSmoother must
    agree too, and an answer handed out must not change when later frames come in."""
    rng = np.random.default_rng(2)
    classes = {"gender": 2, "smile": 2, "pose": 5}
    both = HeadsSmoother(classes, tau=0.5, margin=0.2)
    ref = {h: _OneHead(0.5, 0.2) for h in classes}
    each = {h: LabelSmoother(tau=0.5, margin=0.2) for h in classes}
    first = None
    switches = 0
    for i in range(120):
        # noisy answers whose leading class changes half way
        probs = {h: rng.dirichlet(1.0 + 6.0 * (np.arange(n) == (0 if i < 60 else n - 1))) for h, n in classes.items()}
        got = both.update(probs, i / FPS)
        first = first or {h: (p.copy(), p) for h, (k, p) in got.items()}
        for h in classes:
            before = ref[h].index
            k = ref[h].update(probs[h], i / FPS)
            switches += before is not None and k != before
            assert got[h][0] == k and np.array_equal(got[h][1], ref[h].p)
            assert each[h].update(probs[h], i / FPS) == (k, ref[h].p[k])
    assert switches > 0  # the labels did move: the comparison covers the hysteresis
    assert all(np.array_equal(kept, live) for kept, live in first.values())
