"""Joint training of all heads: `facemtl train`.

Keras owns the loop. The run folder holds everything a run needs to resume or to be
inspected:

    RUN_DIR/backup/          BackupAndRestore state (epoch, weights, optimizer): --resume
    RUN_DIR/best.weights.h5  weights of the best validation epoch so far
    RUN_DIR/history.csv      one row per epoch, every metric
    RUN_DIR/logs/            TensorBoard
    RUN_DIR/model.keras      the exported best model (written once training ends)
    RUN_DIR/spec.json        its spec
    RUN_DIR/train.json       config, timings and the best epoch's validation metrics
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from facemtl.runtime.io import atomic_write_text
from facemtl.runtime.spec import ModelSpec, default_spec
from facemtl.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_path: Path
    spec_path: Path
    best_epoch: int
    epochs_run: int
    seconds: float
    val_metrics: dict[str, float]


class RunError(ValueError):
    pass


def make_strategy(name: str):
    """tf.distribute strategies by name; `multiworker` reads TF_CONFIG, as TensorFlow does."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise RunError("--strategy multiworker needs TF_CONFIG describing the cluster (see README, 'Training on several machines')")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise RunError(f"unknown strategy {name!r}; use default, mirrored or multiworker")


def run_spec(cfg: TrainConfig) -> ModelSpec:
    spec = default_spec()
    if cfg.heads:
        spec = spec.select(cfg.heads)
    if cfg.weights:
        spec = spec.with_weights(cfg.weights)
    if cfg.crop != spec.crop.mode:
        spec = spec.replace(crop=dataclasses.replace(spec.crop, mode=cfg.crop))
    if cfg.crop_scale:
        spec = spec.replace(crop=dataclasses.replace(spec.crop, scale=cfg.crop_scale))
    if cfg.input_size:
        spec = spec.replace(input=dataclasses.replace(spec.input, size=cfg.input_size))
    return spec.replace(trunk=cfg.trunk)


def class_priors(ann, spec: ModelSpec, heads, sample_weights=None) -> dict[str, tuple[float, ...]]:
    """Class frequencies per classification head as training sees them: flips included (a flip
    mirrors the pose label, so pose is counted as if half the faces were mirrored) and, with
    `sample_weights`, as resampled (see `pose_sampling_weights`)."""
    import numpy as np

    from facemtl.train.pipeline import pose_counts

    priors = {}
    for h in spec.heads:
        if h.kind != "classification" or h.name not in heads:
            continue
        if h.name == "pose":
            counts = pose_counts(ann.labels["pose"], sample_weights)
        else:
            counts = np.bincount(ann.labels[h.name], weights=sample_weights, minlength=h.units).astype(float)
        priors[h.name] = tuple(float(v) for v in np.maximum(counts, 1) / counts.sum())
    return priors


def _best_so_far(history: Path, monitor: str) -> tuple[float, int]:
    """(best value, its epoch) from history.csv, so a resumed run keeps its best checkpoint."""
    best, epoch = math.inf, -1
    if history.exists():
        with open(history, newline="") as f:
            for row in csv.DictReader(f):
                if row.get(monitor) not in (None, ""):
                    v = float(row[monitor])
                    if v < best:
                        best, epoch = v, int(row["epoch"])
    return best, epoch


