"""Latency and size of each trunk at batch 1, one thread, in LiteRT (fp32 and int8).

What chose the default trunk's shape and width: the runtime's floor is 0.2 ms per face.
Weights are random (latency does not depend on them); int8 is calibrated on random inputs.
All files are timed interleaved, in rounds (as `facemtl bench` does), so that a shared CPU
that changes speed mid-run moves every candidate alike.

    python bench/trunks.py [--runs 2000] [--json bench/trunks.json]
    python bench/trunks.py --set issue20 --json bench/trunks_issue20.json
    python bench/trunks.py --set issue20-warm --json bench/trunks_issue20_warm.json
    python bench/trunks.py --set issue20-fine --json bench/trunks_issue20_fine.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


CANDIDATES = [  # (trunk, width, depth: separable blocks, first block's width in widths, stem filters, feature units[, pool])
    ("tcdcn", 0, 0, 0, 0, 256),
    ("mtfl", 16, 6, 2, 16, 256),
    ("mtfl", 24, 6, 2, 24, 256),
    ("mtfl", 32, 6, 2, 32, 256),
    ("mtfl", 32, 5, 2, 32, 256),
    ("mtfl", 32, 5, 1, 32, 256),
    ("mtfl", 32, 5, 2, 16, 256),
    ("mtfl", 32, 5, 2, 32, 128),
    ("mtfl", 48, 6, 2, 48, 256),
]

# Issue 20's screen (speed and size only, before any training): today's default trunk first,
# then shapes with the global depthwise pooling (`--pool gdc`) and less work in the blocks.
ISSUE20 = [
    ("mtfl", 32, 5, 2, 32, 256, "flatten"),
    ("mtfl", 32, 5, 2, 32, 256, "gdc"),
    ("mtfl", 32, 5, 1, 32, 256, "gdc"),
    ("mtfl", 32, 4, 2, 32, 256, "gdc"),
    ("mtfl", 32, 5, 2, 16, 256, "gdc"),
    ("mtfl", 32, 5, 2, 32, 128, "gdc"),
    ("mtfl", 24, 5, 2, 24, 256, "gdc"),
    ("mtfl", 24, 5, 1, 24, 256, "gdc"),
    ("mtfl", 24, 4, 2, 24, 256, "gdc"),
    ("mtfl", 16, 5, 2, 16, 256, "gdc"),
]
# Issue 20's second screen (stop 19): shapes that keep today's width, so that blocks 3-5 can
# start from the packaged model's weights (`--warm-start`), with less work where the first
# screen found the time: the stem, the first block, and the 1x1 convolution before the GDC
# (128 -> 256 channels at 5x5: as many multiply-adds as the 3200x256 layer it replaced).
ISSUE20_WARM = [
    ("mtfl", 32, 5, 2, 32, 256, "flatten"),
    ("mtfl", 32, 5, 2, 32, 256, "gdc"),
    ("mtfl", 32, 5, 1, 16, 256, "gdc"),
    ("mtfl", 32, 5, 2, 32, 128, "gdc"),
    ("mtfl", 32, 5, 1, 32, 128, "gdc"),
    ("mtfl", 32, 5, 2, 16, 128, "gdc"),
    ("mtfl", 32, 5, 1, 16, 128, "gdc"),
    ("mtfl", 32, 5, 1, 24, 256, "gdc"),
    ("mtfl", 24, 5, 1, 24, 128, "gdc"),
]
# issue 20, stop 20: run 63's shape against a GDC over the 10x10 map as well (--pool gdc-fine:
# 64 of the features from the 10x10 map, the rest from the 5x5 one)
ISSUE20_FINE = [
    ("mtfl", 32, 5, 1, 16, 256, "gdc"),
    ("mtfl", 32, 5, 1, 16, 256, "gdc-fine"),
    ("mtfl", 32, 5, 1, 16, 288, "gdc-fine"),
    ("mtfl", 32, 5, 1, 16, 320, "gdc-fine"),
]
SETS = {"trunks": CANDIDATES, "issue20": ISSUE20, "issue20-warm": ISSUE20_WARM, "issue20-fine": ISSUE20_FINE}


def tflite_bytes(model, int8: bool) -> bytes:
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as d:
        model.export(d, format="tf_saved_model", verbose=False)
        conv = tf.lite.TFLiteConverter.from_saved_model(d)
        if int8:
            rng = np.random.default_rng(0)
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([rng.normal(size=(1, 40, 40, 1)).astype(np.float32)] for _ in range(64))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = conv.inference_output_type = tf.int8
        return conv.convert()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", default="trunks", choices=sorted(SETS), help="which candidates (default: trunks)")
    args = ap.parse_args()
    from facemtl.train.quiet import import_tensorflow

    import_tensorflow()
    from facemtl.convert.bench import tflite_invoke_ms
    from facemtl.runtime.spec import default_spec
    from facemtl.train.model import build_model

    rows, contents = [], []
    for trunk, width, depth, first, stem, features, *pool in SETS[args.set]:
        pool = pool[0] if pool else "flatten"
        model = build_model(default_spec(), trunk=trunk, width=width or 32, depth=depth or 6, first_block=first or 2,
                            stem=stem, features=features, pool=pool)
        rows.append({"trunk": trunk, "width": width, "depth": depth, "first_block": first, "stem": stem,
                     "features": features, "pool": pool, "params": int(model.count_params())})
        for kind in ("fp32", "int8"):
            contents.append(tflite_bytes(model, kind == "int8"))
    timings = iter(zip(contents, tflite_invoke_ms(contents, args.runs)))
    print(f"{'trunk':<10}{'width':>6}{'depth':>6}{'first':>6}{'stem':>6}{'feat':>6}{'pool':>10}{'params':>10}{'fp32 KB':>9}"
          f"{'fp32 ms':>9}{'int8 KB':>9}{'int8 ms':>9}  (median, batch 1, 1 thread, interleaved)")
    for row in rows:
        for kind in ("fp32", "int8"):
            content, (med, p95) = next(timings)
            row[kind] = {"bytes": len(content), "median_ms": round(med, 4), "p95_ms": round(p95, 4)}
        print(f"{row['trunk']:<10}{row['width'] or '-':>6}{row['depth'] or '-':>6}{row['first_block'] or '-':>6}"
              f"{row['stem'] or '-':>6}{row['features']:>6}{row['pool']:>10}{row['params']:>10}"
              f"{row['fp32']['bytes'] / 1024:>9.0f}{row['fp32']['median_ms']:>9.3f}"
              f"{row['int8']['bytes'] / 1024:>9.0f}{row['int8']['median_ms']:>9.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
