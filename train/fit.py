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
        # heads `--add-head` adds are picked after it adds them (`initial_spec`)
        spec = spec.select([h for h in cfg.heads if h in spec.head_names])
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
    `sample_weights`, as resampled (see `pose_sampling_weights`). Faces without a head's
    label (MISSING, -1) do not count for it; a head no face labels gets no prior."""
    import numpy as np

    from facemtl.train.pipeline import pose_counts

    priors = {}
    n = len(next(iter(ann.labels.values()))) if ann.labels else 0
    w_all = np.ones(n) if sample_weights is None else np.asarray(sample_weights, float)
    for h in spec.heads:
        if h.kind != "classification" or h.name not in heads or h.name not in ann.labels:
            continue
        labels = np.asarray(ann.labels[h.name])
        have = labels >= 0
        if not have.any():
            continue
        w = None if sample_weights is None else w_all[have]
        if h.name == "pose":
            counts = pose_counts(labels[have], w)
        else:
            counts = np.bincount(labels[have], weights=w, minlength=h.units).astype(float)
        priors[h.name] = tuple(float(v) for v in np.maximum(counts, 1) / counts.sum())
    return priors


def initial_spec(cfg: TrainConfig):
    """(spec, model to start from or None): the run's spec from the options, or, with
    `--init`, the trained model's own spec (its calibrations included), plus `--add-head`s."""
    from facemtl.train.finetune import add_heads, model_spec_of, parse_head

    base = None
    if cfg.init:
        from facemtl.train.model import load_model

        base = load_model(cfg.init)
        spec = model_spec_of(Path(cfg.init), base).replace(quantization={})
        if cfg.heads:
            spec = spec.select([h for h in cfg.heads if h in spec.head_names])
        if cfg.weights:
            spec = spec.with_weights(cfg.weights)
    else:
        spec = run_spec(cfg)
    spec = add_heads(spec, [parse_head(h) for h in cfg.add_heads])
    if cfg.heads:
        # `--heads` in its own order, an added head included (`--heads face --add-head face:...`
        # trains a model of that one head)
        spec = spec.select(cfg.heads)
    if cfg.weights and cfg.add_heads:
        spec = spec.with_weights(cfg.weights)
    return spec, base


@dataclass
class SourceData:
    """One source's faces, loaded and split."""

    name: str
    path: str
    train: object      # facemtl.train.sources.LoadedFaces
    val: object
    problems: list


def load_sources(cfg: TrainConfig, spec: ModelSpec, progress: bool = False) -> tuple[list[SourceData], ModelSpec]:
    """Read, split and load every `--data` source; every bad face of every source is listed
    in one DataError, or, with `--skip-bad`, dropped and counted. Returns the sources and the
    spec (given detector calibrations where faces without landmarks need them)."""
    import numpy as np

    from facemtl.train.sources import load_faces, raise_problems, read_source, source_names, validation_split

    paths = [str(p) for p in (cfg.sources or (cfg.data,))]
    read = []
    for name, path in zip(source_names(paths), paths):
        faces, bad = read_source(path, spec, "training")
        faces.name = name
        if cfg.limit:
            faces = faces.subset(np.arange(min(cfg.limit, len(faces))))
        read.append((name, path, faces, bad))
    if any((~f.has_points).any() for _, _, f, _ in read):
        spec = with_packaged_calibration(spec, cfg.detector)
    out, problems = [], []
    for name, path, faces, bad in read:
        tr, va = validation_split(faces, cfg.val_fraction)
        tr_l = load_faces(tr, spec, cfg.detector, progress=progress)
        va_l = load_faces(va, spec, cfg.detector, progress=progress)
        bad = bad + tr_l.problems + va_l.problems
        problems += bad
        out.append(SourceData(name, path, tr_l, va_l, bad))
    raise_problems(problems, ", ".join(paths), cfg.skip_bad)
    return out, spec


