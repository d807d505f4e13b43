"""`facemtl bench`: size, per-face latency and per-head metrics of converted files.

Latency is one face at a time (batch 1) through `runtime.backends` (the real interpreter,
`threads` threads, input quantisation and output dequantisation included: what an
application pays per face), median and 95th percentile over `runs` calls after `warmup`.
No TensorFlow: this runs where the runtime runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from convert.check import head_metric
from runtime.artifact import ModelFileError
from runtime.formats import FORMAT_NAMES, SUFFIXES

REJECTED_DIR = "rejected"  # where `facemtl convert` keeps files that failed their check



def latency_ms(backend, crops: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Median and p95 milliseconds of `backend.run` on one face, cycling through `crops`."""
    n = len(crops)
    for i in range(warmup):
        backend.run(crops[i % n:i % n + 1])
    times = np.empty(runs)
    for i in range(runs):
        x = crops[i % n:i % n + 1]
        t0 = time.perf_counter()
        backend.run(x)
        times[i] = time.perf_counter() - t0
    return {"median": float(np.median(times) * 1e3), "p95": float(np.percentile(times, 95) * 1e3), "runs": runs}


def find_files(paths: list[str | Path]) -> list[Path]:
    """Model files named directly, or every .tflite/.onnx file in a folder (not in rejected/)."""
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.suffix in SUFFIXES.values() and f.is_file())
        else:
            found.append(p)
    return found


def _order(row: dict) -> tuple:
    fmt = row["format"]
    return (FORMAT_NAMES.index(fmt) if fmt in FORMAT_NAMES else len(FORMAT_NAMES), row["file"])


def bench_files(files: list[Path], crops=None, runs: int = 200, warmup: int = 20, threads: int = 1,
                log=None) -> list[dict]:
    """One row per file: format, size, latency, per-head metrics (if `crops` has ground truth)."""
    from runtime.backends import load_backend

    rows = []
    rng = np.random.default_rng(0)
    for f in files:
        # "rejected": it runs, but `facemtl convert` put it under rejected/ (it failed its check)
        status = "rejected" if f.parent.name == REJECTED_DIR else "ok"
        row = {"file": str(f), "format": f.suffix.lstrip("."), "status": status, "size_bytes": None,
               "latency_ms": None, "metrics": {}, "error": None}
        try:
            row["size_bytes"] = f.stat().st_size
            with load_backend(f, threads=threads) as b:
                row["format"] = b.format
                spec = b.spec
                x = crops.x if crops is not None else rng.normal(size=(32, *spec.input.shape)).astype(np.float32)
                row["latency_ms"] = latency_ms(b, x, runs=runs, warmup=warmup)
                if crops is not None:
                    out = b.run(crops.x)
                    for h in spec.heads:
                        v = head_metric(h, out[h.name], crops.landmarks, crops.labels)
                        if v is not None:
                            row["metrics"][f"{h.name}/{h.metric}"] = v
        except (ModelFileError, OSError, ValueError, ImportError) as e:
            row["status"] = "failed"
            row["error"] = str(e)
        if log:
            lat = row["latency_ms"]
            log(f"{row['format']}: {f.name}: " + (f"{lat['median']:.3f} ms median" if lat else f"error: {row['error']}"))
        rows.append(row)
    return sorted(rows, key=_order)
