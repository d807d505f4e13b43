"""VIDEO mode with the refinement stage off and on: `facemtl bench --live`'s quality numbers
(the sample stream, still and moving, raw and smoothed; IMAGE mode on the still stream) and
its crowd stream (found, NME, analysis time per frame), for each setting, one thread.

    python bench/refine_video.py --json bench/refine_video.json

Off is `facemtl.runtime.refine.DEFAULT_ON` set False in this process (what `refine=None`
reads), so both runs build their analyzers through the live benchmark's own code.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import facemtl.runtime.refine as refine
from facemtl.runtime.live.bench import crowd, quality
from facemtl.runtime.live.demo import LIVE_DETECTOR


def interleaved_fps(model, detector, n: int = 300, rounds: int = 3) -> dict:
    """Analysis time per frame, VIDEO mode, one thread, on the moving sample stream: an analyzer
    with the refinement off and one with it on, given the same frames in turn (a load change
    of the shared machine hits both alike). Median over frames of each frame's fastest round."""
    import time

    import numpy as np

    from facemtl.runtime.live.bench import _analyzer, _sample_frames

    _, frames = _sample_frames(n, "moving")
    ms = np.zeros((2, rounds, len(frames)))
    for r in range(rounds):
        analyzers = []
        for on in (False, True):
            refine.DEFAULT_ON = on
            analyzers.append(_analyzer(model, detector, None, 1, True))
        for j, (i, ts, img) in enumerate(frames):
            for k, a in enumerate(analyzers):
                t0 = time.perf_counter()
                a.analyze_for_video(img, ts)
                ms[k, r, j] = 1000 * (time.perf_counter() - t0)
        for a in analyzers:
            a.close()
    best = ms.min(axis=1)[:, 20:]  # the tracker's first frames (detection, warm-up) left out
    return {name: {"ms_median": round(float(np.median(best[k])), 3), "fps": round(1000 / float(np.median(best[k])), 1)}
            for k, name in enumerate(("no_refine", "refine"))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--detector", default=LIVE_DETECTOR)
    p.add_argument("--crowd-frames", type=int, default=480)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    out = {"detector": args.detector, "model": args.model, "runs": {}}
    for on in (False, True):
        refine.DEFAULT_ON = on
        q = quality(args.model, args.detector, None, 15)
        c = crowd(args.model, args.detector, None, 15, n=args.crowd_frames)
        out["runs"]["refine" if on else "no_refine"] = {"quality": q, "crowd": c}
        print("refine" if on else "no refine", json.dumps({"moving_raw": q["moving_raw"], "moving_smoothed": q["moving_smoothed"],
                                                          "still_image_mode": q["still_image_mode"]["nme"],
                                                          "crowd_tracking": c["tracking"]}), flush=True)
    out["sample_moving_tracking_interleaved"] = interleaved_fps(args.model, args.detector)
    print("interleaved", json.dumps(out["sample_moving_tracking_interleaved"]), flush=True)
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
