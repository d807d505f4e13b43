"""A manifest with one head's labels removed from a random share of its faces: the partial-label
experiment of docs/data.md (issue 21). Training data only; the validation part keeps every label
so that both runs are scored on the same faces and labels.

    facemtl data convert ../shared/data/mtfl --split training --out /tmp/partial/mtfl_training.jsonl
    python bench/partial_labels.py /tmp/partial/mtfl_training.jsonl --drop landmarks --share 0.5 \\
        --out /tmp/partial/half_landmarks.jsonl
    facemtl train --data /tmp/partial/half_landmarks.jsonl --seed 2 --crop-scale 3.0 --out runs/run55
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from facemtl.train.mtfl import validation_mask


def drop_labels(lines: list[dict], head: str, share: float, seed: int, val_fraction: float) -> tuple[list[dict], int]:
    """`lines` with `head` ("landmarks" or an attribute) removed from `share` of the faces of the
    training part (chosen with `seed`); the validation part is left whole. Returns the lines and
    how many lost the label."""
    rng = np.random.default_rng(seed)
    val = validation_mask([rec["id"] for rec in lines], val_fraction)  # train's own split
    out, dropped = [], 0
    for rec, held_out in zip(lines, val):
        rec = dict(rec)
        if not held_out and rng.random() < share:
            if head == "landmarks":
                dropped += rec.pop("landmarks", None) is not None
            else:
                labels = dict(rec.get("labels", {}))
                dropped += labels.pop(head, None) is not None
                rec["labels"] = labels
        out.append(rec)
    return out, dropped


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--drop", default="landmarks", help="landmarks or an attribute head")
    ap.add_argument("--share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    lines = [json.loads(ln) for ln in args.manifest.read_text().splitlines() if ln.strip()]
    kept, dropped = drop_labels(lines, args.drop, args.share, args.seed, args.val_fraction)
    # image paths are relative to the manifest's folder: keep the new one beside the old
    if args.out.resolve().parent != args.manifest.resolve().parent:
        raise SystemExit("write --out beside the manifest (image paths are relative to its folder)")
    args.out.write_text("".join(json.dumps(r) + "\n" for r in kept))
    print(f"{args.out}: {len(kept)} faces, {args.drop} removed from {dropped}")


if __name__ == "__main__":
    main()
