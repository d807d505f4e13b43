"""Smoothing for video mode: the One Euro filter on landmarks, and steady attribute labels.

One Euro filter (Casiez, Roussel and Vogel, CHI 2012): a first-order low-pass filter whose
cutoff rises with the signal's speed, cutoff = min_cutoff + beta * |speed|. A still face is
smoothed hard (jitter goes), a moving one lightly (lag stays small). Here the five points
of a face share one cutoff, taken from their RMS speed in face sizes per second, so the
face keeps its shape and `beta` means the same for a small face and a big one.

Attribute labels: an exponential moving average of each head's probabilities over time
(time constant `tau` seconds) plus hysteresis: the shown label changes only when another
class leads the shown one by `margin`, so a 0.49/0.51 face does not flicker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _alpha(cutoff_hz: float, dt_s: float) -> float:
    """Smoothing factor of an exponential filter with this cutoff, for a step of dt."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


@dataclass(frozen=True)
class OneEuroParams:
    """min_cutoff (Hz): the cutoff of a still signal; lower = less jitter, more lag.
    beta: how fast the cutoff rises with speed (per face size per second); higher = less lag
    on motion. d_cutoff (Hz): the cutoff of the speed estimate itself."""

    min_cutoff: float = 0.3
    beta: float = 30.0
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise ValueError(f"One Euro filter needs min_cutoff > 0, d_cutoff > 0 and beta >= 0; got {self}")


class OneEuroFilter:
    """One Euro filter over an array (e.g. (5, 2) landmarks) with one shared cutoff.

        f = OneEuroFilter(OneEuroParams(min_cutoff=0.3, beta=30.0))
        smooth = f(points, t_s, scale=face_size)

    `t_s`: the sample's time in seconds (must increase; a repeated time returns the last
    output). `scale`: the size that speeds are measured in (pixels of one face size), so
    beta does not depend on how big the face is on screen.
    """

    def __init__(self, params: OneEuroParams = OneEuroParams()):
        self.params = params
        self.reset()

    def reset(self) -> None:
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None
        self.cutoff = self.params.min_cutoff

    def __call__(self, x: np.ndarray, t_s: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t_s)
            return self._x.copy()
        dt = float(t_s) - self._t
        if dt <= 0:
            return self._x.copy()
        p = self.params
        a_d = _alpha(p.d_cutoff, dt)
        self._dx = self._dx + a_d * ((x - self._x) / dt - self._dx)
        # the speed of the points' centroid (of the whole vector for a 1-D one), in `scale`
        # units per second: landmark noise is largely independent per point, so the centroid
        # carries sqrt(5) times less of it than the points do, and a moving face moves it.
        # (mean and norm written out: the same arithmetic as np.mean and np.linalg.norm, at
        # a fraction of their call cost, which on a tracked crowd is paid per face and frame)
        if self._dx.ndim > 1:
            flat = self._dx.reshape(-1, self._dx.shape[-1])
            d = flat.sum(axis=0) / len(flat)
        else:
            d = self._dx
        speed = math.sqrt(float(d.dot(d))) / max(float(scale), 1e-9)
        self.cutoff = p.min_cutoff + p.beta * speed
        a = _alpha(self.cutoff, dt)
        self._x = self._x + a * (x - self._x)
        self._t = float(t_s)
        return self._x.copy()


class HeadsSmoother:
    """Steady labels for several classification heads of one face at once: `LabelSmoother`
    for each head, their averages kept side by side in one vector, so a tracked face costs
    a few numpy calls a frame however many heads it has (the same numbers as one
    `LabelSmoother` a head: the average is elementwise, and every head of a face is updated
    at the same times).

        s = HeadsSmoother({"gender": 2, "pose": 5}, tau=0.5, margin=0.2)
        shown = s.update({"gender": p_gender, "pose": p_pose}, t_s)   # {head: (index, averaged probabilities)}
    """

    def __init__(self, classes: dict[str, int], tau: float = 0.5, margin: float = 0.2):
        if tau < 0 or not 0 <= margin < 1:
            raise ValueError(f"LabelSmoother needs tau >= 0 and 0 <= margin < 1; got tau={tau}, margin={margin}")
        self.tau = tau
        self.margin = margin
        self._slices: dict[str, tuple[int, int]] = {}
        end = 0
        for name, n in classes.items():
            self._slices[name] = (end, end + int(n))
            end += int(n)
        self._p: np.ndarray | None = None
        self._t: float | None = None
        self.index: dict[str, int | None] = dict.fromkeys(classes)

    def update(self, probabilities: dict[str, np.ndarray], t_s: float) -> dict[str, tuple[int, np.ndarray]]:
        parts = [probabilities[name] for name in self._slices]
        p = np.concatenate(parts, dtype=np.float64, axis=None) if len(parts) > 1 else np.asarray(parts[0], np.float64)
        if self._p is None or self._p.shape != p.shape:
            self._p = p.copy()
        else:
            dt = max(float(t_s) - self._t, 0.0)
            k = 1.0 if self.tau == 0 else 1.0 - math.exp(-dt / self.tau)
            # a new array, not in place: the last frame's answers keep the probabilities they had
            self._p = self._p + k * (p - self._p)
        self._t = float(t_s)
        q = self._p.tolist()  # a few classes: plain floats compare faster than numpy scalars
        out = {}
        for name, (a, b) in self._slices.items():
            seg = q[a:b]
            best = seg.index(max(seg))  # the first of equal maxima, as np.argmax
            shown = self.index[name]
            if shown is None or seg[best] - seg[shown] > self.margin:
                self.index[name] = shown = best
            out[name] = (shown, self._p[a:b])
        return out


class LabelSmoother:
    """Steady labels for one classification head of one face.

    `update(probabilities, t_s) -> (index, score)`: the shown class and its averaged
    probability. The average has time constant `tau` seconds; the shown class changes only
    when another leads it by more than `margin`. (`HeadsSmoother` with one head.)
    """

    def __init__(self, tau: float = 0.5, margin: float = 0.2):
        HeadsSmoother({}, tau, margin)  # checks tau and margin now, not at the first update
        self.tau = tau
        self.margin = margin
        self._heads: HeadsSmoother | None = None  # made at the first update, when the classes are known
        self._p: np.ndarray | None = None

    @property
    def index(self) -> int | None:
        return None if self._heads is None else self._heads.index[""]

    def update(self, probabilities: np.ndarray, t_s: float) -> tuple[int, float]:
        p = np.asarray(probabilities, dtype=np.float64).ravel()
        if self._heads is None or self._p.shape != p.shape:
            self._heads = HeadsSmoother({"": len(p)}, self.tau, self.margin)
        index, self._p = self._heads.update({"": p}, t_s)[""]
        return index, float(self._p[index])

    @property
    def probabilities(self) -> np.ndarray | None:
        """The averaged probabilities of every class (None before the first update)."""
        return self._p
