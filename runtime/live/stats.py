"""Per-stage timings of a frame loop: medians, p95 and means, as a table or a dict."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

# the order stages are reported in
STAGE_ORDER = ("capture", "detect", "crop", "infer", "track", "draw", "output", "analysis", "total")


class StageStats:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.frames = 0

    def add(self, stages: dict[str, float]) -> None:
        self.frames += 1
        for k, v in stages.items():
            self.samples[k].append(float(v))

    def summary(self, stage: str, only_nonzero: bool = False) -> dict | None:
        v = np.asarray(self.samples.get(stage, ()), np.float64)
        if only_nonzero:
            v = v[v > 0]
        if v.size == 0:
            return None
        return {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)),
                "mean_ms": float(v.mean()), "frames": int(v.size)}

    def to_dict(self) -> dict:
        out = {}
        for s in STAGE_ORDER:
            d = self.summary(s, only_nonzero=(s == "detect"))
            if d is not None:
                if s == "detect":
                    d["mean_per_frame_ms"] = float(np.sum(self.samples[s]) / max(self.frames, 1))
                out[s] = d
        return out

    def fps(self, stage: str = "total") -> dict:
        """FPS from the median frame time and from the mean (the mean counts detection frames)."""
        d = self.summary(stage)
        if d is None:
            return {"median": 0.0, "mean": 0.0}
        return {"median": 1000.0 / max(d["median_ms"], 1e-9), "mean": 1000.0 / max(d["mean_ms"], 1e-9)}
