"""Latency and size of each trunk at batch 1, one thread, in LiteRT (fp32 and int8).

What chose the default trunk's shape and width: the runtime's floor is 0.2 ms per face.
Weights are random (latency does not depend on them); int8 is calibrated on random inputs.

    python bench/trunks.py [--runs 2000] [--json bench/trunks.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CANDIDATES = [  # (trunk, width, activation)
    ("tcdcn", 0, "abs_tanh"),
    ("mtfl", 16, "relu6"),
    ("mtfl", 24, "relu6"),
    ("mtfl", 32, "relu6"),
    ("mtfl", 48, "relu6"),
]


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


def median_ms(content: bytes, runs: int) -> tuple[float, float]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=content, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    x = np.zeros(inp["shape"], inp["dtype"])
    times = np.empty(runs)
    for i in range(runs + 100):
        it.set_tensor(inp["index"], x)
        t = time.perf_counter()
        it.invoke()
        if i >= 100:
            times[i - 100] = time.perf_counter() - t
    return float(np.median(times) * 1e3), float(np.percentile(times, 95) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from train.quiet import import_tensorflow

    import_tensorflow()
    from runtime.spec import default_spec
    from train.model import build_model

    rows = []
    print(f"{'trunk':<10}{'width':>6}{'params':>10}{'fp32 KB':>9}{'fp32 ms':>9}{'int8 KB':>9}{'int8 ms':>9}  (median, batch 1, 1 thread)")
    for trunk, width, act in CANDIDATES:
        model = build_model(default_spec(), trunk=trunk, width=width or 32, activation=act if trunk != "tcdcn" else "relu6")
        row = {"trunk": trunk, "width": width, "params": int(model.count_params())}
        for kind in ("fp32", "int8"):
            b = tflite_bytes(model, kind == "int8")
            med, p95 = median_ms(b, args.runs)
            row[kind] = {"bytes": len(b), "median_ms": round(med, 4), "p95_ms": round(p95, 4)}
        rows.append(row)
        print(f"{trunk:<10}{width or '-':>6}{row['params']:>10}{row['fp32']['bytes'] / 1024:>9.0f}{row['fp32']['median_ms']:>9.3f}"
              f"{row['int8']['bytes'] / 1024:>9.0f}{row['int8']['median_ms']:>9.3f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
