"""Peak memory of `facemtl predict` on one input, at the default pixel cap.

    python bench/predict_memory.py                 # the images below, made in a temporary folder
    python bench/predict_memory.py --uncapped      # also the 30000 x 30000 PNG with --max-pixels 0

Each image runs in its own `facemtl predict -j1` process; its peak RSS is the child's
ru_maxrss. The inputs: the largest images the default cap (50 MP) admits, as baseline and
progressive JPEG and as PNG (a real MTFL face scaled up, so the detector has work to do), and
16-bit PNG (RGBA) and TIFF, the widest pixels before conversion; and the hostile ones it refuses from their headers (a 3-line PPM that claims 50000 x 50000, a
real 30000 x 30000 PNG of under 1 MB). Prints one row per input: MB, seconds, what predict
said.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "facemtl.runtime.cli"]


def face(data: Path) -> np.ndarray:
    files = sorted((data / "lfw_5590").glob("*.jpg"))
    if files:
        return cv2.imread(str(files[0]))
    return np.random.default_rng(0).integers(0, 256, (250, 250, 3), dtype=np.uint8)


def make_inputs(folder: Path, data: Path, uncapped: bool) -> list[tuple[Path, list[str]]]:
    w, h = 8660, 5770  # 49.97 MP: just under the default cap
    big = cv2.resize(face(data), (w, h), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(0).integers(0, 24, big.shape, dtype=np.uint8)  # texture: no trivial PNG
    big = cv2.add(big, noise)
    out = []
    p = folder / "50mp.jpg"
    cv2.imwrite(str(p), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
    out.append((p, []))
    p = folder / "50mp_progressive.jpg"
    cv2.imwrite(str(p), big, [cv2.IMWRITE_JPEG_QUALITY, 92, cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    out.append((p, []))
    p = folder / "50mp.png"
    cv2.imwrite(str(p), big, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    out.append((p, []))
    p = folder / "50mp_16bit_rgba.png"  # the widest pixels a PNG holds: 8 bytes each before conversion
    cv2.imwrite(str(p), cv2.cvtColor(big, cv2.COLOR_BGR2BGRA).astype(np.uint16) * 257, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    out.append((p, []))
    p = folder / "50mp_16bit.tif"  # uncompressed: 300 MB, the largest file the cap admits
    cv2.imwrite(str(p), big.astype(np.uint16) * 257, [cv2.IMWRITE_TIFF_COMPRESSION, 1])
    out.append((p, []))
    del big, noise
    p = folder / "huge.ppm"
    p.write_bytes(b"P6\n50000 50000\n255\n\0\0\0")
    out.append((p, []))
    p = folder / "30000x30000.png"
    cv2.imwrite(str(p), np.zeros((30000, 30000), np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    out.append((p, []))
    if uncapped:
        out.append((p, ["--max-pixels", "0"]))
    return out


def run(path: Path, extra: list[str]) -> dict:
    # each run in a fresh child whose own peak is read back: ru_maxrss of RUSAGE_CHILDREN is the
    # largest of all children so far, so a wrapper process reports exactly one child's peak
    code = ("import resource, subprocess, sys, json, time; t = time.monotonic(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(json.dumps({'rc': r.returncode, 'seconds': time.monotonic() - t, "
            "'mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, "
            "'out': (r.stdout.splitlines() or [''])[0], 'err': r.stderr.strip().splitlines()[-1:]}))")
    r = subprocess.run([sys.executable, "-c", code, *CLI, "predict", "-j1", *extra, str(path)], capture_output=True,
                       text=True)
    return json.loads(r.stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("FACEMTL_DATA", ROOT.parent / "shared" / "data" / "mtfl")))
    ap.add_argument("--uncapped", action="store_true", help="also run the 30000 x 30000 PNG with no cap (5+ GB)")
    args = ap.parse_args(argv)
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        for path, extra in make_inputs(Path(d), args.data, args.uncapped):
            r = run(path, extra)
            line = json.loads(r["out"].splitlines()[0]) if r["out"].strip() else {}
            said = line.get("error") or f"{len(line.get('faces', []))} face(s)"
            print(f"{path.name:24s} {' '.join(extra):16s} {path.stat().st_size / 1e6:7.1f} MB file  "
                  f"peak {r['mb']:7.0f} MB  {r['seconds']:5.1f} s  exit {r['rc']}  {said[:90]}", flush=True)
            if not extra:
                worst = max(worst, r["mb"])
    print(f"largest peak at the default cap: {worst:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
