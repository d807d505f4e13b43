"""Per-head metrics in numpy, shared by `evaluate`, the conversion checks and the benchmarks.

Landmarks are scored as the literature does: mean point-to-point distance over the
inter-ocular distance (eye centre to eye centre), per face, in percent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FAILURE_NME = 10.0  # percent: a face whose NME exceeds this is a failure
BOOTSTRAP = 2000     # resamples behind each 95% interval


def bootstrap_ci(per_face: np.ndarray, statistic=np.mean, resamples: int = BOOTSTRAP, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of `statistic` over faces (resampled with replacement).

    Seeded, so a report is reproducible. It says how far a figure could move on another draw
    of faces like these: on 1,016 validation faces an accuracy near 85% spans about +-2.2
    points, on 2,995 test faces about +-1.3, which is the scale of the differences between
    training runs (README, "How the default was chosen").
    """
    x = np.asarray(per_face, np.float64)
    if len(x) == 0:
        return [float("nan"), float("nan")]
    idx = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    stats = statistic(x[idx], axis=1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [float(lo), float(hi)]


def nme_per_face(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 5, 2) points in any one unit (pixels or crop units) -> (N,) NME in percent."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1, 2)
    true = np.asarray(true, np.float64).reshape(len(true), -1, 2)
    iod = np.linalg.norm(true[:, 1] - true[:, 0], axis=1)
    return 100.0 * np.linalg.norm(pred - true, axis=2).mean(axis=1) / np.maximum(iod, 1e-9)


def nme_per_point(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(N, 5) per-landmark normalised error in percent."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1, 2)
    true = np.asarray(true, np.float64).reshape(len(true), -1, 2)
    iod = np.linalg.norm(true[:, 1] - true[:, 0], axis=1)
    return 100.0 * np.linalg.norm(pred - true, axis=2) / np.maximum(iod, 1e-9)[:, None]


def ced_auc(nme: np.ndarray, limit: float = FAILURE_NME, steps: int = 1000) -> float:
    """Area under the cumulative error distribution up to `limit` percent, normalised to 0..1."""
    t = np.linspace(0.0, limit, steps + 1)
    frac = (np.asarray(nme)[None, :] <= t[:, None]).mean(axis=1)
    return float(np.trapezoid(frac, t) / limit)


@dataclass
class LandmarkMetrics:
    faces: int
    nme: float                  # mean NME, percent
    nme_median: float
    failure_rate: float         # percent of faces with NME > 10%
    auc10: float                # area under the CED up to 10%, 0..1
    per_landmark: dict[str, float]
    nme_ci95: list[float]       # 95% bootstrap interval of the mean NME
    failure_rate_ci95: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def landmark_metrics(pred: np.ndarray, true: np.ndarray, names) -> LandmarkMetrics:
    per_face = nme_per_face(pred, true)
    per_point = nme_per_point(pred, true).mean(axis=0)
    return LandmarkMetrics(
        faces=len(per_face),
        nme=float(per_face.mean()),
        nme_median=float(np.median(per_face)),
        failure_rate=float(100.0 * (per_face > FAILURE_NME).mean()),
        auc10=ced_auc(per_face),
        per_landmark={n: float(v) for n, v in zip(names, per_point)},
        nme_ci95=bootstrap_ci(per_face),
        failure_rate_ci95=bootstrap_ci(100.0 * (per_face > FAILURE_NME)),
    )


@dataclass
class ClassMetrics:
    faces: int
    accuracy: float            # percent
    balanced_accuracy: float   # percent: mean recall over classes present in the truth
    labels: list[str]
    confusion: list[list[int]]  # rows: true class, columns: predicted class
    accuracy_ci95: list[float]  # 95% bootstrap interval of the accuracy, percent

    def to_dict(self) -> dict:
        return asdict(self)


def class_metrics(pred_ids: np.ndarray, true_ids: np.ndarray, labels) -> ClassMetrics:
    pred_ids = np.asarray(pred_ids, np.int64)
    true_ids = np.asarray(true_ids, np.int64)
    k = len(labels)
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (true_ids, pred_ids), 1)
    support = cm.sum(axis=1)
    present = support > 0
    recall = np.diag(cm)[present] / support[present]
    return ClassMetrics(
        faces=int(len(true_ids)),
        accuracy=float(100.0 * (pred_ids == true_ids).mean()),
        balanced_accuracy=float(100.0 * recall.mean()),
        labels=list(labels),
        confusion=cm.tolist(),
        accuracy_ci95=bootstrap_ci(100.0 * (pred_ids == true_ids)),
    )


def calibration(probabilities: np.ndarray, true_ids: np.ndarray, labels, bins: int = 15) -> dict:
    """How far a head's scores can be read as probabilities.

    `ece`: expected calibration error of the top score, in points (15 equal-width bins: the
    mean gap between confidence and accuracy, weighted by faces); `confidence`: the mean top
    score; `p_true`: per annotated class, the mean score the head gives that class. A head
    trained with class-balanced logits answers the balanced question, so its scores are not
    calibrated to any one data set's class mix; `p_true` shows where they lean.
    """
    p = np.asarray(probabilities, np.float64)
    true_ids = np.asarray(true_ids, np.int64)
    top = p.max(axis=1)
    which = np.minimum((top * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    hit = counts > 0
    accuracy = np.bincount(which, weights=p.argmax(axis=1) == true_ids, minlength=bins)[hit] / counts[hit]
    confidence = np.bincount(which, weights=top, minlength=bins)[hit] / counts[hit]
    ece = np.abs(accuracy - confidence) @ counts[hit] / max(len(top), 1)
    p_true = p[np.arange(len(true_ids)), true_ids]
    return {"ece": float(100.0 * ece), "confidence": float(top.mean()) if len(top) else float("nan"),
            "p_true": {label: float(p_true[true_ids == k].mean())
                       for k, label in enumerate(labels) if (true_ids == k).any()}}
