"""What the analyzer hands back: plain dataclasses, JSON-ready. No face is an empty list."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Category:
    """One class answer of a classification head (MediaPipe's Category)."""

    index: int
    label: str
    score: float

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4)}


@dataclass
class Face:
    box: tuple[float, float, float, float]         # x, y, w, h in image pixels (the detector's box)
    score: float                                   # detector confidence
    landmarks: np.ndarray                          # (5, 2) image pixels, MTFL order
    attributes: dict[str, Category] = field(default_factory=dict)
    id: int | None = None                          # stable across frames in video mode

    def to_dict(self) -> dict:
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in np.asarray(self.landmarks)],
            "attributes": {k: c.to_dict() for k, c in self.attributes.items()},
        }
        if self.id is not None:
            d = {"id": self.id, **d}
        return d


@dataclass
class FrameResult:
    faces: list[Face]
    timestamp_ms: float | None = None
    latency_ms: float = 0.0
    stages_ms: dict[str, float] = field(default_factory=dict)  # detect, crop, infer, ...

    def to_dict(self) -> dict:
        return {"faces": [f.to_dict() for f in self.faces]}
