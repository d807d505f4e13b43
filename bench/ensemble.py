"""How far an average of several trained models is from each of them, on validation.

Each model scores the same canonical crops of the held-out part of `training.txt`; their raw
outputs (landmark coordinates, class logits) are averaged and scored like one model's. A
diagnosis, not a shipped option: the runtime runs one model. What it says is the room a
single model distilled from several could reach for.

    python bench/ensemble.py runs/run18/model.keras runs/run19/model.keras runs/run20/model.keras
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _summary(heads: dict) -> str:
    """Each head's main figure, overall and then per image folder (`by_collection`)."""
    def figures(of: dict) -> str:
        return "  ".join(f"{k} {v['nme'] if 'nme' in v else v['accuracy']:.2f}" for k, v in of.items())

    lines = [figures(heads)]
    folders = next(iter(heads.values())).get("by_collection", {})
    for g in folders:
        lines.append(f"    {g}: " + figures({k: v["by_collection"][g] for k, v in heads.items()}))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path, help="model.keras files (spec.json beside each) of one crop policy")
    ap.add_argument("--data", default=os.environ.get("FACEMTL_DATA", "../shared/data/mtfl"))
    args = ap.parse_args()
    from facemtl.runtime.spec import ModelSpec
    from facemtl.train.evaluate import canonical_crops, keras_predictor, score, split_annotations
    from facemtl.train.model import load_model
    from facemtl.train.mtfl import load_images

    specs = [ModelSpec.load(m.with_name("spec.json")) for m in args.models]
    framing = {(s.crop.mode, s.crop.scale, s.crop.shift_y) for s in specs}  # calibrations may differ
    if len(framing) > 1:
        ap.error("the models crop faces differently; average only models of one crop policy")
    data = load_images(split_annotations(Path(args.data), "validation"))
    x, mats = canonical_crops(data, specs[0])
    outputs = []
    for path in args.models:
        outputs.append(keras_predictor(load_model(path))(x))
        print(f"{path}: {_summary(score(specs[0], outputs[-1], mats, data))}")
    mean = {k: np.mean([o[k] for o in outputs], axis=0) for k in outputs[0]}
    print(f"average of {len(outputs)}: {_summary(score(specs[0], mean, mats, data))}")
    print(f"({len(data)} validation faces; landmarks: NME %, classes: accuracy %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
