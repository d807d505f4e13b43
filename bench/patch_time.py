"""The refinement stage's patch cutter, the one-face-at-once cutter (`point_patches` today)
against the one it replaced (five `crop_region` calls: a grey conversion, a warp and a resize
per patch), side by side in one process:

1. cutting alone, on real faces cut from frames (`bench/frames.py make`), each face's five
   patches cut by both in turn, `--repeat` rounds; the median over faces of each face's
   fastest round, and every face checked bit for bit against the old cutter;
2. the crowd stream of `facemtl bench --live` (eight MTFL faces, one thread) in VIDEO mode
   with the refinement on, and IMAGE mode, with each cutter in turn (`--rounds`, alternating),
   with the packaged cascade (levels 1 and 2) and with level 1 alone, plus the refinement off
   as the reference: median frame time and FPS (the fastest round's).

    python bench/patch_time.py --frames /tmp/frames/training --json bench/patch_time.json
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
from facemtl.runtime.preprocess import crop_region, normalize, point_patches, point_squares
from facemtl.train.refine import refine_spec


def point_patches_per_patch(image, points, policy, patch, spec):
    """The cutter before the one-face cutter (commit 215c6f2), kept here to measure against."""
    squares = point_squares(points, policy, patch)
    raw = np.empty((len(squares), spec.size, spec.size), np.float32)
    mats = np.empty((len(squares), 2, 3))
    for i, sq in enumerate(squares):
        raw[i], mats[i] = crop_region(image, sq, spec.size)
    return np.ascontiguousarray(normalize(raw, spec).transpose(1, 2, 0)), mats


CUTTERS = {"per_patch": point_patches_per_patch, "one_face": point_patches}


def cutting(frames, spec, repeat: int) -> dict:
    per = np.zeros((len(CUTTERS), repeat, len(frames)))
    identical = 0
    for j, (image, points) in enumerate(frames):
        outs = [f(image, points, spec.crop, spec.refine.patch, spec.input) for f in CUTTERS.values()]
        identical += all(np.array_equal(a, b) for a, b in zip(outs[0], outs[1]))
    for r in range(repeat):
        for j, (image, points) in enumerate(frames):
            for c, f in enumerate(CUTTERS.values()):
                t0 = time.perf_counter()
                f(image, points, spec.crop, spec.refine.patch, spec.input)
                per[c, r, j] = 1000 * (time.perf_counter() - t0)
    fastest = np.median(per.min(axis=1), axis=1)
    every = np.median(per.reshape(len(CUTTERS), -1), axis=1)
    out = {name: {"ms_per_face_median_of_fastest": round(float(fastest[c]), 4),
                  "ms_per_face_median_every_call": round(float(every[c]), 4)} for c, name in enumerate(CUTTERS)}
    out["speedup_median_of_fastest"] = round(float(fastest[0] / fastest[1]), 2)
    out["speedup_median_every_call"] = round(float(every[0] / every[1]), 2)
    out["bit_identical_faces"] = f"{identical}/{len(frames)}"
    return out


def crowd_fps(rounds: int, n: int) -> dict:
    from facemtl.runtime.live.bench import crowd

    runs = {}
    level2 = refine.REFINE2_MODEL_FILES
    settings = [("refine_off", None, level2)]
    for levels, files in (("cascade", level2), ("level1_only", ())):
        settings += [(f"{name}_{levels}", cutter, files) for name, cutter in CUTTERS.items()]
    for r in range(rounds):
        for name, cutter, files in settings:
            refine.REFINE2_MODEL_FILES = files  # what packaged_refine_paths looks for
            if cutter is not None:
                refine.point_patches = cutter  # what Refiner.inputs calls
            c = crowd(None, "yunet", None, 15, n=n, refine=cutter is not None)
            runs.setdefault(name, []).append(c)
    refine.point_patches = point_patches
    refine.REFINE2_MODEL_FILES = level2
    out = {}
    for name, cs in runs.items():
        out[name] = {mode: {"analysis_ms_median": min(c[mode]["analysis_ms_median"] for c in cs),
                            "fps": round(1000.0 / min(c[mode]["analysis_ms_median"] for c in cs), 1),
                            "found_rate": cs[0][mode]["found_rate"], "nme": cs[0][mode]["nme"]}
                     for mode in ("tracking", "image_mode")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--faces", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=2, help="crowd stream rounds per setting (the fastest is kept)")
    p.add_argument("--crowd-frames", type=int, default=480)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cv2.setNumThreads(1)
    backend = load_model(None, threads=1)
    spec = refine_spec(backend.spec)
    backend.close()
    meta = json.loads((args.frames / "frames.json").read_text())["frames"][: args.faces]
    frames = [(cv2.imread(str(args.frames / r["file"])), np.array(r["points"], float)) for r in meta]
    report = {"faces": len(frames), "repeats": args.repeat, "opencv_threads": 1,
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
