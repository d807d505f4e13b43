"""`facemtl convert`: every requested format exported, checked per head, and reported.

Each format goes through the same path: export to a staging name, run the file in its real
interpreter on held-out crops next to the Keras model, then move it to its accepted name only
if every head passed. A file that failed its check goes to `rejected/` (never where an
accepted file would be), a stale accepted file of a failed format is removed, and one failing
format does not stop the others.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path


from facemtl.convert.bench import REJECTED_DIR
from facemtl.convert.check import CHECK_FAILED, EXPORT_FAILED, PASSED, check_outputs, keras_outputs
from facemtl.convert.report import FormatResult, convert_markdown, write_json
from facemtl.runtime.formats import FORMAT_NAMES, Format, get_format
from facemtl.runtime.io import atomic_write_text
from facemtl.runtime.spec import ModelSpec

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
MIN_CALIBRATION = 200
DEFAULT_CALIBRATION = 500


class ConvertError(ValueError):
    """A problem with the inputs of a conversion (model, spec, data): one line, exit 2."""


@dataclass
class ConvertOptions:
    formats: tuple[str, ...] = FORMAT_NAMES
    split: str = "validation"
    limit: int = 0                     # check on the first N held-out faces only (0: all)
    calibration: int = DEFAULT_CALIBRATION
    opset: int = 13
    per_channel: bool = False
    equalize: bool = True
    float_heads: bool = False          # int8 formats with float outputs: head output layers stay float
    float_stem: bool = False           # int8 formats with float input: the first convolution stays float
    tolerances: dict[str, float] = field(default_factory=dict)
    agreements: dict[str, float] = field(default_factory=dict)
    latency_runs: int = 200
    seed: int = 0
    # TFLite files are checked in each of these interpreters (facemtl.convert.interpreters.CheckWith);
    # empty: the one load_backend picks. ONNX files always run in onnxruntime.
    check_with: tuple = ()


def model_spec(model, model_path: Path) -> tuple[ModelSpec, str]:
    """The spec beside the model (authoritative: it may hold detector calibrations), else the
    model's own; it must describe the model's outputs."""
    from facemtl.runtime.spec import SpecError

    sibling = model_path.with_name("spec.json")
    if sibling.is_file():
        try:
            spec, source = ModelSpec.load(sibling), str(sibling)
        except SpecError as e:
            raise ConvertError(str(e)) from None
    else:
        spec, source = model.model_spec, f"{model_path} (model config)"
    outputs = {name: int(t.shape[-1]) for name, t in zip(model.output_names, model.outputs)}
    want = {h.name: h.units for h in spec.heads}
    if outputs != want:
        raise ConvertError(f"{source}: heads {want} do not match the model's outputs {outputs}")
    return spec, source


def _refuse_refinement(model_path: Path) -> None:
    """A refinement stage (its spec.json has `refine`) takes patches, not MTFL crops: it has
    its own conversion, checked on the first stage's answers."""
    from facemtl.runtime.spec import SpecError

    sibling = model_path.with_name("spec.json")
    try:
        refine = sibling.is_file() and ModelSpec.load(sibling).refine is not None
    except SpecError:
        return  # model_spec() reports it
    if refine:
        raise ConvertError(f"{model_path} is a refinement stage (its spec.json has 'refine'); convert it with "
                           "`python -m facemtl.train.refine convert DIR --cache CACHE --out OUT`")


def _stage(out_dir: Path, fmt: Format) -> Path:
    path = out_dir / STAGING_DIR / fmt.file_name()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    return path


