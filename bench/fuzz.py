"""Seeded fuzzing of what facemtl reads: mutated images through `facemtl predict`, mutated
model files through `facemtl predict --model`.

    python bench/fuzz.py --images 1000 --models 200 --seed 0
    python bench/fuzz.py --images 40 --models 8 --seed 1 --json fuzz.json   # what tests/test_fuzz.py runs

Images: JPEG and PNG files of real MTFL faces (and a few WebP, BMP, TIFF, PPM, JPEG 2000:
every format whose header the pixel cap reads), each mutant one of: bytes flipped (anywhere,
or in the first 512 bytes where the headers are), truncated, two sections swapped, a
section zeroed or repeated, or the header's size rewritten to claim a huge image. They run
through `facemtl predict` in a few processes, interleaved with the unmutated images; every
run must exit 0 or 1 with no traceback, give one line per input, and every unmutated
image's line must be identical to a clean run's.

Models: the packaged .tflite and .onnx files, each mutant one of: 1-8 bytes flipped in the
file's structure (outside the weight buffers) or anywhere, truncated, two sections swapped.
Each runs `facemtl predict --model MUTANT` on two faces in a worker process (one process
serves many mutants; it is restarted after a crash or a hang). A mutant may be refused
(exit 2, one line) or run (its answers may change: its weights did); a traceback, a crash
(the process killed by a signal) or a hang (over --timeout seconds) is a failure.

Prints the counts, writes them as JSON with --json, exit 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mtfl"
CLI = [sys.executable, "-m", "facemtl.runtime.cli"]


# --- mutations -------------------------------------------------------------------------------
def _flip(rng, data: bytearray, lo: int = 0, hi: int | None = None, count: int | None = None) -> str:
    hi = len(data) if hi is None else min(hi, len(data))
    k = int(count or rng.integers(1, 17))
    for _ in range(k):
        i = int(rng.integers(lo, max(lo + 1, hi)))
        if i < len(data):
            data[i] = (data[i] ^ int(rng.integers(1, 256))) & 0xFF
    return f"flip{k}"


def _truncate(rng, data: bytearray) -> tuple[bytearray, str]:
    n = int(rng.integers(0, len(data)))
    return data[:n], f"truncate{n}"


def _swap(rng, data: bytearray) -> str:
    size = int(rng.integers(1, max(2, len(data) // 8)))
    a, b = sorted(int(x) for x in rng.integers(0, max(1, len(data) - size), 2))
    if b < a + size:
        b = min(len(data) - size, a + size)
    data[a:a + size], data[b:b + size] = bytes(data[b:b + size]), bytes(data[a:a + size])
    return f"swap{size}"


def _zero(rng, data: bytearray) -> str:
    a = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, 256))
    data[a:a + n] = bytes(len(data[a:a + n]))
    return f"zero{n}"


def _repeat(rng, data: bytearray) -> tuple[bytearray, str]:
    a = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, 4096))
    return data[:a + n] + data[a:a + n] + data[a + n:], f"repeat{n}"


def _huge_header(rng, data: bytearray) -> str:
    """Rewrite the size in a PNG's IHDR, a BMP's or PPM's header or a JPEG's frame header to
    claim a huge image (other formats: bytes of the header flipped)."""
    w, h = int(rng.integers(20000, 65536)), int(rng.integers(20000, 65536))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        data[16:24] = struct.pack(">II", w, h)
        return "huge-png"
    if data[:2] == b"BM":
        data[18:26] = struct.pack("<ii", w, h)
        return "huge-bmp"
    if data[:2] == b"P6":
        data[:data.index(b"255")] = f"P6\n{w} {h}\n".encode()  # the header's width and height, rewritten
        return "huge-ppm"
    i = data.find(b"\xff\xc0")
    if i < 0:
        i = data.find(b"\xff\xc2")
    if i >= 0:
        data[i + 5:i + 9] = struct.pack(">HH", h, w)
        return "huge-jpeg"
    return _flip(rng, data, 0, 512)


def mutate_image(rng, original: bytes) -> tuple[bytes, str]:
    data = bytearray(original)
    kind = int(rng.integers(0, 7))
    if kind == 0:
        how = _flip(rng, data)
    elif kind == 1:
        how = "head-" + _flip(rng, data, 0, 512)
    elif kind == 2:
        data, how = _truncate(rng, data)
    elif kind == 3:
        how = _swap(rng, data)
    elif kind == 4:
        how = _zero(rng, data)
    elif kind == 5:
        data, how = _repeat(rng, data)
    else:
        how = _huge_header(rng, data)
    return bytes(data), how


def structure_ranges(path: Path, data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of a .tflite file that are not weight buffers (its flatbuffer tables:
    operators, tensors, shapes, quantization, metadata); the whole file for others."""
    if path.suffix != ".tflite":
        return [(0, len(data))]
    from facemtl.runtime.artifact import TFLiteFile

    tfl = TFLiteFile(data, path)
    spans = sorted(tfl.buffer_span(i) for i in range(len(tfl._buffers())))
    spans = [(a, a + n) for a, n in spans if n > 64]  # big buffers are weights; small ones are metadata too
    out, at = [], 0
    for a, b in spans:
        if a > at:
            out.append((at, a))
        at = max(at, b)
    if at < len(data):
        out.append((at, len(data)))
    return out