def train(cfg: TrainConfig) -> TrainResult:
    import keras
    import numpy as np
    import tensorflow as tf

    from facemtl.train import callbacks as cb
    from facemtl.train.heads import MultiHead
    from facemtl.train.model import build_model, save_model
    from facemtl.train.mtfl import load_images, load_split, split_train_val
    from facemtl.train.pipeline import Augment, FaceSource, make_dataset, pose_sampling_weights

    started = time.time()
    out = Path(cfg.out)
    backup = out / "backup"
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and not backup.exists():
        log.info("%s has no backup to resume from; starting a new run", out)
    out.mkdir(parents=True, exist_ok=True)

    spec = run_spec(cfg)
    keras.utils.set_random_seed(cfg.seed)

    ann = load_split(cfg.data, "training")
    if cfg.limit:
        ann = ann.subset(np.arange(min(cfg.limit, len(ann))))
    tr_ann, va_ann = split_train_val(ann, cfg.val_fraction)
    progress = cfg.verbose > 0 and sys.stderr.isatty()
    tr = load_images(tr_ann, skip_bad=cfg.skip_bad, progress=progress)
    va = load_images(va_ann, skip_bad=cfg.skip_bad, progress=progress)
    skipped = tr.skipped + va.skipped
    if skipped:
        log.warning("skipped %d unreadable image(s) (--skip-bad), e.g. %s", len(skipped), skipped[0])
    if len(va) == 0:
        raise RunError(f"no validation faces: {len(ann)} faces with --val-fraction {cfg.val_fraction}")

    strategy = make_strategy(cfg.strategy)
    batch = cfg.batch_size
    draw_weights = pose_sampling_weights(tr.annotations.labels["pose"], cfg.pose_balance) if cfg.pose_balance else None
    train_ds = make_dataset(FaceSource(tr, spec, Augment(erase=cfg.erase) if cfg.augment else Augment.none(), cfg.seed),
                            batch, shuffle=True, seed=cfg.seed, weights=draw_weights)
    val_ds = make_dataset(FaceSource(va, spec, None), batch, shuffle=False, cache=True)

    steps = math.ceil(len(tr) / batch)
    with strategy.scope():
        model = build_model(spec, trunk=cfg.trunk, width=cfg.width, dropout=cfg.dropout, activation=cfg.activation,
                            depth=cfg.depth, first_block=cfg.first_block, head_hidden=cfg.head_hidden,
                            stem=cfg.stem, features=cfg.features, pool=cfg.pool)
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate * 0.1, decay_steps=max(1, steps * cfg.epochs - steps), warmup_target=cfg.learning_rate,
            warmup_steps=steps, alpha=0.01)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=cfg.ema > 0,
                                           ema_momentum=cfg.ema or 0.99)
        heads = MultiHead.from_spec(spec, loss_name=cfg.landmark_loss, label_smoothing=cfg.label_smoothing,
                                    hidden=cfg.head_hidden, smooth_to=cfg.smooth_to,
                                    priors=class_priors(tr.annotations, spec, cfg.balance, draw_weights))
        model.compile(optimizer=optimizer, jit_compile=False, **heads.compile_args())

    best_value, best_epoch = _best_so_far(out / "history.csv", cfg.monitor)
    best_weights = out / "best.weights.h5"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup), save_freq="epoch", delete_checkpoint=False),
        # after the backup (which keeps the live weights, the averages ride in the optimizer's
        # state) and before everything that validates or saves: those see the averaged weights
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []),
        cb.AtomicBestWeights(best_weights, monitor=cfg.monitor, initial_best=best_value),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0),
        cb.HeadTable(spec.head_names, cfg.epochs),
    ]
    config_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
    atomic_write_text(out / "config.json", json.dumps(config_json, indent=2) + "\n")

    history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, callbacks=callbacks, shuffle=False,
                        # Keras's bar inside an epoch on a terminal; HeadTable prints one line per epoch
                        verbose=1 if cfg.verbose and sys.stdout.isatty() else 0)
    epochs_run = len(history.epoch)

    if not best_weights.exists():
        raise RunError(f"training ended without a best checkpoint in {out} (did validation produce {cfg.monitor}?)")
    model.load_weights(best_weights)
    best_value, best_epoch = _best_so_far(out / "history.csv", cfg.monitor)
    save_model(model, out / "model.keras")
    spec.save(out / "spec.json")

    val_metrics = {}
    with open(out / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            if int(row["epoch"]) == best_epoch:
                val_metrics = {MultiHead.metric_key(k, spec.head_names): float(v) for k, v in row.items()
                               if k.startswith("val_")}
    seconds = time.time() - started
    summary = {
        "model": "model.keras",
        "spec": "spec.json",
        "best_epoch": best_epoch + 1,
        "epochs_run_this_session": epochs_run,
        "seconds_this_session": round(seconds, 1),
        "monitor": cfg.monitor,
        "val": val_metrics,
        "train_faces": len(tr),
        "val_faces": len(va),
        "skipped": skipped,
        "config": config_json,
    }
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return TrainResult(out / "model.keras", out / "spec.json", best_epoch + 1, epochs_run, seconds, val_metrics)
