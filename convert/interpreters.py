"""Run a model file in a named interpreter, here or in another Python (`--check-with`).

A Pi may run the packaged .tflite file in tflite-runtime rather than LiteRT, and the two do
not compute alike (tflite-runtime 2.14 does not hand int8 ops to XNNPACK; raw outputs differ
by up to 0.12 on the packaged file), so a check made with one does not cover the other:
`facemtl convert --check-with litert,tflite-runtime` checks every head in each.

tflite-runtime 2.14 is built for numpy 1 and cannot be imported next to TensorFlow's
numpy 2, so an interpreter can be named with another environment's Python
(`tflite-runtime=/path/to/pi-venv/bin/python`, an environment with facemtl and that
interpreter installed), which runs this module's worker on the crops:

    PYTHON -m facemtl.convert.interpreters MODEL CROPS.npy OUT.npz --interpreter tflite-runtime

The worker needs only numpy, the runtime and the interpreter (no TensorFlow): it runs in a
Pi's environment too (tests/test_arm64.py runs it on emulated arm64).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from facemtl.runtime.backends import TFLITE_INTERPRETERS

# interpreter name -> its distribution on PyPI (for the version in reports)
DISTRIBUTIONS = {"litert": "ai-edge-litert", "tflite-runtime": "tflite-runtime", "tensorflow": "tensorflow",
                 "onnxruntime": "onnxruntime"}


class InterpreterError(RuntimeError):
    """A named interpreter could not run the file (not importable, or its worker failed)."""


@dataclass(frozen=True)
class CheckWith:
    """One interpreter to check .tflite files in: its name, and the Python that has it (None: this one)."""

    name: str
    python: Path | None = None

    def __str__(self) -> str:
        return self.name if self.python is None else f"{self.name}={self.python}"


def parse_check_with(items: list[str] | str | None) -> tuple[CheckWith, ...]:
    """"litert,tflite-runtime=/venv/bin/python" (or a list of such) -> CheckWith entries, in order."""
    if items is None:
        return ()
    if isinstance(items, str):
        items = [items]
    out = []
    for part in (p.strip() for item in items for p in item.split(",")):
        if not part:
            continue
        name, sep, python = part.partition("=")
        if name not in TFLITE_INTERPRETERS:
            raise ValueError(f"--check-with: unknown interpreter {name!r}; choose from {', '.join(TFLITE_INTERPRETERS)} "
                             "(NAME or NAME=PYTHON)")
        if sep and not python:
            raise ValueError(f"--check-with {part!r}: give the Python after '=' (NAME=/path/to/bin/python)")
        out.append(CheckWith(name, Path(python) if sep else None))
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ValueError(f"--check-with names an interpreter twice: {', '.join(names)}")
    return tuple(out)


@dataclass
class InterpreterRun:
    """Raw outputs of one file in one interpreter, and where they were computed."""

    interpreter: str                   # litert | tflite-runtime | tensorflow | onnxruntime
    version: str
    machine: str                       # x86_64, aarch64
    python: str
    outputs: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    latency_ms: dict[str, float] | None = None

    def info(self) -> dict:
        return {"interpreter": self.interpreter, "version": self.version, "machine": self.machine,
                "python": self.python, "latency_ms": self.latency_ms}


def _version(name: str) -> str:
    try:
        return metadata.version(DISTRIBUTIONS.get(name, name))
    except metadata.PackageNotFoundError:
        return "?"


def run_here(path: Path, x: np.ndarray, interpreter: str | None = None, latency_runs: int = 0) -> InterpreterRun:
    """`path` on crops `x` in this process; `interpreter` None: the one `load_backend` picks."""
    from facemtl.convert.bench import latency_ms
    from facemtl.runtime.backends import load_backend

    try:
        backend = load_backend(path, threads=1, interpreter=interpreter)
    except ImportError as e:
        raise InterpreterError(f"{e}; or name a Python that has it: --check-with {interpreter}=PYTHON") from None
    with backend:
        out = backend.run(x)
        lat = latency_ms(backend, x, runs=latency_runs) if latency_runs else None
        name = backend.interpreter
    return InterpreterRun(name, _version(name), platform.machine(), sys.executable, out, lat)


def run_in(python: Path, path: Path, x: np.ndarray, interpreter: str, latency_runs: int = 0,
           timeout: float = 1800) -> InterpreterRun:
    """`run_here` in another Python (its environment must have facemtl and the interpreter)."""
    with tempfile.TemporaryDirectory(prefix="facemtl-check-") as tmp:
        crops, out = Path(tmp) / "crops.npy", Path(tmp) / "out.npz"
        np.save(crops, np.asarray(x, np.float32))
        cmd = [str(python), "-m", "facemtl.convert.interpreters", str(Path(path).resolve()), str(crops), str(out),
               "--interpreter", interpreter, "--latency-runs", str(latency_runs)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InterpreterError(f"{python}: cannot run the {interpreter} worker ({e})") from None
        if r.returncode != 0:
            tail = "; ".join(r.stderr.strip().splitlines()[-3:]) or f"exit {r.returncode}"
            raise InterpreterError(f"{python}: the {interpreter} worker failed ({tail})")
        return read_outputs(out)


def run(path: Path, x: np.ndarray, check_with: CheckWith | None = None, latency_runs: int = 0) -> InterpreterRun:
    if check_with is None:
        return run_here(path, x, None, latency_runs)
    if check_with.python is None:
        return run_here(path, x, check_with.name, latency_runs)
    return run_in(check_with.python, path, x, check_with.name, latency_runs)


def write_outputs(path: Path, result: InterpreterRun) -> None:
    np.savez(path, **{f"head/{k}": v for k, v in result.outputs.items()},
             info=np.array(json.dumps(result.info())))


def read_outputs(path: Path) -> InterpreterRun:
    with np.load(path) as z:
        info = json.loads(str(z["info"]))
        outputs = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("head/")}
    return InterpreterRun(info["interpreter"], info["version"], info["machine"], info["python"], outputs,
                          info["latency_ms"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m facemtl.convert.interpreters",
                                description="Run a model file on crops (.npy) in a named interpreter; "
                                            "write its raw outputs by head name and what ran them (.npz).")
    p.add_argument("model", type=Path)
    p.add_argument("crops", type=Path, help="(N, S, S, C) float32 normalised crops, .npy")
    p.add_argument("out", type=Path, help=".npz to write")
    p.add_argument("--interpreter", choices=tuple(TFLITE_INTERPRETERS), default=None,
                   help="default: the first importable (as load_backend)")
    p.add_argument("--latency-runs", type=int, default=0, metavar="N", help="also time N batch-1 calls")
    args = p.parse_args(argv)
    try:
        result = run_here(args.model, np.load(args.crops), args.interpreter, args.latency_runs)
    except InterpreterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_outputs(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