def mutate_model(rng, path: Path, original: bytes, structure: list[tuple[int, int]]) -> tuple[bytes, str]:
    data = bytearray(original)
    kind = int(rng.integers(0, 5))
    if kind in (0, 1):  # the case: a few structural bytes changed
        lo, hi = structure[int(rng.integers(0, len(structure)))]
        how = "struct-" + _flip(rng, data, lo, hi, count=int(rng.integers(1, 9)))
    elif kind == 2:
        how = _flip(rng, data, count=int(rng.integers(1, 9)))
    elif kind == 3:
        data, how = _truncate(rng, data)
    else:
        how = _swap(rng, data)
    return bytes(data), how


# --- images ----------------------------------------------------------------------------------
# the formats of the unmutated faces, in turn: mostly JPEG and PNG (what users have), and the
# other formats whose headers facemtl.runtime.images parses, so their parsers are fuzzed too
GOOD_FORMATS = (".jpg", ".png", ".jpg", ".png", ".webp", ".bmp", ".tif", ".ppm", ".jp2", ".png")


def good_images(data_dir: Path, n: int, out: Path) -> list[Path]:
    """n real faces: MTFL JPEGs, kept as they are or re-encoded (GOOD_FORMATS in turn)."""
    import cv2

    files = sorted((data_dir / "lfw_5590").glob("*.jpg"))[: 10 * n: 10] or sorted(data_dir.rglob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"{data_dir}: fewer than {n} JPEG faces")
    goods = []
    for i, f in enumerate(files[:n]):
        suffix = GOOD_FORMATS[i % len(GOOD_FORMATS)]
        p = out / f"good_{i:02d}{suffix}"
        if suffix == ".jpg":
            p.write_bytes(f.read_bytes())
        else:
            cv2.imwrite(str(p), cv2.imread(str(f)))
        goods.append(p)
    return goods


def _predict(inputs: list[str], timeout: float, extra: list[str]) -> dict:
    t = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        listfile = Path(d) / "out.jsonl"
        try:
            r = subprocess.run(CLI + ["predict", "-j2", "-o", str(listfile), *extra, *inputs],
                               capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"status": "hang", "seconds": time.monotonic() - t}
        lines = listfile.read_text().splitlines() if listfile.exists() else []
    return {"status": "ok", "rc": r.returncode, "stderr": r.stderr, "lines": [json.loads(x) for x in lines],
            "seconds": time.monotonic() - t}


