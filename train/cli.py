"""`facemtl train` and `facemtl evaluate`: parse, dispatch, nothing more.

Registered through the `facemtl.commands` entry points; TensorFlow is imported only when
one of these commands actually runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facemtl.runtime.cli import CommandError
from facemtl.runtime.mirror import FLIP_AVERAGE_HELP
from facemtl.runtime.spec import CropPolicy, InputSpec


def _data_dir(value: str | None) -> Path:
    from facemtl.train.mtfl import default_data_dir

    d = Path(value) if value else default_data_dir()
    if d is None:
        raise CommandError("no data folder: pass --data DIR (the MTFL folder) or set $FACEMTL_DATA")
    return d


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _weights(text: str) -> dict[str, float]:
    out = {}
    for part in _names(text):
        name, sep, value = part.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected name=weight, got {part!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected name=weight, got {part!r}")
    return out


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _quiet_tensorflow() -> None:
    from facemtl.train.quiet import import_tensorflow

    import_tensorflow()


def register_train(sub) -> None:
    from facemtl.train.config import POOLS, SMOOTH_TO, TrainConfig

    d = TrainConfig(data=Path("."), out=Path("."))
    p = sub.add_parser("train", help="train the multi-task model on MTFL or your own data",
                       description="Train all heads jointly on MTFL training.txt or any --data sources (manifests, folders "
                                   "per class; docs/data.md), a deterministic part of each held out for validation; a "
                                   "head a face has no label for adds no loss for that face. Exports the best validation "
                                   "epoch as RUN_DIR/model.keras with spec.json beside it.")
    p.add_argument("--data", action="append", default=None,
                   help="a data source: an MTFL folder, a JSON-lines manifest or a folder per class (docs/data.md); "
                        "repeat for several (default: $FACEMTL_DATA or ../shared/data/mtfl)")
    p.add_argument("--data-weights", type=_floats, default=(),
                   help="each --data source's share of every epoch's draws, e.g. 1,0.5 (default: every face once)")
    p.add_argument("--init", type=Path, help="start from this trained model.keras (fine-tuning); its spec, trunk "
                                            "and calibrations are kept, the trunk options here are ignored")
    p.add_argument("--freeze", choices=("none", "trunk"), default=d.freeze,
                   help="trunk: train only the heads (heads no training face labels are always frozen)")
    p.add_argument("--add-head", action="append", default=[], dest="add_heads", metavar="NAME:classification:L1,L2",
                   help="add a classification head to the spec (repeatable)")
    p.add_argument("--detector", default=d.detector,
                   help="frames training faces without landmarks, through the spec's calibration (default yunet)")
    p.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, logs, model.keras)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--heads", type=_names, default=(), help="comma list of heads (default: all: landmarks,gender,smile,glasses,pose)")
    p.add_argument("--weights", type=_weights, default={}, help="loss weights, e.g. landmarks=1,pose=0.5")
    p.add_argument("--trunk", default=d.trunk, help="mtfl (default) or tcdcn (the published TCDCN trunk)")
    p.add_argument("--width", type=int, default=d.width, help="trunk width (mtfl)")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--depth", type=int, default=d.depth, help="separable blocks of the mtfl trunk (1-6)")
    p.add_argument("--first-block", type=int, default=d.first_block,
                   help="filters of the first separable block as a multiple of --width (mtfl)")
    p.add_argument("--stem", type=int, default=d.stem, help="filters of the stem convolution (mtfl; default: --width)")
    p.add_argument("--features", type=int, default=d.features,
                   help="units of the shared feature layer every head reads (mtfl; default 256)")
    p.add_argument("--pool", choices=POOLS, default=d.pool,
                   help="the last 5x5 map -> the feature vector: flatten + a Dense layer (default); gdc, a "
                        "global depthwise convolution (about 1/10 of the parameters); gdc-fine, gdc plus one "
                        "over the 10x10 map, its channels counted in --features; bottleneck, 16 channels "
                        "kept before the flatten (mtfl)")
    p.add_argument("--head-hidden", type=int, default=d.head_hidden,
                   help="a hidden layer of N units (ReLU6) in each classification head (0: linear heads)")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="momentum of the weights' moving average used for validation and export (0: off)")
    p.add_argument("--activation", default=d.activation, choices=["relu6", "relu"], help="trunk activation (mtfl)")
    p.add_argument("--lr", type=float, default=d.learning_rate, dest="learning_rate")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--landmark-loss", default=d.landmark_loss, choices=["nme", "mse", "mae", "huber"])
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--crop", default="landmarks", choices=["landmarks", "image"],
                   help="face framing: landmarks (default) or image (whole image resized: the original blog's recipe)")
    p.add_argument("--smooth-to", default=d.smooth_to, choices=SMOOTH_TO,
                   help="where label smoothing spreads its mass on the balanced heads: the class prior (default: "
                        "no bonus for rare classes in the raw scores) or uniform (Keras's; runs 1-17 in docs/experiments.md)")
    p.add_argument("--balance", type=_names, default=d.balance,
                   help="heads whose losses are logit-adjusted by the training class frequencies, so that "
                        "the majority class does not win by default (default: gender,pose; '' for none)")
    p.add_argument("--pose-balance", type=float, default=d.pose_balance,
                   help="draw faces with probability ~ pose frequency ** -X each epoch (0: each face once; 1: poses equal)")
    p.add_argument("--crop-scale", type=float, default=d.crop_scale,
                   help="side of the face square in RMS radii of the five landmarks (default: the spec's "
                        f"{CropPolicy().scale}; "
                        "larger shows more hair and chin at a lower landmark resolution; runs 1-22 in docs/experiments.md used 3.6)")
    p.add_argument("--input-size", type=int, default=d.input_size,
                   help=f"side of the model input in pixels (default: the spec's {InputSpec().size}; the issue's "
                        "contract is 40x40, a larger input costs latency roughly with its pixel count)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="train on plain canonical crops")
    p.add_argument("--erase", type=float, default=d.erase,
                   help="probability of random erasing: a rectangle of 2-20%% of the crop replaced by noise (default 0)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) missing or undecodable images")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    p.add_argument("--strategy", default=d.strategy, choices=["default", "mirrored", "multiworker"],
                   help="tf.distribute strategy (multiworker reads TF_CONFIG)")
    p.add_argument("--monitor", default=d.monitor, help="validation metric that picks the best epoch (lower is better)")
    p.add_argument("--limit", type=int, default=0, help="use only the first N faces of training.txt (smoke runs)")
    p.add_argument("--teacher", type=Path, action="append", default=[], dest="teachers",
                   help="knowledge distillation: a trained model.keras whose outputs on the training faces every "
                        "head also learns from (computed once, cached; docs/experiments.md, run 45); repeat it "
                        "for an ensemble, whose outputs are averaged")
    p.add_argument("--teacher-cache", type=Path,
                   help="the teacher's outputs, cached (default: teachers/<teacher>-<sha>.npz beside --out)")
    p.add_argument("--no-teacher-flip", dest="teacher_flip", action="store_false",
                   help="the teacher's outputs on each crop alone (default: flip-averaged, once per face)")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help="share of each head's loss that is the teacher's term, 0..1 (default %(default)s)")
    p.add_argument("--temperature", type=float, default=d.temperature,
                   help="softens both models' class probabilities in the teacher's term (default %(default)s)")
    p.add_argument("--warm-start", type=Path,
                   help="start every layer that has the same name and weight shapes in this model.keras from its "
                        "weights (e.g. a teacher's stem and blocks under a smaller --pool); the rest as new")
    p.add_argument("--warm-prune", action="store_true", dest="warm_prune",
                   help="with --warm-start, also start thinner layers (a smaller --stem or --first-block) from the "
                        "model's channels with the largest batch-norm scale (structured pruning)")
    p.add_argument("--calibrate", default="haar", help="detectors to calibrate after training (comma list; '' for none)")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    _quiet_tensorflow()
    from facemtl.train.config import TrainConfig
    from facemtl.runtime.errors import FacemtlError
    from facemtl.train.fit import RunError, train
    from facemtl.train.mtfl import AnnotationError, DataError

    sources = tuple(args.data) if args.data else (str(_data_dir(None)),)
    cfg = TrainConfig(
        data=Path(sources[0]), out=args.out, sources=sources, source_weights=args.data_weights,
        init=str(args.init) if args.init else "", freeze=args.freeze, add_heads=tuple(args.add_heads),
        detector=args.detector, epochs=args.epochs, batch_size=args.batch_size, heads=args.heads,
        weights=args.weights, trunk=args.trunk, width=args.width, depth=args.depth,
        first_block=args.first_block, stem=args.stem, features=args.features, pool=args.pool, head_hidden=args.head_hidden, ema=args.ema, dropout=args.dropout,
        activation=args.activation, learning_rate=args.learning_rate, val_fraction=args.val_fraction, seed=args.seed,
        augment=args.augment, erase=args.erase, skip_bad=args.skip_bad, resume=args.resume, strategy=args.strategy,
        monitor=args.monitor, landmark_loss=args.landmark_loss, label_smoothing=args.label_smoothing,
        smooth_to=args.smooth_to,
        balance=args.balance, pose_balance=args.pose_balance, crop=args.crop, crop_scale=args.crop_scale, input_size=args.input_size,
        limit=args.limit, teachers=tuple(map(str, args.teachers)), teacher_flip=args.teacher_flip,
        teacher_cache=str(args.teacher_cache) if args.teacher_cache else "", distill_weight=args.distill_weight,
        temperature=args.temperature, warm_start=str(args.warm_start) if args.warm_start else "",
        warm_prune=args.warm_prune,
    )
    try:
        result = train(cfg)
    except (RunError, DataError, AnnotationError, ValueError) as e:
        raise CommandError(str(e)) from e
    except FacemtlError as e:  # a model file (--init) or spec that cannot be used
        raise CommandError(str(e)) from e
    print(f"best epoch {result.best_epoch}; model: {result.model_path}; spec: {result.spec_path}; "
          f"{result.seconds / 60:.1f} min")
    if args.calibrate and args.init:
        print("kept the detector calibrations of --init: they map boxes to its crop policy, which fine-tuning keeps")
    elif args.calibrate:
        from facemtl.train.sources import source_kind

        mtfl = [p for p in cfg.sources if source_kind(p) == "mtfl"]
        if mtfl:
            _calibrate_after_training(result.spec_path, Path(mtfl[0]), args.calibrate)
        else:
            print("no MTFL source to calibrate detectors on: run `facemtl calibrate` on the new spec")
    return 0


def _calibrate_after_training(spec_path: Path, data: Path, detectors: str) -> None:
    from facemtl.runtime.calibration import calibrate_spec_file

    # 1,000 faces spread over training.txt (the fit is a median): half the time of the
    # 2,000 that `facemtl calibrate` takes by default; the Haar cascades dominate it
    calibrate_spec_file(spec_path, data, _names(detectors), limit=1000)


def register_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="per-head metrics of a model on an MTFL split or any data source",
                       description="Landmarks: NME (mean, per landmark), failure rate, AUC of the cumulative error curve to 10%%; "
                                   "attributes: accuracy, balanced accuracy, confusion matrix.")
    p.add_argument("model", type=Path, help="model.keras (spec.json beside it is used if present)")
    p.add_argument("--data", help="an MTFL folder, a JSON-lines manifest or a folder per class (docs/data.md; "
                                  "default: $FACEMTL_DATA or ../shared/data/mtfl)")
    p.add_argument("--split", default=None, choices=["testing", "validation", "training", "all"],
                   help="MTFL: testing (the benchmark, default), validation (held out of training.txt), training; "
                        "a manifest or folder per class: all (default), validation or training (as train splits it)")
    p.add_argument("--detector", default="yunet",
                   help="frames faces without landmarks, through the model spec's calibration (default yunet)")
    p.add_argument("--json", type=Path, help="write the metrics as JSON here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--flip-average", action="store_true", help=FLIP_AVERAGE_HELP)
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args) -> int:
    _quiet_tensorflow()
    from facemtl.runtime.spec import ModelSpec, SpecError
    from facemtl.train.evaluate import evaluate, evaluate_source, keras_predictor, write_json
    from facemtl.train.sources import source_kind
    from facemtl.train.model import ModelFileError, load_model
    from facemtl.train.mtfl import AnnotationError, DataError

    try:
        model = load_model(args.model)
        spec_file = args.model.with_name("spec.json")
        spec = ModelSpec.load(spec_file) if spec_file.exists() else model.model_spec
        data = _data_dir(args.data)
        if source_kind(data) == "mtfl":
            if args.split == "all":
                raise CommandError("an MTFL folder has the splits testing, validation and training")
            report = evaluate(keras_predictor(model), spec, data, args.split or "testing", skip_bad=args.skip_bad,
                              plots=args.plots, progress=sys.stderr.isatty(), flip_average=args.flip_average)
        else:
            if args.split == "testing":
                raise CommandError(f"{data} is not an MTFL folder: use --split all, validation or training")
            if args.plots:
                print("--plots: drawn for MTFL splits only; the metrics follow")
            report = evaluate_source(keras_predictor(model), spec, data, args.split or "all", skip_bad=args.skip_bad,
                                     detector=args.detector, flip_average=args.flip_average,
                                     progress=sys.stderr.isatty())
    except (ModelFileError, SpecError, DataError, AnnotationError) as e:
        raise CommandError(str(e)) from e
    print(report.summary())
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
