"""What the analyzer hands back: plain dataclasses, JSON-ready. No face is an empty list.

Field names follow MediaPipe Tasks where it has the same idea (`Category(index, score,
display_name, category_name)`), and every field means the same in IMAGE and VIDEO mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from facemtl.runtime.preprocess import Square
from facemtl.runtime.spec import HeadSpec


@dataclass(frozen=True)
class Category:
    """One class of a classification head and its probability (MediaPipe's Category)."""

    index: int
    score: float
    display_name: str    # for people: "not smiling"
    category_name: str   # the head's label, as in the spec and the JSON: "not_smiling"

    def to_dict(self) -> dict:
        return {"label": self.category_name, "score": round(float(self.score), 4)}


class Classification:
    """One classification head's answer for one face: every class with its probability.

    `top` is the answer: the most probable class in IMAGE mode; in VIDEO mode the label
    shown after smoothing over time, which changes only when another class leads by a margin
    (`TrackingOptions.attribute_margin`), so it can briefly differ from the most probable.
    The `Category` objects are made when first asked for (a tracked frame makes one of these
    per head and face).
    """

    __slots__ = ("head_name", "labels", "probabilities", "top_index", "_categories")

    def __init__(self, head_name: str, labels: tuple[str, ...], probabilities: np.ndarray, top_index: int):
        self.head_name = head_name
        self.labels = tuple(labels)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.top_index = int(top_index)
        self._categories: tuple[Category, ...] | None = None

    @classmethod
    def of(cls, head: HeadSpec, probabilities: np.ndarray, top_index: int | None = None) -> "Classification":
        p = np.asarray(probabilities, dtype=np.float64)
        return cls(head.name, head.labels, p, int(np.argmax(p)) if top_index is None else top_index)

    @property
    def categories(self) -> tuple[Category, ...]:
        """Every class, in the head's label order."""
        if self._categories is None:
            self._categories = tuple(Category(i, float(self.probabilities[i]), name.replace("_", " "), name)
                                     for i, name in enumerate(self.labels))
        return self._categories

    @property
    def top(self) -> Category:
        return self.categories[self.top_index]

    def __getitem__(self, category_name: str) -> Category:
        for c in self.categories:
            if c.category_name == category_name:
                return c
        raise KeyError(f"head {self.head_name!r} has no class {category_name!r}; its classes: {list(self.labels)}")

    def __eq__(self, other) -> bool:
        return (isinstance(other, Classification) and (self.head_name, self.labels, self.top_index)
                == (other.head_name, other.labels, other.top_index)
                and np.array_equal(self.probabilities, other.probabilities))

    __hash__ = None

    def __repr__(self) -> str:
        return f"Classification({self.head_name!r}, top={self.top!r})"

    def to_dict(self) -> dict:
        return {**self.top.to_dict(),
                "scores": {name: round(float(p), 4) for name, p in zip(self.labels, self.probabilities)}}


@dataclass
class Face:
    """One face of a frame.

    box: the face in the detector's framing, x, y, w, h in image pixels: the detection, or,
        in VIDEO mode for a face followed from its own landmarks, the box its detector would
        give for the square the model saw (the last detection's box, moved and scaled with
        the square).
    score: the detector's confidence (in VIDEO mode, of the detection that last confirmed it).
    square: the square the model saw (centre, side, roll in degrees), image pixels.
    landmarks: (K, 2) image pixels, in `landmark_names` order (MTFL's five points).
    attributes: one `Classification` per classification head, by head name.
    id: stable across the frames of a stream in VIDEO mode; None in IMAGE mode.
    """

    box: tuple[float, float, float, float]
    score: float
    square: Square
    landmarks: np.ndarray
    landmark_names: tuple[str, ...] = ()
    attributes: dict[str, Classification] = field(default_factory=dict)
    id: int | None = None

    def landmark(self, name: str) -> np.ndarray:
        """One landmark's (x, y) by name, e.g. `face.landmark("nose")`."""
        try:
            return self.landmarks[self.landmark_names.index(name)]
        except ValueError:
            raise KeyError(f"no landmark {name!r}; this model's: {list(self.landmark_names)}") from None

    def to_dict(self) -> dict:
        d = {
            "box": [round(float(v), 1) for v in self.box],
            "score": round(float(self.score), 4),
            "square": [round(float(v), 1) for v in self.square.as_array()],
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
    stages_ms: dict[str, float] = field(default_factory=dict)  # decode, detect, crop, infer, ...

    def to_dict(self) -> dict:
        return {"faces": [f.to_dict() for f in self.faces]}