def fuzz_images(n: int, rng, work: Path, data_dir: Path, timeout: float, chunk: int, extra: list[str]) -> dict:
    goods = good_images(data_dir, 20, work)
    clean = _predict([str(g) for g in goods], timeout, extra)
    if clean["status"] != "ok" or clean["rc"] != 0:
        raise SystemExit(f"the clean run failed: {clean.get('stderr', clean)[-2000:]}")
    expected = {line["image"]: line for line in clean["lines"]}
    mutants = []
    kinds: dict[str, int] = {}
    for i in range(n):
        base = goods[int(rng.integers(0, len(goods)))]
        data, how = mutate_image(rng, base.read_bytes())
        p = work / f"mut_{i:05d}{base.suffix}"
        p.write_bytes(data)
        mutants.append(p)
        k = how.rstrip("0123456789")
        kinds[k] = kinds.get(k, 0) + 1
    counts = {"mutants": n, "runs": 0, "tracebacks": 0, "hangs": 0, "crashes": 0, "bad_exit": 0,
              "missing_lines": 0, "good_checked": 0, "good_differ": 0, "mutant_errors": 0, "mutant_results": 0,
              "kinds": kinds, "failures": []}
    for start in range(0, n, chunk):
        part = mutants[start:start + chunk]
        inputs = []
        for j, m in enumerate(part):
            inputs.append(str(m))
            if j % 10 == 0:
                inputs.append(str(goods[(start + j) // 10 % len(goods)]))
        r = _predict(inputs, timeout, extra)
        counts["runs"] += 1
        if r["status"] == "hang":
            counts["hangs"] += 1
            counts["failures"].append({"chunk": start, "what": "hang"})
            continue
        if r["rc"] < 0:
            counts["crashes"] += 1
            counts["failures"].append({"chunk": start, "what": f"killed by signal {-r['rc']}"})
            continue
        if "Traceback" in r["stderr"]:
            counts["tracebacks"] += 1
            counts["failures"].append({"chunk": start, "what": "traceback", "stderr": r["stderr"][-3000:]})
        if r["rc"] not in (0, 1):
            counts["bad_exit"] += 1
            counts["failures"].append({"chunk": start, "what": f"exit {r['rc']}", "stderr": r["stderr"][-1000:]})
        got = [line["image"] for line in r["lines"]]
        if got != inputs:
            counts["missing_lines"] += abs(len(inputs) - len(got)) or 1
        for line in r["lines"]:
            if line["image"] in expected:
                counts["good_checked"] += 1
                if line != expected[line["image"]]:
                    counts["good_differ"] += 1
                    counts["failures"].append({"chunk": start, "what": "good image differs", "image": line["image"]})
            elif "error" in line:
                counts["mutant_errors"] += 1
            else:
                counts["mutant_results"] += 1
    return counts


# --- models ----------------------------------------------------------------------------------
WORKER = r"""
import contextlib, io, json, sys, traceback
from facemtl.runtime.cli import main
images = sys.argv[1:]
for line in sys.stdin:
    model, out = json.loads(line)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(["predict", "-m", model, "-d", "none", "-j1", "-o", out, *images])
        res = {"rc": rc}
    except BaseException as e:
        res = {"rc": None, "exception": type(e).__name__, "traceback": traceback.format_exc()[-2000:]}
    res["stderr"] = err.getvalue()[-2000:]
    print(json.dumps(res), flush=True)
"""


class _Worker:
    def __init__(self, images: list[str]):
        self.p = subprocess.Popen([sys.executable, "-c", WORKER, *images], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.p.stdout:
            self.q.put(line)
        self.q.put(None)  # the process ended

    def ask(self, model: str, out: str, timeout: float):
        self.p.stdin.write(json.dumps([model, out]) + "\n")
        self.p.stdin.flush()
        try:
            line = self.q.get(timeout=timeout)
        except queue.Empty:
            return "hang"
        if line is None:
            self.p.wait()
            return f"crash (signal {-self.p.returncode})" if self.p.returncode < 0 else f"crash (exit {self.p.returncode})"
        return json.loads(line)

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()


def fuzz_models(n: int, rng, work: Path, models: list[Path], images: list[str], timeout: float) -> dict:
    originals = {m: m.read_bytes() for m in models}
    structures = {m: structure_ranges(m, originals[m]) for m in models}
    counts = {"mutants": n, "refused": 0, "ran": 0, "tracebacks": 0, "crashes": 0, "hangs": 0, "multi_line": 0,
              "by_file": {m.name: 0 for m in models}, "failures": []}
    worker = _Worker(images)
    try:
        for i in range(n):
            # three in four mutants of the .tflite file (the one a Pi runs), the rest of the .onnx
            m = models[0] if len(models) == 1 or rng.random() < 0.75 else models[1 + int(rng.integers(0, len(models) - 1))]
            data, how = mutate_model(rng, m, originals[m], structures[m])
            path = work / f"model_{i:04d}{m.suffix}"
            path.write_bytes(data)
            counts["by_file"][m.name] += 1
            res = worker.ask(str(path), str(work / "model_out.jsonl"), timeout)
            if isinstance(res, str):
                counts["hangs" if res == "hang" else "crashes"] += 1
                counts["failures"].append({"model": path.name, "mutation": how, "what": res})
                worker.kill()
                worker = _Worker(images)
                continue
            if res["rc"] is None:
                counts["tracebacks"] += 1
                counts["failures"].append({"model": path.name, "mutation": how, "what": res["exception"],
                                           "traceback": res["traceback"]})
            elif res["rc"] == 2:
                counts["refused"] += 1
                lines = [ln for ln in res["stderr"].splitlines() if ln.strip()]
                if len(lines) != 1 or not lines[0].startswith("facemtl predict: error:"):
                    counts["multi_line"] += 1
                    counts["failures"].append({"model": path.name, "mutation": how, "what": "not one line",
                                               "stderr": res["stderr"]})
            else:
                counts["ran"] += 1
            path.unlink()
    finally:
        worker.kill()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1000, help="mutated images (default 1000)")
    ap.add_argument("--models", type=int, default=200, help="mutated model files (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEMTL_DATA", DEFAULT_DATA)),
                    help="the MTFL folder (default: $FACEMTL_DATA, else ../shared/data/mtfl)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a run counts as a hang")
    ap.add_argument("--chunk", type=int, default=250, help="mutated images per predict run")
    ap.add_argument("--json", type=Path, help="write the counts here")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    report = {"seed": args.seed}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="facemtl-fuzz-") as d:
        work = Path(d)
        if args.images:
            report["images"] = fuzz_images(args.images, rng, work, args.data, args.timeout, args.chunk, [])
        if args.models:
            models = [ROOT / "runtime" / "models" / "facemtl_int8.tflite", ROOT / "runtime" / "models" / "facemtl_fp32.onnx"]
            models = [m for m in models if m.is_file()]
            faces = [str(p) for p in good_images(args.data, 2, work)] if args.data.is_dir() else []
            report["models"] = fuzz_models(args.models, rng, work, models, faces, args.timeout)
    report["seconds"] = round(time.monotonic() - t0, 1)
    failed = 0
    for part in ("images", "models"):
        c = report.get(part)
        if not c:
            continue
        failed += c["tracebacks"] + c["crashes"] + c["hangs"] + c.get("bad_exit", 0) + c.get("good_differ", 0) \
            + c.get("missing_lines", 0) + c.get("multi_line", 0)
        shown = {k: v for k, v in c.items() if k != "failures"}
        print(f"{part}: {json.dumps(shown)}")
        for f in c["failures"][:5]:
            print(f"  FAILURE {json.dumps(f)[:1500]}")
    print(f"seed {args.seed}, {report['seconds']} s: {'FAILED' if failed else 'no traceback, crash or hang'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
