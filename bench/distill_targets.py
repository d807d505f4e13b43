"""Cached teacher targets against a teacher run on every augmented crop (docs/experiments.md, run 44).

`facemtl train --teacher` runs the teacher once per training face on its un-augmented crop
and carries its landmarks through each augmented crop by the labels' own transform
(`facemtl.train.distill`). The alternative runs the teacher on every augmented crop, every
epoch. This script measures, on training faces only:

- how far the two targets are apart (NME between them, in the labels' inter-ocular units),
  beside how far each is from the labels, and how often the two agree on each class;
- what running the teacher per batch would cost: the teacher's forward pass on a batch
  against one training step of the student.

    .venv/bin/python bench/distill_targets.py --teacher models/default/model.keras --faces 512 --json runs/teacher/targets.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def nme(a: np.ndarray, b: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-face mean point distance between (N, 10) crop-unit points a and b, over ref's IOD, %."""
    a, b, ref = (v.reshape(len(v), -1, 2) for v in (a, b, ref))
    iod = np.linalg.norm(ref[:, 1] - ref[:, 0], axis=-1)
    return 100 * np.linalg.norm(a - b, axis=-1).mean(-1) / np.maximum(iod, 1e-6)


def softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    e = np.exp(z / temperature - (z / temperature).max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, default=Path("models/default/model.keras"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mtfl"))
    ap.add_argument("--faces", type=int, default=512)
    ap.add_argument("--no-flip", dest="flip", action="store_false")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from facemtl.train.quiet import import_tensorflow

    import_tensorflow()
    import keras

    from facemtl.runtime.mirror import flip_averaged
    from facemtl.runtime.spec import ModelSpec
    from facemtl.train.config import TrainConfig
    from facemtl.train.distill import compute_targets
    from facemtl.train.fit import load_sources
    from facemtl.train.heads import MultiHead
    from facemtl.train.model import build_model, load_model
    from facemtl.train.pipeline import Augment, FaceSource

    teacher = load_model(args.teacher)
    spec = ModelSpec.load(args.teacher.with_name("spec.json"))
    cfg = TrainConfig(data=args.data, out=Path("."))
    sources, spec = load_sources(cfg, spec.replace(quantization={}))
    tr = sources[0].train
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(tr), min(args.faces, len(tr)), replace=False))
    tr = type(tr)(tr.faces.subset(pick), [tr.images[i] for i in pick], tr.squares[pick])

    cached = compute_targets(teacher, spec, tr, flip=args.flip)

    def run(x):
        return {k: np.asarray(v) for k, v in teacher(x, training=False).items()}

    predict = flip_averaged(run, spec) if args.flip else run
    src = FaceSource(tr, spec, Augment(), seed=0, teacher=cached)
    index = np.arange(len(tr))
    draws = rng.integers(0, 2**31, len(tr))
    x, y, a, _, t = src.distill_batch(index, draws)
    live = predict(x)
    label, mapped = y[:, :10], y[:, 10:]
    out = {"faces": len(tr), "flip_average": args.flip, "teacher_seconds_for_these_faces": round(cached.seconds, 2)}
    out["nme_mapped_vs_labels"] = float(nme(mapped, label, label).mean())
    out["nme_live_vs_labels"] = float(nme(live["landmarks"], label, label).mean())
    out["nme_live_vs_mapped"] = float(nme(live["landmarks"], mapped, label).mean())
    # the canonical crop: the teacher's own error there (its targets' distance from the labels before augmentation)
    plain = FaceSource(tr, spec, None).weighted_batch(index, draws)
    out["nme_teacher_canonical_vs_labels"] = float(nme(predict(plain[0])["landmarks"], plain[1], plain[1]).mean())
    k = 0
    for h in [h for h in spec.heads if h.kind != "regression"]:
        tc, tl = t[:, k:k + h.units], live[h.name]
        k += h.units
        kl = (softmax(tl, 2.0) * (np.log(softmax(tl, 2.0)) - np.log(softmax(tc, 2.0)))).sum(1)
        col = src.columns[h.name]
        out[h.name] = {"argmax_agree": float((tc.argmax(1) == tl.argmax(1)).mean()),
                       "cached_accuracy": float((tc.argmax(1) == a[:, col]).mean()),
                       "live_accuracy": float((tl.argmax(1) == a[:, col]).mean()),
                       "kl_live_to_cached_T2": float(kl.mean())}

    # cost of a teacher pass per batch of 64 against a student's training step (run 42's trunk)
    xb = x[:64]
    for _ in range(3):
        predict(xb)
    started = time.perf_counter()
    for _ in range(20):
        predict(xb)
    out["teacher_ms_per_batch64"] = round(1000 * (time.perf_counter() - started) / 20, 1)
    student = build_model(spec, pool="gdc")
    heads = MultiHead.from_spec(spec, label_smoothing=0.05)
    student.compile(optimizer=keras.optimizers.AdamW(1e-3), jit_compile=False, **heads.compile_args())
    yb = {"landmarks": label[:64], **{h.name: a[:64, src.columns[h.name]] for h in spec.heads if h.kind != "regression"}}
    for _ in range(3):
        student.train_on_batch(xb, yb)
    started = time.perf_counter()
    for _ in range(20):
        student.train_on_batch(xb, yb)
    out["student_step_ms_per_batch64"] = round(1000 * (time.perf_counter() - started) / 20, 1)
    started = time.perf_counter()
    for _ in range(3):
        src.distill_batch(index[:64], draws[:64])
    out["pipeline_ms_per_batch64"] = round(1000 * (time.perf_counter() - started) / 3, 1)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