def with_packaged_calibration(spec: ModelSpec, detector: str) -> ModelSpec:
    """`spec`, given the packaged model's detector calibrations where it has none for
    `detector` and frames faces as the packaged model does (same crop scale, shift and mode).

    A calibration maps a detector's boxes to the crop policy's square; it depends on the
    detector and the policy, not on the network, so a run from scratch frames its faces
    without landmarks exactly as the packaged model's runtime would. `facemtl train`
    re-measures them after training where it has an MTFL source."""
    from facemtl.runtime.analyzer import PACKAGED_MODELS
    from facemtl.runtime.artifact import read_spec

    if detector.partition(":")[0].strip().lower() in spec.crop.calibrations:
        return spec
    packaged = read_spec(PACKAGED_MODELS / "facemtl_int8.tflite")
    same = (packaged.crop.scale, packaged.crop.shift_y, packaged.crop.mode) == (spec.crop.scale, spec.crop.shift_y,
                                                                               spec.crop.mode)
    if not same:
        return spec  # load_faces then names the missing calibration
    log.info("faces without landmarks: using the packaged model's detector calibrations (same crop policy)")
    return spec.replace(crop=dataclasses.replace(
        spec.crop, calibrations={**packaged.crop.calibrations, **spec.crop.calibrations}))


def draw_weights_for(sources: list[SourceData], cfg: TrainConfig, pose):
    """Per-face draw weights of the joined training faces, or None (each face once an epoch):
    each source's share of the draws follows `--data-weights`, and within it `--pose-balance`."""
    import numpy as np

    from facemtl.train.pipeline import pose_sampling_weights

    sizes = [len(s.train) for s in sources]
    w = None
    if cfg.source_weights:
        if len(cfg.source_weights) != len(sources):
            raise RunError(f"--data-weights gives {len(cfg.source_weights)} weights for {len(sources)} --data sources")
        if any(x < 0 for x in cfg.source_weights) or not any(x > 0 for x in cfg.source_weights):
            raise RunError("--data-weights must be >= 0, and one at least > 0")
        w = np.concatenate([np.full(n, x / max(n, 1)) for n, x in zip(sizes, cfg.source_weights)])
    if cfg.pose_balance:
        have = pose >= 0
        pw = np.ones(len(pose))
        if have.any():
            pw[have] = pose_sampling_weights(pose[have], cfg.pose_balance)
        w = pw if w is None else w * pw
    return None if w is None else w / w.mean()


def _build_for_multiworker(model, dataset) -> None:
    """Build the model, its losses, metrics and optimizer from one local batch, and skip
    Keras's own build at `fit`: Keras 3.15 (`TensorFlowTrainer._maybe_symbolic_build`) first
    averages a batch across replicas with `strategy.reduce`, which MultiWorkerMirroredStrategy
    cannot do on an (inputs, targets) structure ("Attempt to convert a value (PerReplica...)"),
    although only the batch's shapes are needed."""
    import tensorflow as tf

    model._symbolic_build(data_batch=next(iter(dataset)))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None

    # Keras 3.15 then averages each step's logs over the workers with
    # `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar logs a step returns
    # ("Invalid reduction dimension 0 for input with 0 dimensions"; tensorflow/tensorflow#72388).
    # Each log as a one-element vector reduces over that axis to the same scalar.
    def as_vectors(step):
        def wrapped(data):
            return {k: tf.reshape(v, [1]) for k, v in step(data).items()}

        return wrapped

    model.train_step = as_vectors(model.train_step)
    model.test_step = as_vectors(model.test_step)


def warm_start_from(model, path: str, prune: bool = False) -> dict:
    """Copy the layers of `path` (a model.keras) that `model` has by name and shapes (with
    `prune`, also those with fewer channels: `facemtl.train.finetune.warm_start`)."""
    from facemtl.train.finetune import warm_start
    from facemtl.train.model import load_model

    if not Path(path).exists():
        raise RunError(f"--warm-start {path}: no such file")
    copied, pruned, kept = warm_start(model, load_model(path), prune=prune)
    if not copied and not pruned:
        raise RunError(f"--warm-start {path}: no layer of the same name and shapes to copy")
    log.info("warm start from %s: %d layers copied, %d pruned, %d initialised (%s)", path, len(copied), len(pruned),
             len(kept), ", ".join(kept))
    return {"model": str(path), "copied": copied, **({"pruned": pruned} if prune else {}), "initialised": kept}


