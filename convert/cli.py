"""`facemtl convert` and `facemtl bench`: parse, dispatch, print. The work lives in run.py/bench.py.

Registered through the `facemtl.commands` entry points; heavy imports happen inside `func`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from facemtl.runtime.cli import CommandError
from facemtl.runtime.formats import FORMAT_NAMES


def _data_dir(arg: Path | None) -> Path | None:
    from facemtl.train.mtfl import default_data_dir

    return arg if arg is not None else default_data_dir()


def _formats(items: list[str] | None) -> tuple[str, ...]:
    if not items:
        return FORMAT_NAMES
    names = [n.strip() for item in items for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in FORMAT_NAMES]
    if unknown:
        raise CommandError(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMAT_NAMES)}")
    return tuple(dict.fromkeys(names))


# --- convert ----------------------------------------------------------------------------------

def register_convert(sub) -> None:
    p = sub.add_parser(
        "convert", help="export TFLite/ONNX files, check every head against Keras, write a report",
        description="Export MODEL (a .keras file) to each format, run every file in its real interpreter on "
                    "held-out MTFL crops next to the Keras model, and keep only files whose every head passes. "
                    "Exit 0 only if every requested format passed.")
    p.add_argument("model", metavar="MODEL", type=Path, help="model.keras (its sibling spec.json is used if present)")
    p.add_argument("--data", type=Path, help="MTFL folder (default: $FACEMTL_DATA, else ../shared/data/mtfl)")
    p.add_argument("--out", type=Path, help="output folder (default: MODEL's folder/converted)")
    p.add_argument("--formats", nargs="+", metavar="NAME", help=f"formats (default: all): {', '.join(FORMAT_NAMES)}")
    p.add_argument("--split", choices=("validation", "testing"), default="validation",
                   help="check faces: the held-out part of training.txt (default) or testing.txt")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="check on the first N faces only (default: all)")
    p.add_argument("--calibration", type=int, default=500, metavar="N",
                   help="int8 calibration crops from the training part (default 500; warns under 200)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (default 13)")
    p.add_argument("--per-channel", action="store_true",
                   help="onnx-int8: one weight scale per output channel (more accurate here, but onnxruntime "
                        "runs it ~8x slower on CPUs without VNNI)")
    p.add_argument("--no-equalize", dest="equalize", action="store_false",
                   help="int8 formats: quantize the model as trained, without cross-layer range equalization")
    p.add_argument("--float-heads", action="store_true",
                   help="tflite-int8-float, onnx-int8: keep each head's output layer in float (the trunk stays "
                        "int8); less int8 error on the answers for a few thousand float multiply-adds")
    p.add_argument("--float-stem", action="store_true",
                   help="tflite-int8-float, onnx-int8: keep the first convolution (one grey channel in) in float; "
                        "faster in LiteRT than its int8 kernel, and less int8 error")
    p.add_argument("--tolerance", action="append", metavar="HEAD=V",
                   help="override a head's tolerance (NME points up / accuracy points down); repeatable")
    p.add_argument("--min-agreement", action="append", metavar="HEAD=F",
                   help="override a class head's minimum agreement with Keras (fraction, e.g. pose=0.97); repeatable")
    p.add_argument("--latency-runs", type=int, default=200, metavar="N",
                   help="batch-1 calls timed per format (default 200; 0 skips)")
    p.add_argument("--check-with", action="append", metavar="NAME[=PYTHON],...",
                   help="check TFLite files in each of these interpreters: litert, tflite-runtime (default: the "
                        "first importable). NAME=PYTHON runs it in another environment's Python (one with facemtl "
                        "and that interpreter: tflite-runtime needs numpy<2, which TensorFlow's environment has not); "
                        "a file passes only if every head passes in every interpreter. Repeatable or comma-separated")
    p.set_defaults(func=run_convert)


def run_convert(args) -> int:
    model = Path(args.model)
    if not model.is_file():
        raise CommandError(f"{model}: no such model file" if not model.exists() else f"{model}: not a file")
    data = _data_dir(args.data)
    if data is None or not Path(data).is_dir():
        raise CommandError(f"no MTFL data folder {'at ' + str(data) if data else 'found'}; pass --data DIR "
                           "(the checks need held-out faces)")
    if args.limit < 0 or args.latency_runs < 0:
        raise CommandError("--limit and --latency-runs must be >= 0")
    from facemtl.train.quiet import import_tensorflow

    import_tensorflow()  # without its start-up chatter on stderr
    from facemtl.convert.interpreters import parse_check_with
    from facemtl.convert.run import ConvertError, ConvertOptions, convert_model, parse_head_values

    try:
        check_with = parse_check_with(args.check_with)
    except ValueError as e:
        raise CommandError(str(e)) from None
    missing = [str(c.python) for c in check_with if c.python is not None and not c.python.is_file()]
    if missing:
        raise CommandError(f"--check-with: no such Python {', '.join(missing)}")
    try:
        agreements = parse_head_values(args.min_agreement, "--min-agreement")
        if any(not 0.0 <= v <= 1.0 for v in agreements.values()):
            raise ConvertError("--min-agreement is a fraction between 0 and 1 (e.g. pose=0.97)")
        opts = ConvertOptions(
            formats=_formats(args.formats), split=args.split, limit=args.limit, calibration=args.calibration,
            opset=args.opset, per_channel=args.per_channel, equalize=args.equalize, float_heads=args.float_heads,
            float_stem=args.float_stem,
            tolerances=parse_head_values(args.tolerance, "--tolerance"), agreements=agreements,
            latency_runs=args.latency_runs, check_with=check_with)
        out = args.out if args.out is not None else model.parent / "converted"
        report = convert_model(model, out, data, opts)
    except ConvertError as e:
        raise CommandError(str(e)) from None
    print(report["markdown"], end="")
    passed = sum(f["status"] == "passed" for f in report["formats"])
    print(f"\n{passed}/{len(report['formats'])} formats passed in {report['seconds']:.0f} s; "
          f"report: {out / 'report.md'}")
    return 0 if report["passed"] else 1


# --- bench ------------------------------------------------------------------------------------

def register_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="size, per-face latency and per-head metrics of converted files",
        description="For each .tflite/.onnx file: file size, latency per face at batch 1 (median and p95, "
                    "--threads threads, the real interpreter) and each head's metric on MTFL faces.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="model files, or folders of them (a `facemtl convert` --out)")
    p.add_argument("--data", type=Path, help="MTFL folder for the metrics (default: $FACEMTL_DATA, else ../shared/data/mtfl)")
    p.add_argument("--split", choices=("validation", "testing"), default="validation")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="score the first N faces only (default: all)")
    p.add_argument("--runs", type=int, default=300, help="timed batch-1 calls per file (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed calls first (default 30)")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write the rows here (default: bench.json in the "
                   "folder benchmarked, else the current folder)")
    p.add_argument("--live", action="store_true", help="benchmark the live video pipeline instead (facemtl.runtime.live_bench)")
    try:  # the live benchmark may add its own options
        from facemtl.runtime import live_bench

        if hasattr(live_bench, "add_arguments"):
            live_bench.add_arguments(p)
    except ImportError:
        pass
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    if args.live:
        try:
            from facemtl.runtime import live_bench
        except ImportError:
            live_bench = None
        if live_bench is None or not hasattr(live_bench, "main"):
            raise CommandError("--live is not available yet (facemtl.runtime.live_bench is missing)")
        return int(live_bench.main(args) or 0)
    if not args.paths:
        raise CommandError("give model files or a folder of them (the --out of `facemtl convert`)")
    if args.runs < 1 or args.warmup < 0 or args.threads < 1 or args.limit < 0:
        raise CommandError("--runs and --threads must be >= 1, --warmup and --limit >= 0")
    from facemtl.convert.bench import ROUNDS, bench_files, find_files
    from facemtl.convert.report import bench_table, write_json
    from facemtl.runtime.artifact import ModelFileError, check_path, read_spec

    files = find_files(args.paths)
    if not files:
        raise CommandError(f"no .tflite or .onnx files in {', '.join(map(str, args.paths))}")
    try:
        for f in files:
            check_path(f)
        spec = read_spec(files[0])
    except ModelFileError as e:
        raise CommandError(str(e)) from None

    crops, note = None, "no MTFL data found (--data): size and latency only"
    data = _data_dir(args.data)
    if data is not None:
        from facemtl.convert.data import held_out
        from facemtl.train.mtfl import DataError

        try:
            crops = held_out(data, spec, args.split, args.limit)
        except DataError as e:
            raise CommandError(str(e)) from None
        note = f"metrics on {len(crops)} faces ({crops.source})"

    rows = bench_files(files, crops, runs=args.runs, warmup=args.warmup, threads=args.threads,
                       log=lambda m: print(m, file=sys.stderr, flush=True))
    metrics = [f"{h.name}/{h.metric}" for h in spec.heads] if crops is not None else []
    print(bench_table(rows, metrics), end="")
    print(f"latency: batch 1, {args.threads} thread(s), median/p95 of {args.runs} calls per file, "
          f"the files interleaved in {ROUNDS} rounds; {note}")
    dirs = [Path(p) for p in args.paths if Path(p).is_dir()]
    out = args.json or ((dirs[0] if len(dirs) == 1 else Path.cwd()) / "bench.json")
    write_json(out, {"latency": {"batch": 1, "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
                                 "rounds": ROUNDS},
                     "data": note, "rows": rows})
    print(f"wrote {out}")
    return 0 if all(r["status"] != "failed" for r in rows) else 1
