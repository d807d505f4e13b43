"""The refinement cascade on the validation part of training.txt, as the runtime runs it: the
first stage's cached answers (`python -m facemtl.train.refine cache`) refined by each level's
converted file in turn (`facemtl.runtime.refine.Cascade`, flip-averaged as IMAGE mode runs it).
NME and failure rate (NME > 10%) after each level. Run 56's rule (docs/experiments.md) reads
the last level's figures.

    python bench/refine_cascade_val.py --refine-model runtime/models/facemtl_refine_int8.tflite \\
        runs/refine/run56/converted/model_int8-float.tflite --json bench/refine_cascade_val.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from facemtl.runtime.backends import load_backend
from facemtl.runtime.refine import Refiner
from facemtl.train.mtfl import default_data_dir, load_images, load_split
from facemtl.train.refine import load_cache, nme


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="runs/refine/first_stage.npz")
    p.add_argument("--data", default=default_data_dir())
    p.add_argument("--refine-model", nargs="+", required=True, help="level 1 first")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    c = load_cache(args.cache)
    va = np.flatnonzero(c["val"])
    ann = load_split(args.data, "training")
    index = {q: i for i, q in enumerate(ann.paths)}
    grey = load_images(ann.subset(np.array([index[q] for q in c["paths"]]))).images
    stages = [Refiner(load_backend(f, threads=1), flip_average=True) for f in args.refine_model]
    truth = c["truth"][va]
    points = c["first"][va].copy()
    e = nme(points, truth)
    rows = [{"after": "first stage", "nme": round(float(e.mean()), 4),
             "failure": round(float(100 * np.mean(e > 10)), 3)}]
    for f, r in zip(args.refine_model, stages):
        points = np.stack([r(grey[i], q[None])[0][0] for i, q in zip(c["face"][va], points)])
        e = nme(points, truth)
        rows.append({"after": str(f), "level": r.level, "nme": round(float(e.mean()), 4),
                     "failure": round(float(100 * np.mean(e > 10)), 3)})
        print(rows[-1], flush=True)
    report = {"cache": args.cache, "faces": int(len(va)), "flip_average": True, "levels": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
