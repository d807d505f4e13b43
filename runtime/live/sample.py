"""`--source sample`: a moving real face with known landmarks, no camera and no download.

The face is scikit-image's bundled `astronaut.png` (Eileen Collins, NASA, public domain),
read straight from the installed package's data folder: skimage itself is never imported
(it is slow to import and a Pi does not need it). The head is cut out with a soft
elliptical mask and moved, scaled and turned over a fixed background by a known
similarity transform per frame, so the true five landmarks of every frame are the
hand-annotated points of the still image pushed through that transform. Per-frame
Gaussian noise, as a webcam sensor adds, makes "jitter on a still face" a real measurement.

Frames are a pure function of their index (`frame(i)`, `truth(i)`): tests and benchmarks
can replay them.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.errors import SampleUnavailable  # noqa: F401 (re-exported)

INSTALL_HINT = "pip install scikit-image   (or: pip install 'facemtl[sample]')"

# The five MTFL points of astronaut.png (512 x 512), pixel-index coordinates, MTFL order:
# image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
# Annotated once by hand: the image was viewed at 6x zoom with a 5-pixel grid in an image
# viewer, the eye centres put on the pupils, the nose on the tip (the bright spot above the
# nostrils), the mouth points on the corners of the lips; then redrawn as crosses on the
# zoomed image and checked by eye.
ASTRONAUT_LANDMARKS = np.array(
    [[203.7, 101.3], [245.8, 103.0], [224.0, 127.0], [203.5, 140.0], [244.5, 141.5]], dtype=np.float64
)
# The head (hair to chin) as an ellipse in astronaut.png: centre, semi-axes.
_HEAD_CENTRE = (224.0, 112.0)
_HEAD_AXES = (80.0, 100.0)
_MASK_BLUR = 5.0  # sigma of the mask's soft edge, astronaut.png pixels

MOTIONS = ("moving", "still", "exit")


def astronaut_path() -> Path:
    """The astronaut.png shipped inside scikit-image, found without importing skimage."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise SampleUnavailable(f"the sample stream needs the face image that scikit-image ships: {INSTALL_HINT}")
    for folder in spec.submodule_search_locations:
        p = Path(folder) / "data" / "astronaut.png"
        if p.is_file():
            return p
    raise SampleUnavailable(f"scikit-image is installed but its data/astronaut.png is missing; reinstall it: {INSTALL_HINT}")


@dataclass(frozen=True)
class Pose:
    """Where the face is in frame i: the centroid of its five points, its scale relative to
    astronaut.png, its roll in degrees (clockwise on screen, like `eye_angle`), and whether
    any of it is on screen."""

    cx: float
    cy: float
    scale: float
    angle: float
    visible: bool = True


