"""The small-image fallback (`FaceAnalyzerOptions.verify_small`, run 59) against the detector
alone: on tight face crops, the share found (the detector's face, or else the whole image
when the face verifier's P(face) reaches tau), and on face-free crops the share in which a
face is reported, for several tau, in one pass (each crop's detections and P(face) are
computed once).

The detector is IMAGE mode's default (packaged YuNet at 320 px, the full-size retry and the
padded retry of small images); a crop counts as found as in `bench/frames.py tune-tight`
(`found_face`). Choose tau on the validation part of training.txt (`bench/frames.py
make-tight --part validation`, `make-background --part validation`); report testing crops.

    python bench/verify_tight.py --frames /tmp/tight/val2.0 /tmp/tight/val1.6 /tmp/tight/val1.3 \\
        /tmp/tight/val_turned --background /tmp/tight/val_background --json bench/verify_tight_val.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from frames import FRAME_SQUARE, found_face, load_frames  # noqa: E402

from facemtl.runtime.analyzer import PACKAGED_MODELS  # noqa: E402
from facemtl.runtime.backends import load_backend  # noqa: E402
from facemtl.runtime.detectors import create_detector  # noqa: E402
from facemtl.runtime.verify import FaceVerifier, packaged_verify_path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=Path, nargs="+", required=True, help="make-tight folders")
    p.add_argument("--background", type=Path, required=True, help="a make-background folder")
    p.add_argument("--verifier", type=Path, default=None, help="verifier file (default: the packaged one)")
    p.add_argument("--taus", default="0.5,0.7,0.9,0.97")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cv2.setNumThreads(1)
    taus = [float(t) for t in args.taus.split(",")]
    path = args.verifier or packaged_verify_path(PACKAGED_MODELS, None)
    verifier = FaceVerifier(load_backend(path, threads=1))
    det = create_detector("yunet", max_side=320)
    det.retry_full = True

    def look(image):
        found = det.detect(image)
        return found, (None if found else verifier.probability(image))

    out = {"verifier": str(path), "taus": taus, "sets": {}}
    for folder in args.frames:
        n, alone, by_tau = 0, 0, {t: 0 for t in taus}
        for file, truth in load_frames(folder, None):
            image = cv2.imread(str(file), cv2.IMREAD_COLOR)
            found, pf = look(image)
            n += 1
            hit = found_face([{"box": d.box} for d in found], truth, FRAME_SQUARE) is not None
            alone += hit
            h, w = image.shape[:2]
            whole = found_face([{"box": (0.0, 0.0, float(w), float(h))}], truth, FRAME_SQUARE) is not None
            for t in taus:
                by_tau[t] += hit or (pf is not None and pf >= t and whole)
        out["sets"][folder.name] = {"crops": n, "detector_alone": round(100.0 * alone / n, 2),
                                    **{f"tau_{t}": round(100.0 * by_tau[t] / n, 2) for t in taus}}
        print(folder.name, json.dumps(out["sets"][folder.name]), flush=True)
    files = json.loads((args.background / "frames.json").read_text())["files"]
    alone, by_tau = 0, {t: 0 for t in taus}
    for name in files:
        found, pf = look(cv2.imread(str(args.background / name), cv2.IMREAD_COLOR))
        alone += bool(found)
        for t in taus:
            by_tau[t] += bool(found) or (pf is not None and pf >= t)
    n = len(files)
    out["background"] = {"crops": n, "detector_alone": round(100.0 * alone / n, 2),
                         **{f"tau_{t}": round(100.0 * by_tau[t] / n, 2) for t in taus}}
    print("face-free", json.dumps(out["background"]), flush=True)
    sets = list(out["sets"].values())
    out["mean_found"] = {k: round(float(np.mean([s[k] for s in sets])), 3)
                         for k in ["detector_alone", *(f"tau_{t}" for t in taus)]}
    print("mean found", json.dumps(out["mean_found"]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
