"""The refinement stage's patch cutters side by side in one process: the frame cutter in use
(`frame_patches`: all faces of a frame in one pass) against the two it replaced, the
one-face cutter (`point_patches` until commit 8957d8e: a face's five patches in one go) and
the per-patch cutter (five `crop_region` calls: a grey conversion, a warp and a resize per
patch):

1. cutting alone, on the crowd stream's frames (`facemtl bench --live`: eight MTFL training
   faces moving, entering and leaving; its true landmarks), every face of a frame cut by each
   cutter in turn, `--repeat` rounds: the median over frames of each frame's fastest round,
   and every frame checked bit for bit against the per-patch cutter;
2. the crowd stream in VIDEO mode with the refinement on, and IMAGE mode, with each cutter
   in turn (`--rounds`, alternating), with the packaged cascade (levels 1 and 2) and with
   level 1 alone, plus the refinement off as the reference: median frame time and FPS (the
   fastest round's).

    python bench/patch_time.py --json bench/patch_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

import facemtl.runtime.refine as refine
from facemtl.runtime.analyzer import load_model
from facemtl.runtime.preprocess import (Square, _grey_region, _region, crop_matrix, crop_region, frame_patches,
                                        normalize, point_squares, _OVERSAMPLE)
from facemtl.train.refine import refine_spec


def point_patches_per_patch(image, points, policy, patch, spec):
    """The cutter before the one-face cutter (commit 215c6f2), kept here to measure against."""
    squares = point_squares(points, policy, patch)
    raw = np.empty((len(squares), spec.size, spec.size), np.float32)
    mats = np.empty((len(squares), 2, 3))
    for i, sq in enumerate(squares):
        raw[i], mats[i] = crop_region(image, sq, spec.size)
    return np.ascontiguousarray(normalize(raw, spec).transpose(1, 2, 0)), mats


def point_patches_one_face(image, points, policy, patch, spec):
    """The cutter before the frame cutter (commit 8957d8e), kept here to measure against."""
    squares = point_squares(points, policy, patch)
    k, size = len(squares), spec.size
    inter = int(min(max(round(squares[0].side), size), _OVERSAMPLE * size))
    regions = [_region(image.shape, sq) for sq in squares]
    x0 = min(r[0] for r in regions)
    y0 = min(r[1] for r in regions)
    grey = _grey_region(image, x0, y0, max(r[2] for r in regions), max(r[3] for r in regions))
    stack = np.empty((k * inter, inter), grey.dtype)
    mats = np.empty((k, 2, 3))
    for i, (sq, (rx, ry, rx1, ry1)) in enumerate(zip(squares, regions)):
        mats[i] = crop_matrix(sq)
        warp = crop_matrix(Square(sq.cx - rx, sq.cy - ry, sq.side, sq.angle)) * inter
        warp[:, 2] -= 0.5
        cv2.warpAffine(grey[ry - y0:ry1 - y0, rx - x0:rx1 - x0], warp, (inter, inter),
                       dst=stack[i * inter:(i + 1) * inter], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if inter != size:
        stack = cv2.resize(stack, (size, k * size), interpolation=cv2.INTER_AREA)
    raw = stack.reshape(k, size, size).astype(np.float32)
    return np.ascontiguousarray(normalize(raw, spec).transpose(1, 2, 0)), mats


def per_frame(one_face):
    """A one-face cutter as a frame cutter (`frame_patches`' call): face after face."""
    def cut(image, points, policy, patch, spec):
        outs = [one_face(image, p, policy, patch, spec) for p in np.asarray(points, np.float64)]
        return np.stack([o[0] for o in outs]), np.stack([o[1] for o in outs])
    return cut


CUTTERS = {"per_patch": per_frame(point_patches_per_patch), "one_face": per_frame(point_patches_one_face),
           "per_frame": frame_patches}


def crowd_frames(n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from facemtl.runtime.live.crowd import CrowdStream

    s = CrowdStream(None, frames=n)
    out = []
    for i in range(n):
        truth = s.truth(i)
        if len(truth):
            out.append((s.frame(i), np.stack([np.asarray(t, np.float64).reshape(-1, 2) for t in truth])))
    return out


def cutting(frames, spec, repeat: int) -> dict:
    per = np.zeros((len(CUTTERS), repeat, len(frames)))
    identical = 0
    for image, points in frames:
        outs = [f(image, points, spec.crop, spec.refine.patch, spec.input) for f in CUTTERS.values()]
        identical += all(np.array_equal(outs[0][0], o[0]) and np.array_equal(outs[0][1], o[1]) for o in outs[1:])
    for r in range(repeat):
        for j, (image, points) in enumerate(frames):
            for c, f in enumerate(CUTTERS.values()):
                t0 = time.perf_counter()
                f(image, points, spec.crop, spec.refine.patch, spec.input)
                per[c, r, j] = 1000 * (time.perf_counter() - t0)
    fastest = np.median(per.min(axis=1), axis=1)
    out = {name: {"ms_per_frame_median_of_fastest": round(float(fastest[c]), 4)} for c, name in enumerate(CUTTERS)}
    out["faces_per_frame_median"] = float(np.median([len(p) for _, p in frames]))
    out["speedup_per_frame_vs_one_face"] = round(float(fastest[1] / fastest[2]), 2)
    out["speedup_per_frame_vs_per_patch"] = round(float(fastest[0] / fastest[2]), 2)
    out["bit_identical_frames"] = f"{identical}/{len(frames)}"
    return out


def crowd_fps(rounds: int, n: int) -> dict:
    from facemtl.runtime.live.bench import crowd

    runs = {}
    settings = [("refine_off", None, None)]
    for levels, count in (("cascade", 2), ("level1_only", 1)):
        settings += [(f"{name}_{levels}", cutter, count) for name, cutter in CUTTERS.items()]
    for r in range(rounds):
        for name, cutter, count in settings:
            refine.frame_patches = cutter or frame_patches  # what Refiner.inputs calls
            c = crowd(None, "yunet", None, 15, n=n, refine=cutter is not None, refine_levels=count)
            runs.setdefault(name, []).append(c)
    refine.frame_patches = frame_patches
    out = {}
    for name, cs in runs.items():
        out[name] = {mode: {"analysis_ms_median": min(c[mode]["analysis_ms_median"] for c in cs),
                            "fps": round(1000.0 / min(c[mode]["analysis_ms_median"] for c in cs), 1),
                            "found_rate": cs[0][mode]["found_rate"], "nme": cs[0][mode]["nme"]}
                     for mode in ("tracking", "image_mode")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="crowd stream rounds per setting (the fastest is kept)")
    p.add_argument("--crowd-frames", type=int, default=480)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cv2.setNumThreads(1)
    backend = load_model(None, threads=1)
    spec = refine_spec(backend.spec)
    backend.close()
    frames = crowd_frames(args.crowd_frames)
    report = {"frames": len(frames), "repeats": args.repeat, "opencv_threads": 1,
              "load_average_start": [round(v, 2) for v in os.getloadavg()],
              "cutting": cutting(frames, spec, args.repeat)}
    print(json.dumps(report["cutting"], indent=2), flush=True)
    report["crowd"] = crowd_fps(args.rounds, args.crowd_frames)
    report["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(report["crowd"], indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
