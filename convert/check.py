"""Per-head accuracy check of a converted file against the Keras model on the same crops.

A multi-task model fails quietly when quantized: one head can collapse while the others look
fine. So every head is judged on its own: its metric for Keras and for the file (landmark
NME, class accuracy), the difference, how often the predicted classes agree, and the largest
output difference. Tolerances come from the head's spec (`tolerance`, `min_agreement`) and
can be overridden per head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

import numpy as np

from facemtl.runtime.spec import REGRESSION, HeadSpec, ModelSpec

PASSED = "passed"
CHECK_FAILED = "check failed"
EXPORT_FAILED = "export failed"


@dataclass(frozen=True)
class Limits:
    """How far one head may move: metric points (NME up / accuracy down) and class agreement."""

    tolerance: float
    min_agreement: float | None  # fraction 0..1; None for regression heads

    @classmethod
    def for_head(cls, head: HeadSpec, tolerances: Mapping[str, float] | None = None,
                 agreements: Mapping[str, float] | None = None) -> "Limits":
        tol = (tolerances or {}).get(head.name, head.tolerance)
        agree = None if head.kind == REGRESSION else (agreements or {}).get(head.name, head.min_agreement)
        return cls(float(tol), None if agree is None else float(agree))


@dataclass
class HeadCheck:
    head: str
    metric: str                    # "nme" (percent, lower is better) or "accuracy" (percent)
    keras: float | None            # None: no ground truth for this head in the data
    converted: float | None
    delta: float | None            # converted - keras, in metric points
    tolerance: float
    agreement: float | None        # fraction of faces with the same predicted class
    min_agreement: float | None
    max_abs_diff: float            # largest |converted - keras| over all outputs of the head
    atol: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    interpreter: str = ""          # what ran the file: litert, tflite-runtime, onnxruntime

    def to_dict(self) -> dict:
        return asdict(self)


def head_metric(head: HeadSpec, raw: np.ndarray, landmarks: np.ndarray, labels: Mapping[str, np.ndarray]) -> float | None:
    """NME in percent (regression) or accuracy in percent (classes) of raw outputs; None without truth."""
    from facemtl.train.metrics import nme_per_face

    if head.kind == REGRESSION:
        return float(nme_per_face(raw, landmarks).mean())
    truth = labels.get(head.name)
    if truth is None:
        return None
    return float(100.0 * np.mean(np.argmax(raw, axis=1) == np.asarray(truth)))


def check_head(head: HeadSpec, keras_raw: np.ndarray, raw: np.ndarray, landmarks: np.ndarray,
               labels: Mapping[str, np.ndarray], limits: Limits, atol: float | None = None,
               interpreter: str = "") -> HeadCheck:
    keras_raw = np.asarray(keras_raw, np.float32).reshape(len(keras_raw), -1)
    raw = np.asarray(raw, np.float32).reshape(len(raw), -1)
    if keras_raw.shape != raw.shape:
        raise ValueError(f"head {head.name!r}: Keras outputs {keras_raw.shape} but the file gives {raw.shape}")
    k = head_metric(head, keras_raw, landmarks, labels)
    c = head_metric(head, raw, landmarks, labels)
    delta = None if k is None or c is None else c - k
    max_diff = float(np.abs(raw - keras_raw).max()) if raw.size else 0.0
    reasons = []
    if not np.all(np.isfinite(raw)):
        reasons.append("outputs are not finite")
    if delta is not None:
        worse = delta if head.kind == REGRESSION else -delta
        if worse > limits.tolerance:
            reasons.append(f"{head.metric} {'up' if head.kind == REGRESSION else 'down'} {worse:.3f} points "
                           f"> {limits.tolerance:g}")
    agreement = None
    if head.kind != REGRESSION:
        agreement = float(np.mean(np.argmax(raw, axis=1) == np.argmax(keras_raw, axis=1))) if len(raw) else 1.0
        if limits.min_agreement is not None and agreement < limits.min_agreement:
            reasons.append(f"agreement {agreement:.1%} < {limits.min_agreement:.1%}")
    if atol is not None and max_diff > atol:
        reasons.append(f"max |diff| {max_diff:.2g} > {atol:g}")
    return HeadCheck(head.name, head.metric, k, c, delta, limits.tolerance, agreement, limits.min_agreement,
                     max_diff, atol, not reasons, reasons, interpreter)


def check_outputs(spec: ModelSpec, keras_out: Mapping[str, np.ndarray], out: Mapping[str, np.ndarray],
                  landmarks: np.ndarray, labels: Mapping[str, np.ndarray],
                  tolerances: Mapping[str, float] | None = None, agreements: Mapping[str, float] | None = None,
                  atol: float | None = None, interpreter: str = "") -> list[HeadCheck]:
    """One HeadCheck per head of `spec`, outputs matched by head name."""
    return [check_head(h, keras_out[h.name], out[h.name], landmarks, labels,
                       Limits.for_head(h, tolerances, agreements), atol, interpreter) for h in spec.heads]


def keras_outputs(model, x: np.ndarray, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The float model's raw outputs by head name (inference mode)."""
    parts = []
    for i in range(0, len(x), batch_size):
        y = model(x[i:i + batch_size], training=False)
        parts.append({k: np.asarray(v, np.float32) for k, v in y.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
