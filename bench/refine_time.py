"""Model time per face of every stage of IMAGE mode, one thread: the first stage's passes (each
a batch of two with flip averaging) and the refinement stage (flip-averaged too), timed interleaved on real faces
cut from frames (`bench/frames.py make`), so a load change hits every stage alike.

    python bench/refine_time.py --frames /tmp/frames/training --faces 300 --json bench/refine_time.json

"model" = the interpreter calls alone (`Backend.run`), "crop" = cutting and normalising their
inputs, as `FaceAnalyzer` reports them (stages "infer" and "crop").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.analyzer import PACKAGED_MODELS, load_model
from facemtl.runtime.backends import load_backend
from facemtl.runtime.core import InferenceCore, landmark_square, size_anchor
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.refine import Cascade, Refiner, packaged_refine_paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=Path, required=True)
    p.add_argument("--faces", type=int, default=300)
    p.add_argument("--model", default=None, help="first stage (default: packaged)")
    p.add_argument("--refine-model", nargs="+", default=None,
                   help="refinement files, level 1 first (default: the packaged cascade)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    backend = load_model(args.model, threads=1)
    rpaths = args.refine_model or packaged_refine_paths(PACKAGED_MODELS, backend.path)
    refiner = Cascade([Refiner(load_backend(p, threads=1), backend.spec, flip_average=True) for p in rpaths])
    core = InferenceCore(backend.run, backend.spec, flip_average=True)
    policy = backend.spec.crop
    meta = json.loads((args.frames / "frames.json").read_text())["frames"][: args.faces]
    frames = [(cv2.imread(str(args.frames / r["file"])), np.array(r["points"], float)) for r in meta]
    keys = ("first_model", "first_crop", "refine_model", "refine_crop")
    per = np.zeros((args.repeat, len(frames), len(keys)))  # ms per repeat, face and stage
    for r in range(args.repeat):
        for j, (image, truth) in enumerate(frames):
            t = dict.fromkeys(keys, 0.0)
            sq = canonical_square(truth, policy)
            out = core(image, [sq])
            t["first_model"] += out.infer_ms
            t["first_crop"] += out.crop_ms
            out2 = core(image, [landmark_square(out.points[0], policy, anchor=size_anchor(sq, out.points[0], policy))])
            t["first_model"] += out2.infer_ms
            t["first_crop"] += out2.crop_ms
            _, crop_ms, model_ms = refiner(image, out2.points)
            t["refine_model"] += model_ms
            t["refine_crop"] += crop_ms
            per[r, j] = [t[k] for k in keys]
    # mean over every call, and the mean over faces of each face's fastest repeat: on a
    # machine shared with other work, the second is the closer to the machine's own speed
    mean = dict(zip(keys, per.mean(axis=(0, 1)).round(4).tolist()))
    fastest = dict(zip(keys, per.min(axis=0).mean(axis=0).round(4).tolist()))
    for d in (mean, fastest):
        d["model_all_stages"] = round(d["first_model"] + d["refine_model"], 4)
    report = {"first": str(backend.path), "refine": [str(p) for p in rpaths], "faces": len(frames),
              "repeats": args.repeat,
              "passes": 2, "flip_average": True, "threads": 1, "load_average": [round(v, 2) for v in os.getloadavg()],
              "ms_per_face": mean, "ms_per_face_fastest_repeat": fastest}
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
