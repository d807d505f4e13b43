"""The measurement behind video mode's "lost" check (`python bench/measure_lost.py`).

    python bench/measure_lost.py --model M [--data ../shared/data/mtfl] [--faces 600]

Faces: MTFL test images, each cut at its canonical square (the reference crop, as when the
detector confirms a track) and again with the error a few frames of tracking leave (shift
up to 6% of the side, scale 8%, roll 8 degrees) and a brightness/contrast change. No face:
crops of scikit-image's bundled photographs (coffee, rocket, brick, grass, a cat, a horse,
text, ...) and of the sample stream's background, at random places, sizes and rolls. Half
a face: the canonical square moved 30-60% of its side away.

Two candidate signals, both free in the tracking loop:
- appearance: normalised cross-correlation of the 40x40 crop with the reference crop;
- geometry: RMS spread of the model's landmarks in crop units x the crop scale (1.0 for a
  face framed as in training) and their centroid's offset from the crop centre.
Prints their distributions, the ROC AUC of each, and the rates at the threshold in use.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.preprocess import Square, canonical_square, crop, eye_angle, normalize

SKIMAGE_PHOTOS = ("coffee.png", "rocket.jpg", "brick.png", "grass.png", "gravel.png", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "chelsea.png", "horse.png", "page.png", "text.png", "coins.png", "camera.png")


def _unit(patch, spec) -> np.ndarray:
    x = normalize(np.asarray(patch, np.float32), spec.input).ravel()
    x = x - x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-9)


def _auc(pos, neg) -> float:
    pos, neg = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _pct(v) -> str:
    return "/".join(f"{np.percentile(v, q):.2f}" for q in (5, 50, 95))


def read_mtfl(data: Path, n: int):
    for line in (data / "testing.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) < 11:
            continue
        img = cv2.imread(str(data / parts[0].replace("\\", "/")), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        v = np.array(parts[1:11], float) - 1  # MTFL is 1-based
        yield img, np.stack([v[:5], v[5:]], axis=1)
        n -= 1
        if n <= 0:
            return


def main(argv=None) -> int:
    from facemtl.runtime.analyzer import load_model
    from facemtl.runtime.live.sample import _background, astronaut_path
    from facemtl.runtime.live.tracking import TrackingOptions

    ap = argparse.ArgumentParser(prog="python bench/measure_lost.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", "-m", default=None, help="model file or folder (default: the packaged one)")
    ap.add_argument("--data", default=os.environ.get("FACEMTL_DATA", "../shared/data/mtfl"), help="MTFL folder")
    ap.add_argument("--faces", type=int, default=600)
    args = ap.parse_args(argv)
    backend = load_model(args.model)
    spec, pol = backend.spec, backend.spec.crop
    rng = np.random.default_rng(0)
    size = spec.input.size

    ref, same, half, landmark_faces = [], [], [], []
    for img, pts in read_mtfl(Path(args.data), args.faces):
        sq = canonical_square(pts, pol, angle=eye_angle(pts))
        ref.append(_unit(crop(img, sq, size)[0], spec))
        d = rng.uniform(-0.06, 0.06, 2) * sq.side
        lit = np.clip(img * rng.uniform(0.7, 1.3) + rng.uniform(-30, 30), 0, 255).astype(np.uint8)
        moved = Square(sq.cx + d[0], sq.cy + d[1], sq.side * math.exp(rng.uniform(-0.08, 0.08)),
                       sq.angle + rng.uniform(-8, 8))
        p = crop(lit, moved, size)[0]
        same.append(_unit(p, spec))
        landmark_faces.append(p)
        a, r = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 0.6) * sq.side
        half.append(_unit(crop(img, Square(sq.cx + r * math.cos(a), sq.cy + r * math.sin(a), sq.side, sq.angle),
                               size)[0], spec))
    folder = astronaut_path().parent
    photos = [cv2.imread(str(folder / n), cv2.IMREAD_GRAYSCALE) for n in SKIMAGE_PHOTOS]
    photos = [p for p in photos if p is not None]
    photos.append(cv2.cvtColor(_background(640, 480, 0), cv2.COLOR_BGR2GRAY))
    none, landmark_none = [], []
    for g in photos:
        for _ in range(60):
            side = rng.uniform(60, min(g.shape) * 0.8)
            cx, cy = rng.uniform(side / 2, g.shape[1] - side / 2), rng.uniform(side / 2, g.shape[0] - side / 2)
            p = crop(g, Square(cx, cy, side, rng.uniform(-15, 15)), size)[0]
            none.append(_unit(p, spec))
            landmark_none.append(p)
    ref, same, half, none = map(np.array, (ref, same, half, none))
    m_same = (ref * same).sum(axis=1)
    m_half = (ref * half).sum(axis=1)
    m_none = (ref * none[rng.integers(0, len(none), len(ref))]).sum(axis=1)
    thr = TrackingOptions().lost_score
    print(f"appearance match with the reference crop (p5/p50/p95), {len(ref)} faces, {len(none)} no-face crops")
    print(f"  same face, moved and re-lit  {_pct(m_same)}")
    print(f"  half the face               {_pct(m_half)}")
    print(f"  no face                      {_pct(m_none)}")
    print(f"  AUC same vs no face {_auc(m_same, m_none):.3f}, same vs half {_auc(m_same, m_half):.3f}")
    print(f"  at lost_score {thr}: kept {100 * (m_same >= thr).mean():.1f}% of faces, "
          f"{100 * (m_none >= thr).mean():.1f}% of no-face crops, {100 * (m_half >= thr).mean():.1f}% of half faces")

    def spread(patches):
        batch = np.stack([normalize(p, spec.input) for p in patches])[..., None]
        out = np.concatenate([backend.run(batch[i:i + 64])["landmarks"] for i in range(0, len(batch), 64)])
        pts = out.reshape(len(out), -1, 2)
        c = pts.mean(axis=1, keepdims=True)
        return np.sqrt(((pts - c) ** 2).sum(axis=2).mean(axis=1)) * pol.scale

    s_face, s_none = spread(landmark_faces), spread(landmark_none)
    print("landmark geometry: RMS spread x crop scale (1.0 = framed as in training), p5/p50/p95")
    print(f"  faces {_pct(s_face)}   no face {_pct(s_none)}   AUC of |log spread| {_auc(-abs(np.log(s_face)), -abs(np.log(s_none))):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