def load_teacher(cfg: TrainConfig, tr, spec: ModelSpec):
    """(the teacher's targets for the training faces `tr`, what train.json records of them):
    read from the cache or computed once and cached (facemtl.train.distill). Several teachers:
    each one's outputs cached apart, then averaged (`facemtl.train.distill.average`)."""
    from facemtl.train.distill import average, cache_path, teacher_targets

    if not 0.0 <= cfg.distill_weight <= 1.0:
        raise RunError(f"--distill-weight must be in 0..1, got {cfg.distill_weight}")
    if cfg.temperature <= 0:
        raise RunError(f"--temperature must be > 0, got {cfg.temperature}")
    if cfg.teacher_cache and len(cfg.teachers) > 1:
        raise RunError("--teacher-cache names one teacher's cache; several teachers each use their own default")
    found, infos = [], []
    for teacher in map(Path, cfg.teachers):
        if not teacher.exists():
            raise RunError(f"--teacher {teacher}: no such file")
        cache = Path(cfg.teacher_cache) if cfg.teacher_cache else cache_path(teacher, Path(cfg.out), cfg.teacher_flip)
        started = time.time()
        targets = teacher_targets(teacher, tr, spec, cache, flip=cfg.teacher_flip)
        found.append(targets)
        infos.append({"model": str(teacher), "cache": str(cache), "flip_average": cfg.teacher_flip,
                      "faces": len(targets), "computed_seconds": round(targets.seconds, 1),
                      "seconds_this_session": round(time.time() - started, 1), "sha256": targets.meta.get("sha256", "")})
    common = {"distill_weight": cfg.distill_weight, "temperature": cfg.temperature}
    if len(found) == 1:
        return found[0], {**infos[0], **common}
    return average(found), {"ensemble": infos, "faces": len(found[0]), "flip_average": cfg.teacher_flip, **common}


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

    from facemtl.train import callbacks as cb
    from facemtl.train.finetune import freeze, rebuild_with
    from facemtl.train.heads import MultiHead
    from facemtl.train.model import build_model, save_model
    from facemtl.train.pipeline import Augment, FaceSource, make_dataset
    from facemtl.train.sources import MISSING, concat, labelled_heads

    started = time.time()
    out = Path(cfg.out)
    backup = out / "backup"
    # option conflicts, before the run folder, the data or any teacher is touched
    if cfg.warm_prune and not cfg.warm_start:
        raise RunError("--warm-prune prunes the model of --warm-start: give it one")
    if cfg.warm_start and cfg.init:
        raise RunError("--warm-start builds the model from the options here; --init keeps the file's: give one")
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.resume and not backup.exists():
        log.info("%s has no backup to resume from; starting a new run", out)
    out.mkdir(parents=True, exist_ok=True)

    spec, base = initial_spec(cfg)
    keras.utils.set_random_seed(cfg.seed)

    progress = cfg.verbose > 0 and sys.stderr.isatty()
    sources, spec = load_sources(cfg, spec, progress=progress)
    tr = concat([s.train for s in sources])
    va = concat([s.val for s in sources])
    skipped = [p for s in sources for p in s.problems]
    if len(va) == 0:
        raise RunError(f"no validation faces: {sum(len(s.train) for s in sources)} faces with --val-fraction {cfg.val_fraction}")
    trained = labelled_heads([tr.faces], spec)
    # heads with validation labels: the others' Keras metrics are 0/0 (reported as 0), so
    # they are left out of the table and of train.json
    scored = labelled_heads([va.faces], spec)
    if not trained:
        raise RunError(f"no training face has a label for any head of the model ({', '.join(spec.head_names)})")
    for h in spec.head_names:
        if h not in trained:
            log.warning("no training face labels head %r: it is not trained (frozen)", h)

    strategy = make_strategy(cfg.strategy)
    batch = cfg.batch_size
    pose = tr.faces.labels.get("pose", np.full(len(tr), MISSING, np.int32))
    draw_weights = draw_weights_for(sources, cfg, pose)
    teacher, teacher_info = None, {}
    if cfg.teachers:
        teacher, teacher_info = load_teacher(cfg, tr, spec)
    train_source = FaceSource(tr, spec, Augment(erase=cfg.erase) if cfg.augment else Augment.none(), cfg.seed,
                              teacher=teacher)
    val_source = FaceSource(va, spec, None)
    masked = train_source.masked or val_source.masked
    if masked:  # both yield weights, or Keras's metrics would differ between fit and validation
        train_source.masked = val_source.masked = True
    train_ds = make_dataset(train_source, batch, shuffle=True, seed=cfg.seed, weights=draw_weights)
    val_ds = make_dataset(val_source, batch, shuffle=False, cache=True)

    steps = math.ceil(len(tr) / batch)
    warm_info = {}
    with strategy.scope():
        if base is not None:
            model = rebuild_with(base, spec)
        else:
            model = build_model(spec, trunk=cfg.trunk, width=cfg.width, dropout=cfg.dropout, activation=cfg.activation,
                                depth=cfg.depth, first_block=cfg.first_block, head_hidden=cfg.head_hidden,
                                stem=cfg.stem, features=cfg.features, pool=cfg.pool)
            if cfg.warm_start:
                warm_info = warm_start_from(model, cfg.warm_start, cfg.warm_prune)
        frozen = freeze(model, spec, cfg.freeze, trained)
        if frozen:
            log.info("frozen: %d layers (%s)", len(frozen), ", ".join(frozen[:6]) + (", ..." if len(frozen) > 6 else ""))
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.learning_rate * 0.1, decay_steps=max(1, steps * cfg.epochs - steps), warmup_target=cfg.learning_rate,
            warmup_steps=steps, alpha=0.01)
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=cfg.ema > 0,
                                           ema_momentum=cfg.ema or 0.99)
        heads = MultiHead.from_spec(spec, loss_name=cfg.landmark_loss, label_smoothing=cfg.label_smoothing,
                                    hidden=model.head_hidden, smooth_to=cfg.smooth_to,
                                    priors=class_priors(tr.faces, spec, cfg.balance, draw_weights))
        distill = (cfg.distill_weight, cfg.temperature) if teacher is not None else None
        model.compile(optimizer=optimizer, jit_compile=False, **heads.compile_args(masked=masked, distill=distill))
        if cfg.strategy == "multiworker":
            _build_for_multiworker(model, train_ds)

    best_value, best_epoch = _best_so_far(out / "history.csv", cfg.monitor)
    best_weights = out / "best.weights.h5"
    callbacks = [
        keras.callbacks.BackupAndRestore(str(backup), save_freq="epoch", delete_checkpoint=False),
        # after the backup (which keeps the live weights, the averages ride in the optimizer's
        # state) and before everything that validates or saves: those see the averaged weights
        *([keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if cfg.ema else []),
        *([cb.SourceMetrics([(s.name, FaceSource(s.val, spec, None)) for s in sources if len(s.val)], spec)]
          if len(sources) > 1 else []),
        cb.AtomicBestWeights(best_weights, monitor=cfg.monitor, initial_best=best_value),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0),
        cb.HeadTable(spec.head_names, cfg.epochs, shown=scored),
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
                               if k.startswith("val_") and v not in (None, "")}
                val_metrics = {k: v for k, v in val_metrics.items()
                               if not (k.count("/") == 2 and k.split("/")[1] not in scored)}
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
        "sources": [{"name": s.name, "path": s.path, "train_faces": len(s.train), "val_faces": len(s.val),
                     "train_labels": s.train.faces.label_counts(), "skipped": len(s.problems)} for s in sources],
        "frozen_layers": len(frozen),
        **({"teacher": teacher_info} if teacher_info else {}),
        **({"warm_start": warm_info} if warm_info else {}),
        "replicas": int(strategy.num_replicas_in_sync),
        "skipped": skipped,
        "config": config_json,
    }
    atomic_write_text(out / "train.json", json.dumps(summary, indent=2) + "\n")
    return TrainResult(out / "model.keras", out / "spec.json", best_epoch + 1, epochs_run, seconds, val_metrics)
