"""Drawing results on a frame: box, five landmarks, id, attribute labels with their
probabilities, and a heads-up line with FPS and per-stage times. OpenCV only, in place."""

from __future__ import annotations

from typing import Mapping

import cv2
import numpy as np

from facemtl.runtime.results import FrameResult

# BGR; one colour per face id, so a face keeps its colour while it is tracked
_PALETTE = ((80, 220, 80), (255, 170, 40), (60, 160, 255), (230, 90, 230), (40, 220, 220), (170, 120, 255))
_LANDMARK_COLOURS = ((0, 255, 255), (0, 255, 255), (0, 0, 255), (255, 0, 255), (255, 0, 255))
STAGES = ("capture", "detect", "crop", "infer", "draw")
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _panel(image: np.ndarray, lines: list[str], org: tuple[int, int], colour, scale: float = 0.45,
           step: int = 16) -> None:
    """Lines of text on a darkened panel, readable on any background. (An outlined text,
    putText at thickness 3, costs ten times more: a quarter of a millisecond per line.)"""
    if not lines:
        return
    h, w = image.shape[:2]
    width = max(cv2.getTextSize(t, _FONT, scale, 1)[0][0] for t in lines) + 8
    x0, y0 = max(org[0] - 4, 0), max(org[1] - step + 3, 0)
    x1, y1 = min(x0 + width, w), min(y0 + step * len(lines) + 6, h)
    if x1 > x0 and y1 > y0:
        roi = image[y0:y1, x0:x1]
        np.right_shift(roi, 1, out=roi)
    y = org[1]
    for t in lines:
        cv2.putText(image, t, (org[0], y), _FONT, scale, colour, 1, cv2.LINE_AA)
        y += step


def attribute_lines(face) -> list[str]:
    """"female 0.93"-style lines, one per classification head, in the model's head order."""
    return [f"{c.top.category_name} {c.top.score:.2f}" for c in face.attributes.values()]


def draw(image: np.ndarray, result: FrameResult, fps: float | None = None,
         stages_ms: Mapping[str, float] | None = None) -> np.ndarray:
    """Draw `result` onto `image` (BGR uint8, changed in place, also returned)."""
    h, w = image.shape[:2]
    for k, face in enumerate(result.faces):
        colour = _PALETTE[(face.id if face.id is not None else k) % len(_PALETTE)]
        x, y, bw, bh = (int(round(v)) for v in face.box)
        cv2.rectangle(image, (x, y), (x + bw, y + bh), colour, 2, cv2.LINE_AA)
        for j, (px, py) in enumerate(np.asarray(face.landmarks, np.float64)):
            cv2.circle(image, (int(round(px * 4)), int(round(py * 4))), 12, _LANDMARK_COLOURS[j % 5], -1,
                       cv2.LINE_AA, shift=2)
        title = f"id {face.id}" if face.id is not None else f"face {k + 1}"
        lines = [title] + attribute_lines(face)
        # labels right of the box if there is room, else left of it
        tx = x + bw + 8 if x + bw + 120 < w else max(x - 120, 4)
        _panel(image, lines, (tx, max(y + 14, 16)), colour)
    hud = []
    if fps is not None:
        hud.append(f"{fps:5.1f} FPS")
    if stages_ms:
        hud.append("  ".join(f"{s} {stages_ms[s]:.1f}" for s in STAGES if s in stages_ms) + " ms")
    _panel(image, hud, (8, 20), (255, 255, 255), 0.5, 18)
    return image
