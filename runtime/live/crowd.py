"""`--source crowd`: several real faces moving, turning, entering and leaving, with known landmarks.

The faces are MTFL training photographs (read from the data folder at run time: MTFL is
not redistributed with facemtl). Each is cut out with a soft elliptical mask around its
annotated landmarks and moved over a fixed background by a known similarity transform per
frame: a slow drift around its own place on a 4 x 2 grid, a breathing scale and a gentle
roll; the faces in the outer columns leave the frame in turn and come back. So the true
five points of every face in every frame are its annotation pushed through that transform,
and a video mode's found rate and landmark error on several faces at once are real
measurements. Frames are a pure function of their index, like `SampleStream`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.errors import SourceError
from facemtl.runtime.live.sample import SensorNoise, _background, blend_sprite
from facemtl.runtime.mtfl import read_annotations
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import CropPolicy

# A face's sprite: the square of 4.2 RMS landmark radii around its points (hair and chin),
# masked by an ellipse of these semi-axes (in RMS radii), centred this far above the centroid.
_SPRITE = 4.2
_ELLIPSE = (1.45, 1.85)
_ELLIPSE_UP = 0.25
_MASK_BLUR = 0.12  # of the RMS radius


def default_data_dir() -> Path:
    env = os.environ.get("FACEMTL_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data" / "mtfl"


@dataclass(frozen=True)
class _Face:
    sprite: np.ndarray        # BGR
    mask: np.ndarray          # uint8 alpha
    points: np.ndarray        # (5, 2) in sprite pixels
    rms: float                # RMS radius of the points, sprite pixels


class CrowdStream:
    """Frames of `faces` real faces (up to 8) moving over a background, with their true landmarks.

    data: the MTFL folder (faces come from training.txt, spread over it; never testing.txt).
    size: (width, height). fps: the clock. frames: the stream's length (None: endless).
    iod: the faces' base inter-ocular distance in pixels at 640x480 (they breathe 0.8-1.25x).
    """

    def __init__(self, data: str | os.PathLike | None = None, size: tuple[int, int] = (640, 480), fps: float = 30.0,
                 faces: int = 8, frames: int | None = None, iod: float = 34.0, noise: float = 2.5, seed: int = 0):
        if not 1 <= faces <= 8:
            raise ValueError(f"the crowd has 1 to 8 faces, got {faces}")
        data = Path(data) if data is not None else default_data_dir()
        if not (data / "training.txt").is_file():
            raise SourceError(f"the crowd stream reads real faces from MTFL's training.txt, not found in {data}; "
                              "pass crowd:PATH/TO/mtfl or set FACEMTL_DATA")
        w, h = int(size[0]), int(size[1])
        self.size, self.fps, self.frames, self.noise, self.seed = (w, h), float(fps), frames, float(noise), int(seed)
        self.iod = float(iod) * min(w / 640.0, h / 480.0)
        ann = read_annotations(data / "training.txt", data)
        rng = np.random.default_rng(seed)
        # frontal-ish faces (MTFL poses left, frontal, right; no profiles): each one a clear face
        candidates = [i for i in range(len(ann)) if 1 <= int(ann.labels["pose"][i]) <= 3]
        self._faces: list[_Face] = []
        for i in rng.permutation(candidates):
            face = self._cut(ann.root / ann.paths[i], ann.points[i].astype(np.float64))
            if face is not None:
                self._faces.append(face)
            if len(self._faces) == faces:
                break
        if len(self._faces) < faces:
            raise SourceError(f"{data}: found only {len(self._faces)} readable faces for the crowd stream")
        self._background = _background(w, h, self.seed + 7)
        self._phase = rng.uniform(0, 2 * math.pi, (faces, 4))
        self._noise = SensorNoise((w, h), self.noise, self.seed)

    @staticmethod
    def _cut(path: Path, points: np.ndarray) -> _Face | None:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            return None
        sq = canonical_square(points, CropPolicy(scale=_SPRITE))
        rms = sq.side / _SPRITE
        side = int(math.ceil(sq.side))
        m = np.array([[1.0, 0.0, side / 2 - sq.cx], [0.0, 1.0, side / 2 - sq.cy]])
        sprite = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        pts = points @ m[:, :2].T + m[:, 2]
        mask = np.zeros((side, side), np.float32)
        centre = pts.mean(axis=0) - (0.0, _ELLIPSE_UP * rms)
        cv2.ellipse(mask, (round(centre[0]), round(centre[1])), (round(_ELLIPSE[0] * rms), round(_ELLIPSE[1] * rms)),
                    0, 0, 360, 255.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), max(_MASK_BLUR * rms, 0.5))
        return _Face(sprite, np.clip(mask + 0.5, 0, 255).astype(np.uint8), pts, rms)

    @property
    def count(self) -> int:
        return len(self._faces)

    def timestamp_ms(self, i: int) -> float:
        return 1000.0 * i / self.fps

    # --- the motion ------------------------------------------------------------------------
    def _pose(self, k: int, i: int) -> tuple[float, float, float, float]:
        """(centroid x, y, inter-ocular distance in pixels, roll in degrees) of face k in frame i."""
        w, h = self.size
        t = i / self.fps
        ph = self._phase[k]
        col, row = k % 4, k // 4
        cell_w, cell_h = w / 4, h / 2
        cx = (col + 0.5) * cell_w + 0.22 * cell_w * math.sin(2 * math.pi * t / (5.0 + 0.7 * k) + ph[0])
        cy = (row + 0.5) * cell_h + 0.18 * cell_h * math.sin(2 * math.pi * t / (4.1 + 0.5 * k) + ph[1])
        if col in (0, 3):
            # the outer columns leave the frame sideways in turn, for about 1.5 s of every 8 s
            u = ((t + 2.0 * (k % 4 == 3) + 4.0 * row) % 8.0) / 8.0
            out = max(0.0, math.sin(2 * math.pi * u)) ** 4  # 0 most of the time, 1 when out
            cx += (-1 if col == 0 else 1) * out * (cell_w * 0.5 + 3.2 * self.iod)
        iod = self.iod * math.exp(0.22 * math.sin(2 * math.pi * t / (6.3 + 0.4 * k) + ph[2]))
        roll = 15.0 * math.sin(2 * math.pi * t / (5.7 + 0.3 * k) + ph[3])
        return cx, cy, iod, roll

    def _matrix(self, k: int, i: int) -> np.ndarray:
        """2x3 similarity taking face k's sprite pixels to frame i's pixels."""
        f = self._faces[k]
        cx, cy, iod, roll = self._pose(k, i)
        scale = iod / float(np.linalg.norm(f.points[1] - f.points[0]))
        a = math.radians(roll)
        c, s = math.cos(a) * scale, math.sin(a) * scale
        ax, ay = f.points.mean(axis=0)
        return np.array([[c, -s, cx - (c * ax - s * ay)], [s, c, cy - (s * ax + c * ay)]])

    def truth(self, i: int) -> list[np.ndarray]:
        """The five true landmarks of every face wholly in frame i ((5, 2) frame pixels each,
        MTFL order): a face counts from when its whole face square (the crop policy's 3.0 RMS
        radii) is inside the frame."""
        w, h = self.size
        out = []
        for k in range(len(self._faces)):
            m = self._matrix(k, i)
            pts = self._faces[k].points @ m[:, :2].T + m[:, 2]
            sq = canonical_square(pts, CropPolicy())
            if sq.cx - sq.side / 2 >= 0 and sq.cy - sq.side / 2 >= 0 and sq.cx + sq.side / 2 <= w \
                    and sq.cy + sq.side / 2 <= h:
                out.append(pts)
        return out

    # --- the pixels ------------------------------------------------------------------------
    def frame(self, i: int, out: np.ndarray | None = None) -> np.ndarray:
        w, h = self.size
        if out is None:
            out = np.empty((h, w, 3), np.uint8)
        np.copyto(out, self._background)
        for k, f in enumerate(self._faces):
            self._paste(out, f, self._matrix(k, i))
        self._noise.add(out, i)
        return out

    @staticmethod
    def _paste(out: np.ndarray, f: _Face, m: np.ndarray) -> None:
        h, w = out.shape[:2]
        side = f.sprite.shape[0]
        corners = np.array([[0, 0], [side, 0], [0, side], [side, side]], np.float64) @ m[:, :2].T + m[:, 2]
        x0, y0 = (max(int(v), 0) for v in corners.min(axis=0))
        x1, y1 = int(min(corners[:, 0].max() + 1, w)), int(min(corners[:, 1].max() + 1, h))
        blend_sprite(out, f.sprite, f.mask, m, (x0, y0, x1, y1), cv2.INTER_AREA)

    def __repr__(self) -> str:
        return f"CrowdStream(size={self.size}, faces={self.count}, fps={self.fps}, frames={self.frames})"


def match_faces(truths: list[np.ndarray], found: list[np.ndarray]) -> list[int | None]:
    """For each true face, the index of the found landmarks that are that face (the nearest
    centroid within half the true face's square, each found face used once), or None."""
    pairs = []
    for t, tp in enumerate(truths):
        side = canonical_square(tp, CropPolicy()).side
        for f, fp in enumerate(found):
            d = float(np.linalg.norm(np.asarray(fp).mean(axis=0) - tp.mean(axis=0)))
            if d < 0.5 * side:
                pairs.append((d, t, f))
    out: list[int | None] = [None] * len(truths)
    used = set()
    for _, t, f in sorted(pairs):
        if out[t] is None and f not in used:
            out[t] = f
            used.add(f)
    return out





def open_crowd(arg: str, width: int = 640, height: int = 480, fps: float = 30.0, frames: int | None = None,
               noise: float = 2.5):
    """`--source crowd` or `crowd:PATH/TO/mtfl`: the crowd stream as a live-demo source."""
    from facemtl.runtime.live.sources import Frame, Source

    stream = CrowdStream(arg or None, (width, height), fps=fps, frames=frames, noise=noise)

    class CrowdSource(Source):
        name = "crowd"

        def __init__(self) -> None:
            super().__init__()
            self.fps, self.frames, self._i = fps, frames, 0
            self._buffers = [np.empty((height, width, 3), np.uint8) for _ in range(2)]

        def read(self):
            if self.frames is not None and self._i >= self.frames:
                return None
            i, self._i = self._i, self._i + 1
            return Frame(stream.frame(i, out=self._buffers[i % 2]), i, stream.timestamp_ms(i))

        # truth(): None (the base class's): the demo's landmark error is for one face; `facemtl
        # bench --live` scores the crowd face by face (`match_faces`)

    return CrowdSource()
__all__ = ["CrowdStream", "match_faces", "open_crowd"]