def convert_model(model_path: str | Path, out_dir: str | Path, data_dir: str | Path,
                  options: ConvertOptions | None = None, log=None) -> dict:
    """Convert, check and report; returns the report (also written as report.json/.md)."""
    from facemtl.convert import data
    from facemtl.train.model import ModelFileError as KerasFileError
    from facemtl.train.model import load_model
    from facemtl.train.mtfl import DataError

    opts = options or ConvertOptions()
    log = log or logger.info
    started = time.perf_counter()
    model_path, out_dir = Path(model_path), Path(out_dir)
    formats = [get_format(n) for n in opts.formats]
    if not formats:
        raise ConvertError("no formats requested")
    if opts.calibration < 0:
        raise ConvertError("--calibration must be >= 0")
    _refuse_refinement(model_path)
    try:
        model = load_model(model_path)
    except KerasFileError as e:
        raise ConvertError(str(e)) from None
    spec, spec_source = model_spec(model, model_path)
    if any(v < 0 for v in opts.tolerances.values()):
        raise ConvertError("--tolerance values are metric points a head may lose, >= 0")
    for what, values in (("--tolerance", opts.tolerances), ("--min-agreement", opts.agreements)):
        unknown = sorted(set(values) - set(spec.head_names))
        if unknown:
            raise ConvertError(f"{what} names unknown heads {unknown}; this model has {', '.join(spec.head_names)}")

    t = time.perf_counter()
    val_fraction = data.run_val_fraction(model_path)
    try:
        held = data.held_out(data_dir, spec, opts.split, opts.limit, val_fraction)
        needs_cal = any("calibration" in f.options for f in formats)
        cal = (data.calibration(data_dir, spec, opts.calibration, opts.seed, val_fraction)
               if needs_cal and opts.calibration else None)
    except DataError as e:
        raise ConvertError(str(e)) from None
    log(f"data: {len(held)} check faces ({held.source})"
        + (f", {len(cal)} calibration crops" if cal is not None else "") + f" in {time.perf_counter() - t:.1f} s")
    if needs_cal and (cal is None or len(cal) < MIN_CALIBRATION):
        log(f"warning: {0 if cal is None else len(cal)} calibration crops; int8 formats want at least "
            f"{MIN_CALIBRATION} (--calibration N)")
    return convert_checked(model, spec, spec_source, model_path, out_dir, held, cal, opts, log, started)


def convert_checked(model, spec: ModelSpec, spec_source: str, model_path: Path, out_dir: Path, held, cal,
                    opts: ConvertOptions, log, started: float | None = None) -> dict:
    """`convert_model` from its check crops on: export each format, check it head by head on
    `held` (a `convert.data.Crops`: crops, landmarks, labels) against the Keras model, keep or
    reject it, and write the report. Models checked on crops of their own (the face verifier,
    `facemtl.train.verify`) come in here with them."""
    from facemtl.convert.export import ExportContext

    started = time.perf_counter() if started is None else started
    formats = [get_format(n) for n in opts.formats]
    reference = keras_outputs(model, held.x)

    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[FormatResult] = []
    with ExportContext(model, spec, None if cal is None else cal.x, opset=opts.opset,
                       per_channel=opts.per_channel, equalize=opts.equalize, float_heads=opts.float_heads,
                       float_stem=opts.float_stem) as ctx:
        for fmt in formats:
            results.append(_one_format(fmt, ctx, out_dir, held, reference, opts, log))
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)
    rejected = out_dir / REJECTED_DIR
    if rejected.is_dir() and not any(rejected.iterdir()):
        rejected.rmdir()

    seconds = time.perf_counter() - started
    report = {
        "model": str(model_path),
        "spec": spec_source,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "check": {"split": opts.split, "faces": len(held), "source": held.source, "skipped": held.skipped},
        "calibration": None if cal is None else {"faces": len(cal), "source": cal.source},
        "options": {"opset": opts.opset, "per_channel": opts.per_channel, "equalize": opts.equalize,
                    "float_heads": opts.float_heads, "float_stem": opts.float_stem, "tolerances": opts.tolerances,
                    "min_agreement": opts.agreements, "latency": "batch 1, one thread, median / p95 ms",
                    "check_with": [str(c) for c in opts.check_with]},
        "passed": all(r.passed for r in results),
        "formats": [r.to_dict() for r in results],
    }
    write_json(out_dir / "report.json", report)
    header = (f"# facemtl convert: {model_path}\n\nChecked on {len(held)} faces ({held.source}); "
              f"calibration: {report['calibration']['source'] if cal is not None else 'none'}; "
              f"{seconds:.0f} s in all.\n")
    atomic_write_text(out_dir / "report.md", convert_markdown(results, header))
    report["markdown"] = convert_markdown(results)
    return report