def _background(width: int, height: int, seed: int) -> np.ndarray:
    """A fixed, face-free, textured scene: a lit wall gradient, some shapes, then blurred."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    wall = 150 + 50 * (x / width) - 40 * (y / height)
    bg = np.stack([wall * 0.9, wall * 0.95, wall], axis=2)
    for _ in range(14):
        colour = rng.uniform(40, 220, 3)
        x0, y0 = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if rng.random() < 0.5:
            cv2.rectangle(bg, (x0, y0), (x0 + int(rng.uniform(30, 200)), y0 + int(rng.uniform(20, 160))),
                          colour.tolist(), -1)
        else:
            cv2.circle(bg, (x0, y0), int(rng.uniform(10, 70)), colour.tolist(), -1)
    bg = cv2.GaussianBlur(bg, (0, 0), 2.0)
    return np.clip(bg, 0, 255).astype(np.uint8)


class SampleStream:
    """Frames of the astronaut's head moving over a background, with the true landmarks.

    size: (width, height) of the frames. fps: the stream's clock (timestamps are i / fps).
    motion: "moving" (drifts in a Lissajous path, scales 0.8-1.25x, rolls +-15 degrees),
        "still" (centred, unmoving: only the sensor noise changes), or "exit" (moves to the
        right, leaves the frame entirely for about a second and comes back, every 8 s).
    scale: the face's base size relative to astronaut.png (1.6: eyes about 67 pixels apart
        at 640x480, a face at about one metre from a webcam).
    noise: standard deviation of per-frame Gaussian sensor noise, in grey levels.
    frames: the stream's length (None: endless).
    """

    def __init__(self, size: tuple[int, int] = (640, 480), fps: float = 30.0, motion: str = "moving",
                 scale: float = 1.6, noise: float = 2.5, frames: int | None = None, seed: int = 0):
        if motion not in MOTIONS:
            raise ValueError(f"unknown sample motion {motion!r}; use one of {', '.join(MOTIONS)}")
        w, h = int(size[0]), int(size[1])
        if w < 64 or h < 64:
            raise ValueError(f"sample frames must be at least 64x64, got {w}x{h}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.size = (w, h)
        self.fps = float(fps)
        self.motion = motion
        self.base_scale = float(scale)
        self.noise = float(noise)
        self.frames = frames
        self.seed = int(seed)
        self.path = astronaut_path()
        image = cv2.imread(str(self.path), cv2.IMREAD_COLOR)
        if image is None:
            raise SampleUnavailable(f"{self.path}: cannot decode the sample image; reinstall scikit-image")
        # the head sprite and its soft mask (uint8: warping and blending stay cheap)
        mask = np.zeros(image.shape[:2], np.float32)
        cv2.ellipse(mask, (round(_HEAD_CENTRE[0]), round(_HEAD_CENTRE[1])),
                    (round(_HEAD_AXES[0]), round(_HEAD_AXES[1])), 0, 0, 360, 255.0, -1)
        self._sprite = image
        self._mask = np.clip(cv2.GaussianBlur(mask, (0, 0), _MASK_BLUR) + 0.5, 0, 255).astype(np.uint8)
        self._anchor = ASTRONAUT_LANDMARKS.mean(axis=0)
        self._background = _background(w, h, self.seed)
        self._noise = SensorNoise((w, h), self.noise, self.seed)

    # --- the motion ------------------------------------------------------------------------
    def timestamp_ms(self, i: int) -> float:
        return 1000.0 * i / self.fps

    def pose(self, i: int) -> Pose:
        w, h = self.size
        t = i / self.fps
        s0 = self.base_scale * min(w / 640.0, h / 480.0)
        if self.motion == "still":
            return Pose(w / 2, h / 2, s0, 0.0)
        if self.motion == "exit":
            period = 8.0
            u = (t % period) / period                      # 0..1 over one cycle
            # left of centre -> out past the right edge -> back (a cosine sweep)
            reach = w / 2 + 200 * s0 / 1.6 + 60            # far enough that the whole head is off
            cx = w / 2 - 0.15 * w + (reach + 0.15 * w) * 0.5 * (1 - math.cos(2 * math.pi * u)) ** 1.0
            cx = min(cx, w / 2 + reach) if u < 1 else cx
            return Pose(cx, h / 2 + 10 * math.sin(2 * math.pi * t / 3.0), s0, 0.0, self._on_screen(cx, h / 2, s0))
        # moving: a slow Lissajous drift, breathing scale and a gentle roll
        cx = w / 2 + 0.25 * w * math.sin(2 * math.pi * t / 6.0)
        cy = h / 2 + 0.12 * h * math.sin(2 * math.pi * t / 4.3 + 0.7)
        scale = s0 * math.exp(0.22 * math.sin(2 * math.pi * t / 7.1 + 1.3))
        angle = 15.0 * math.sin(2 * math.pi * t / 5.3)
        return Pose(cx, cy, scale, angle)

    def _on_screen(self, cx: float, cy: float, scale: float) -> bool:
        w, h = self.size
        r = scale * (max(_HEAD_AXES) + 3 * _MASK_BLUR) + 2
        return cx - r < w and cx + r > 0 and cy - r < h and cy + r > 0

    def matrix(self, i: int) -> np.ndarray:
        """2x3 similarity taking astronaut.png pixels to frame i's pixels."""
        p = self.pose(i)
        a = math.radians(p.angle)
        c, s = math.cos(a) * p.scale, math.sin(a) * p.scale
        ax, ay = self._anchor
        return np.array([[c, -s, p.cx - (c * ax - s * ay)], [s, c, p.cy - (s * ax + c * ay)]])

    def truth(self, i: int) -> np.ndarray:
        """The five true landmarks of frame i, (5, 2) frame pixels, MTFL order (they may lie
        outside the frame while the face leaves it). Empty (0, 2) when no face is on screen."""
        if not self.pose(i).visible:
            return np.zeros((0, 2))
        m = self.matrix(i)
        return ASTRONAUT_LANDMARKS @ m[:, :2].T + m[:, 2]

    # --- the pixels ------------------------------------------------------------------------
    def frame(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frame i as BGR uint8 (H, W, 3), written into `out` when given."""
        w, h = self.size
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        np.copyto(out, self._background)
        p = self.pose(i)
        if p.visible:
            self._paste(out, self.matrix(i), p)
        self._noise.add(out, i)
        return out

    def _paste(self, out: np.ndarray, m: np.ndarray, p: Pose) -> None:
        """Warp the head sprite and its mask into its bounding box only, and blend."""
        h, w = out.shape[:2]
        # the bounding box of the turned ellipse, plus the mask's blur
        a = math.radians(p.angle)
        ea, eb = (p.scale * (v + 3 * _MASK_BLUR) for v in _HEAD_AXES)
        rx = math.hypot(ea * math.cos(a), eb * math.sin(a)) + 2
        ry = math.hypot(ea * math.sin(a), eb * math.cos(a)) + 2
        centre = m[:, :2] @ np.array(_HEAD_CENTRE) + m[:, 2]
        x0, y0 = max(int(centre[0] - rx), 0), max(int(centre[1] - ry), 0)
        x1, y1 = min(int(centre[0] + rx) + 1, w), min(int(centre[1] + ry) + 1, h)
        blend_sprite(out, self._sprite, self._mask, m, (x0, y0, x1, y1))

    def __iter__(self):
        i = 0
        while self.frames is None or i < self.frames:
            yield i, self.timestamp_ms(i), self.frame(i)
            i += 1

    def __repr__(self) -> str:
        return (f"SampleStream(size={self.size}, fps={self.fps}, motion={self.motion!r}, "
                f"noise={self.noise}, frames={self.frames})")


class SensorNoise:
    """Per-frame Gaussian noise of `sigma` grey levels, as a webcam sensor adds: a bank bigger
    than a frame, read at an offset drawn from (seed, frame index) (cheap, replayable, and never
    the same pattern twice in a row); split in +/- parts for saturating adds."""

    PAD = 64

    def __init__(self, size: tuple[int, int], sigma: float, seed: int):
        w, h = size
        self.size, self.sigma, self.seed = (w, h), float(sigma), int(seed)
        if self.sigma > 0:
            n = np.random.default_rng(self.seed + 1).normal(0.0, self.sigma, (h + self.PAD, w + self.PAD, 3))
            self._pos = np.clip(np.round(n), 0, 255).astype(np.uint8)
            self._neg = np.clip(np.round(-n), 0, 255).astype(np.uint8)

    def add(self, out: np.ndarray, i: int) -> None:
        if self.sigma <= 0:
            return
        w, h = self.size
        oy, ox = (int(v) for v in np.random.default_rng((self.seed, i)).integers(0, self.PAD, 2))
        cv2.add(out, self._pos[oy:oy + h, ox:ox + w], dst=out)
        cv2.subtract(out, self._neg[oy:oy + h, ox:ox + w], dst=out)


def blend_sprite(out: np.ndarray, sprite: np.ndarray, mask: np.ndarray, m: np.ndarray,
                 region: tuple[int, int, int, int], interpolation: int = cv2.INTER_LINEAR) -> None:
    """Warp `sprite` and its uint8 alpha `mask` by the 2x3 matrix `m` (sprite pixels -> frame
    pixels) into the frame `out`, only inside `region` (x0, y0, x1, y1, clipped by the caller
    to the frame), and blend them there: the sample and crowd streams' pasting."""
    x0, y0, x1, y1 = region
    if x1 <= x0 or y1 <= y0:
        return
    mm = m.copy()
    mm[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    fg = cv2.warpAffine(sprite, mm, size, flags=interpolation, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, mm, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = alpha.astype(np.float32) * np.float32(1 / 255)
    roi = out[y0:y1, x0:x1]
    np.copyto(roi, cv2.blendLinear(fg, np.ascontiguousarray(roi), a, 1.0 - a))


def nme(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean point error over the inter-ocular distance (eye centre to eye centre), in percent:
    the MTFL convention `train/metrics.py` uses."""
    pred = np.asarray(pred, np.float64).reshape(-1, 2)
    true = np.asarray(true, np.float64).reshape(-1, 2)
    iod = float(np.linalg.norm(true[1] - true[0]))
    return 100.0 * float(np.linalg.norm(pred - true, axis=1).mean()) / max(iod, 1e-9)
