"""`facemtl bench`: size, per-face latency and per-head metrics of converted files.

Latency is one face at a time (batch 1) through `facemtl.runtime.backends` (the real interpreter,
`threads` threads, input quantisation and output dequantisation included: what an
application pays per face), median and 95th percentile over `runs` calls after `warmup`.
Several files are timed interleaved: `rounds` rounds, each giving every file its share of
the calls in turn, so that a machine that slows down or speeds up mid-run (a shared CPU)
moves all files alike and their ratios hold.
No TensorFlow: this runs where the runtime runs.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from facemtl.convert.check import head_metric
from facemtl.runtime.artifact import ModelFileError
from facemtl.runtime.formats import FORMAT_NAMES, SUFFIXES

REJECTED_DIR = "rejected"  # where `facemtl convert` keeps files that failed their check
ROUNDS = 50  # rounds of interleaved timing in `facemtl bench`: short rounds, so a fast or slow phase
# of a shared machine (seconds long) falls on every file alike



def time_interleaved(calls: list, runs: int = 200, warmup: int = 20, rounds: int = 10) -> list[np.ndarray]:
    """Seconds of each of `runs` calls of every zero-argument callable in `calls`, after
    `warmup` calls each: in each of `rounds` rounds every callable makes its share of the
    calls in turn, so a machine that changes speed mid-run moves them all alike."""
    for call in calls:
        for _ in range(warmup):
            call()
    rounds = max(1, min(rounds, runs))
    times = [np.empty(runs) for _ in calls]
    done = 0
    for r in range(rounds):
        k = runs // rounds + (r < runs % rounds)
        for call, t in zip(calls, times):
            for i in range(done, done + k):
                t0 = time.perf_counter()
                call()
                t[i] = time.perf_counter() - t0
        done += k
    return times


def tflite_invoke_ms(contents: list[bytes], runs: int, rounds: int = 10) -> list[tuple[float, float]]:
    """(median, p95) ms of `invoke()` per TFLite model (file bytes) at batch 1, one thread, the
    models taking turns (`time_interleaved`); the input is zeros, since latency does not
    depend on it. What bench/ scripts compare variants of a model with."""
    from ai_edge_litert.interpreter import Interpreter

    calls = []
    for content in contents:
        it = Interpreter(model_content=content, num_threads=1)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        it.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        calls.append(it.invoke)
    times = time_interleaved(calls, runs, warmup=100, rounds=rounds)
    return [(float(np.median(t) * 1e3), float(np.percentile(t, 95) * 1e3)) for t in times]


def _summary(times: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(times) * 1e3), "p95": float(np.percentile(times, 95) * 1e3), "runs": len(times)}


def _one_face_at_a_time(backend, crops: np.ndarray):
    """A call of `backend.run` on the next face of `crops` (cycling) at each call."""
    n, counter = len(crops), itertools.count()

    def call():
        i = next(counter) % n
        backend.run(crops[i:i + 1])
    return call


def latency_ms(backend, crops: np.ndarray, runs: int = 200, warmup: int = 20) -> dict[str, float]:
    """Median and p95 milliseconds of `backend.run` on one face, cycling through `crops`."""
    return _summary(time_interleaved([_one_face_at_a_time(backend, crops)], runs, warmup, rounds=1)[0])


def interleaved_latency_ms(backends: list, crops: list[np.ndarray], runs: int = 200, warmup: int = 20,
                           rounds: int = 10) -> list[dict[str, float]]:
    """`latency_ms` of several backends measured side by side (`time_interleaved`)."""
    calls = [_one_face_at_a_time(b, x) for b, x in zip(backends, crops)]
    return [_summary(t) for t in time_interleaved(calls, runs, warmup, rounds)]


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
                log=None, rounds: int = ROUNDS) -> list[dict]:
    """One row per file: format, size, latency, per-head metrics (if `crops` has ground truth).
    The files that load are timed together, interleaved (`interleaved_latency_ms`)."""
    from contextlib import ExitStack

    from facemtl.runtime.backends import load_backend

    rows, timed = [], []  # timed: (row, backend, inputs)
    rng = np.random.default_rng(0)
    with ExitStack() as stack:
        for f in files:
            # "rejected": it runs, but `facemtl convert` put it under rejected/ (it failed its check)
            status = "rejected" if f.parent.name == REJECTED_DIR else "ok"
            row = {"file": str(f), "format": f.suffix.lstrip("."), "status": status, "size_bytes": None,
                   "latency_ms": None, "metrics": {}, "error": None}
            rows.append(row)
            try:
                row["size_bytes"] = f.stat().st_size
                b = stack.enter_context(load_backend(f, threads=threads))
                row["format"] = b.format
                spec = b.spec
                x = crops.x if crops is not None else rng.normal(size=(32, *spec.input.shape)).astype(np.float32)
                if crops is not None:
                    out = b.run(crops.x)
                    for h in spec.heads:
                        v = head_metric(h, out[h.name], crops.landmarks, crops.labels)
                        if v is not None:
                            row["metrics"][f"{h.name}/{h.metric}"] = v
                timed.append((row, b, x))
            except (ModelFileError, OSError, ValueError, ImportError) as e:
                row["status"] = "failed"
                row["error"] = str(e)
                if log:
                    log(f"{row['format']}: {f.name}: error: {row['error']}")
        if timed:
            lats = interleaved_latency_ms([b for _, b, _ in timed], [x for _, _, x in timed], runs=runs,
                                          warmup=warmup, rounds=rounds)
            for (row, _, _), lat in zip(timed, lats):
                row["latency_ms"] = lat
                if log:
                    log(f"{row['format']}: {Path(row['file']).name}: {lat['median']:.3f} ms median")
    return sorted(rows, key=_order)