def _one_format(fmt: Format, ctx, out_dir: Path, held, reference, opts: ConvertOptions, log) -> FormatResult:
    from facemtl.convert import interpreters
    from facemtl.convert.export import ExportError, export
    from facemtl.runtime.formats import TFLITE

    final = out_dir / fmt.file_name()
    rejected = out_dir / REJECTED_DIR / fmt.file_name()
    staged = _stage(out_dir, fmt)
    result = FormatResult(fmt.name, EXPORT_FAILED)
    t = time.perf_counter()
    try:
        export(fmt, ctx, staged)
    except ExportError as e:
        result.error = str(e)
    except Exception as e:  # an exporter bug must not stop the other formats
        result.error = f"{type(e).__name__}: {e}"
    result.export_seconds = round(time.perf_counter() - t, 2)
    if result.error:
        staged.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        rejected.unlink(missing_ok=True)
        log(f"{fmt.name}: export failed: {result.error}")
        return result

    result.size_bytes = staged.stat().st_size
    t = time.perf_counter()
    errors = []
    # a file passes only if it passes in every interpreter it was checked in (what a Pi runs
    # may not be what this machine runs by default)
    for check_with in (opts.check_with or (None,)) if fmt.backend == TFLITE else (None,):
        try:
            ran = interpreters.run(staged, held.x, check_with, opts.latency_runs)
            result.heads += check_outputs(ctx.spec, reference, ran.outputs, held.landmarks, held.labels,
                                          opts.tolerances, opts.agreements, fmt.atol, ran.interpreter)
            result.interpreters.append(ran.info())
            if result.latency_ms is None:
                result.latency_ms = ran.latency_ms
        except Exception as e:  # a file its interpreter refuses is a failed check, reported as such
            errors.append(("" if check_with is None else f"{check_with.name}: ") + f"{type(e).__name__}: {e}")
    result.error = "; ".join(errors) or None
    result.status = PASSED if not errors and all(h.passed for h in result.heads) else CHECK_FAILED
    result.check_seconds = round(time.perf_counter() - t, 2)

    if result.status == PASSED:
        os.replace(staged, final)
        rejected.unlink(missing_ok=True)
        result.file = fmt.file_name()
    else:
        rejected.parent.mkdir(exist_ok=True)
        os.replace(staged, rejected)
        final.unlink(missing_ok=True)
        result.file = f"{REJECTED_DIR}/{fmt.file_name()}"
        failed = [h.head + (f" ({h.interpreter})" if len(result.interpreters) > 1 else "")
                  for h in result.heads if not h.passed]
        result.error = result.error or f"heads failed: {', '.join(failed)}"
    lat = f", {result.latency_ms['median']:.3f} ms/face" if result.latency_ms else ""
    log(f"{fmt.name}: {result.status} ({result.size_bytes / 1e6:.2f} MB, export {result.export_seconds:.1f} s, "
        f"check {result.check_seconds:.1f} s{lat})" + ("" if result.status == PASSED else f": {result.error}"))
    return result


def parse_head_values(items: list[str] | None, what: str) -> dict[str, float]:
    """["landmarks=0.2", "pose=1"] -> {"landmarks": 0.2, "pose": 1.0}."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise ConvertError(f"{what} wants HEAD=VALUE (e.g. landmarks=0.2), got {item!r}") from None
    return out


