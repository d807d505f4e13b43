"""VIDEO mode with the refinement stage off and as it runs by default (level 1 in VIDEO mode,
both levels in IMAGE mode; `FaceAnalyzerOptions.refine_levels`), side by side in one run, one
thread:

- quality: `facemtl bench --live`'s numbers on the sample stream (still and moving, raw and
  smoothed; IMAGE mode on the still stream) and its crowd stream (eight MTFL training faces
  moving, entering and leaving: found rate, NME, median analysis time per frame), for each
  setting;
- speed, interleaved: an analyzer with the refinement off and one with the default given the
  same frames in turn, `--rounds` rounds (a load change of the shared machine hits both
  alike): the median over frames of each frame's fastest round, on the moving sample stream
  and on the crowd stream, VIDEO mode.

    python bench/refine_video.py --json bench/refine_video.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.live.bench import _analyzer, _sample_frames, crowd, quality
from facemtl.runtime.live.demo import LIVE_DETECTOR

SETTINGS = {"refine_off": False, "refine_default": None}


def interleaved(model, detector, frames, rounds: int, warmup: int) -> dict:
    """Median over frames (after `warmup`) of each frame's fastest round, VIDEO mode, per setting."""
    ms = np.zeros((len(SETTINGS), rounds, len(frames)))
    for r in range(rounds):
        analyzers = [_analyzer(model, detector, None, 1, True, refine=on) for on in SETTINGS.values()]
        for j, (i, ts, img) in enumerate(frames):
            for k, a in enumerate(analyzers):
                t0 = time.perf_counter()
                a.analyze_for_video(img, ts)
                ms[k, r, j] = 1000 * (time.perf_counter() - t0)
        for a in analyzers:
            a.close()
    best = ms.min(axis=1)[:, warmup:]
    return {name: {"ms_median": round(float(np.median(best[k])), 3), "fps": round(1000 / float(np.median(best[k])), 1)}
            for k, name in enumerate(SETTINGS)}


def crowd_frames(n: int):
    from facemtl.runtime.live.crowd import CrowdStream

    s = CrowdStream(None, frames=n)
    return [(i, s.timestamp_ms(i), s.frame(i)) for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--detector", default=LIVE_DETECTOR)
    p.add_argument("--crowd-frames", type=int, default=480)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cv2.setNumThreads(1)
    out = {"detector": args.detector, "model": args.model, "load_average_start": [round(v, 2) for v in os.getloadavg()],
           "runs": {}}
    for name, on in SETTINGS.items():
        q = quality(args.model, args.detector, None, 15, refine=on)
        c = crowd(args.model, args.detector, None, 15, n=args.crowd_frames, refine=on)
        out["runs"][name] = {"quality": q, "crowd": c}
        print(name, json.dumps({"moving_raw": q["moving_raw"], "moving_smoothed": q["moving_smoothed"],
                                "still_image_mode": q["still_image_mode"]["nme"], "crowd_tracking": c["tracking"],
                                "crowd_image_mode": c["image_mode"]}), flush=True)
    _, sample = _sample_frames(300, "moving")
    out["interleaved"] = {
        "sample_moving": interleaved(args.model, args.detector, sample, args.rounds, 20),
        "crowd": interleaved(args.model, args.detector, crowd_frames(args.crowd_frames), args.rounds, 0)}
    print("interleaved", json.dumps(out["interleaved"]), flush=True)
    off, on = (out["runs"][k] for k in SETTINGS)
    out["ratios"] = {
        "sample_moving_raw_nme": round(on["quality"]["moving_raw"]["nme"] / off["quality"]["moving_raw"]["nme"], 3),
        "sample_moving_smoothed_nme": round(on["quality"]["moving_smoothed"]["nme"]
                                            / off["quality"]["moving_smoothed"]["nme"], 3),
        "crowd_tracking_nme": round(on["crowd"]["tracking"]["nme"] / off["crowd"]["tracking"]["nme"], 3)}
    print("ratios", json.dumps(out["ratios"]), flush=True)
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
