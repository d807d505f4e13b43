"""What a backend call costs beyond the interpreter: `invoke()` alone against `Backend.run`.

For TFLite files, one face at batch 1, one thread, interleaved in rounds (every file and
both ways of calling take turns in each round, so a shared CPU that changes speed moves
them alike). The difference is the numpy around the interpreter: input checks, int8
quantization of the input, dequantization of each head's output.

    python bench/backend_overhead.py runtime/models/facemtl_int8.tflite converted/model_fp32.tflite
    python bench/backend_overhead.py runtime/models/facemtl_int8.tflite --against 3922bea

`--against REV` also times `run()` of `runtime/backends.py` as it was at git revision REV
(loaded beside today's as a module of its own), so a change to the backend is measured side
by side with what it replaced, in one run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np



def _backends_at(rev: str):
    """runtime/backends.py as it was at `rev`, as a module of its own (its imports are absolute,
    so it runs beside today's)."""
    import subprocess
    import types

    root = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "show", f"{rev}:runtime/backends.py"], cwd=root, capture_output=True, text=True,
                         check=True).stdout
    mod = types.ModuleType(f"backends_{rev}")
    exec(compile(src, f"{rev}:runtime/backends.py", "exec"), mod.__dict__)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path, help=".tflite files")
    ap.add_argument("--runs", type=int, default=4000, help="timed calls per file and way (default 4000)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--against", metavar="REV", help="also time run() of runtime/backends.py at this git revision")
    args = ap.parse_args()
    from facemtl.convert.bench import time_interleaved
    from facemtl.runtime.backends import load_backend

    x = np.random.default_rng(0).normal(size=(1, 40, 40, 1)).astype(np.float32)
    calls = {}
    names = [f.name for f in args.files]
    for f in args.files:
        label = f.name if names.count(f.name) == 1 else str(f)  # two files of one name (two conversions) stay apart
        b = load_backend(f, threads=1)
        if not hasattr(b, "_it"):
            ap.error(f"{f}: not a TFLite file")
        b.run(x)  # leaves the quantized input in place: invoke() alone then runs on it
        calls[f"{label}: invoke()"] = b._it.invoke
        calls[f"{label}: run()"] = lambda b=b: b.run(x)
        if args.against:
            old = _backends_at(args.against).load_backend(f, threads=1)
            calls[f"{label}: run() at {args.against}"] = lambda b=old: b.run(x)
    times = time_interleaved(list(calls.values()), args.runs, warmup=200, rounds=args.rounds)
    print(f"median ms, batch 1, 1 thread, {args.runs} calls each, interleaved in {args.rounds} rounds")
    for name, t in zip(calls, times):
        print(f"{np.median(t) * 1e3:8.4f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
