"""The runtime's subcommands: `facemtl predict`, `facemtl calibrate` and `facemtl demo`.

Registered by `facemtl.runtime.cli` (see `_BUILTIN`); each `register_*` adds a subparser and sets
`func(args) -> exit code`. Heavy imports (the interpreter) happen inside `func`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Iterator

from facemtl.runtime.cli import CommandError
from facemtl.runtime.mirror import FLIP_AVERAGE_HELP

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".jp2")


# --- predict -------------------------------------------------------------------------------
def register_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="find faces in images; write landmarks and attributes as JSON lines",
        description=(
            "Find every face in each image, run all heads of the model on them, and write one JSON "
            "line per image: {\"image\": PATH, \"faces\": [{\"box\", \"score\", \"landmarks\" (5 [x, y] "
            "in image pixels, MTFL order), \"attributes\"}]}. An unreadable image gets "
            "{\"image\": PATH, \"error\": ...} and the run goes on; the exit code is 1 if any failed."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or folders (searched recursively for images)")
    p.add_argument("--model", "-m", metavar="M", default=None,
                   help="a .tflite or .onnx model file, or a folder holding one (default: the model packaged with facemtl)")
    p.add_argument("--detector", "-d", default="yunet", metavar="DET",
                   help="yunet (default: the YuNet detector packaged with facemtl), yunet:PATH (another YuNet .onnx "
                        "file), haar (OpenCV 4.x's frontal + profile cascades), or none (each image is one face crop)")
    p.add_argument("--passes", type=int, default=2, choices=(1, 2, 3),
                   help="model runs per face: 2 and 3 crop each face again from the last pass's landmarks (default 2)")
    p.add_argument("--out", "-o", metavar="FILE", help="write the JSON lines to FILE instead of stdout")
    p.add_argument("--threads", type=int, default=1, help="interpreter threads per worker (default 1)")
    p.add_argument("--workers", "-j", type=int, default=None, metavar="N",
                   help="images analysed at once, each worker with its own detector and interpreter "
                        "(default: one per CPU core, at most 4; 1 = one after another). Output order is input order")
    p.add_argument("--max-faces", type=int, default=None, metavar="N", help="at most N faces per image, best first")
    p.add_argument("--min-score", type=float, default=0.0, metavar="S", help="drop detections scoring below S (0..1)")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=True,
                   help=FLIP_AVERAGE_HELP + " (default: on; --no-flip-average halves the model time)")
    p.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="the refinement stage: a second small model moves each landmark from a patch of the image "
                        "around it (default: on where the model has one, as the packaged model does)")
    p.add_argument("--refine-levels", type=int, choices=(1, 2), default=None, metavar="N",
                   help="levels of the packaged refinement cascade to run, 1 or 2 (default: both)")
    p.add_argument("--refine-model", default=None, metavar="FILE",
                   help="the refinement file to run with --model's model (python -m facemtl.train.refine convert)")
    p.add_argument("--detect-size", type=int, default=None, metavar="PX",
                   help="detect on a copy whose longer side is at most PX pixels; 0 = full size "
                        "(default: YuNet 320, Haar 288; 0 finds smaller faces in big photographs, at more cost)")
    p.add_argument("--verify-small", action=argparse.BooleanOptionalAction, default=None,
                   help="where nothing is found in an image of at most 256 px, ask the packaged face verifier "
                        "whether the whole image is one face (a tight crop), and analyse it if so (default: on)")
    p.add_argument("--detect-retry", action=argparse.BooleanOptionalAction, default=None,
                   help="where nothing is found on the downscaled copy, detect again at full size "
                        "(default: on; only images without a found face pay for it)")
    p.add_argument("--max-pixels", type=_max_pixels, default=None, metavar="N",
                   help="refuse an image of more than N pixels, read from its header before decoding "
                        "(an error line; default 50000000, every phone photo; 0 = no limit, for trusted input)")
    p.set_defaults(func=run_predict)


def _max_pixels(text: str) -> int:
    import argparse

    try:
        n = int(float(text))  # 5e7 reads as well as 50000000
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of pixels: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 = no limit), got {text}")
    return n


def iter_images(inputs: list[str]) -> Iterator[tuple[str, str | None]]:
    """(path, None) for every image to analyse, (path, error) for inputs that cannot be.
    Folders are searched recursively for image suffixes, in sorted order; a file named on the
    command line is always tried, whatever its suffix."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
            if not files:
                yield item, f"no image files ({', '.join(IMAGE_SUFFIXES[:4])}, ...) in this folder"
            for f in files:
                yield str(f), None
        elif p.exists():
            yield item, None
        else:
            yield item, "no such file or folder"


def read_image(path: str, max_pixels: int | None = None):
    """BGR uint8 image of a file (any bit depth or channel count OpenCV decodes), or an
    ImageError naming it; `max_pixels` is checked from the header before decoding
    (`facemtl.runtime.images`; None: the default cap, 0: none)."""
    from facemtl.runtime.images import DEFAULT_MAX_PIXELS
    from facemtl.runtime.images import read_image as read

    return read(path, DEFAULT_MAX_PIXELS if max_pixels is None else (max_pixels or None))


def _analyzer_from_args(args):
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions
    from facemtl.runtime.artifact import ModelFileError
    from facemtl.runtime.detectors import DetectorError
    from facemtl.runtime.spec import SpecError

    max_side = "auto" if args.detect_size is None else (None if args.detect_size == 0 else args.detect_size)
    try:
        options = FaceAnalyzerOptions(
            model_path=args.model, detector=args.detector, detection_max_side=max_side,
            detection_retry_full=args.detect_retry, min_detection_score=args.min_score, max_faces=args.max_faces, num_threads=args.threads,
            flip_average=args.flip_average, passes=args.passes,
            refine=getattr(args, "refine", None), refine_model_path=getattr(args, "refine_model", None),
            refine_levels=getattr(args, "refine_levels", None), verify_small=getattr(args, "verify_small", None),
        )
        return FaceAnalyzer.create_from_options(options)
    except (DetectorError, SpecError, ModelFileError, ValueError) as e:
        raise CommandError(str(e)) from None


def default_workers() -> int:
    """One worker per CPU core this process may use, at most 4 (a Raspberry Pi's cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _analyze_file(pool, path: str, max_pixels: int | None = None):
    """(result, None, read ms) or (None, error, read ms) for one image file, on a FaceAnalyzer
    borrowed from `pool` (a queue: detectors and interpreters are not shared between threads).

    Whatever goes wrong with this one input (unreadable, over the pixel cap, undecodable, an
    OpenCV error in detection, no memory for it) is its error line, never the run's; a model
    file that fails to run (ModelFileError) is the run's, and propagates."""
    import cv2

    from facemtl.runtime.errors import ImageError

    t = time.perf_counter()
    try:
        image = read_image(path, max_pixels)
    except (ImageError, OSError, cv2.error, MemoryError) as e:
        return None, _one_line(e), 0.0
    read_ms = 1000 * (time.perf_counter() - t)
    analyzer = pool.get()
    try:
        return analyzer.analyze(image), None, read_ms
    except (ImageError, cv2.error, MemoryError) as e:
        return None, _one_line(e), read_ms
    finally:
        del image
        pool.put(analyzer)


def _one_line(e: BaseException) -> str:
    """An exception as one line: OpenCV's errors span several (file, function, message)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] if len(lines) == 1 else f"{type(e).__name__}: {lines[-1]}"


def run_predict(args) -> int:
    import queue
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    import cv2

    from facemtl.runtime.io import OutputError, quiet_closed_stdout

    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise CommandError(f"--workers must be >= 1, got {workers}")
    max_pixels = getattr(args, "max_pixels", None)
    out = None
    out_name = args.out or "stdout"
    # one analyzer per worker: OpenCV's cascades and the interpreters keep per-call state, and
    # a FaceAnalyzer refuses a second thread (ConcurrentUseError). Reading, decoding, detection
    # and inference all release the GIL, so N workers use N cores.
    analyzers = []
    pool: queue.Queue = queue.Queue()
    images = faces = failed = 0
    stages: dict[str, float] = {}
    t0 = time.perf_counter()
    cv_threads = cv2.getNumThreads()
    closed_stdout = False
    try:
        for _ in range(workers):
            analyzers.append(_analyzer_from_args(args))
        for a in analyzers:
            pool.put(a)
        # opened once the model and detector are known good: a mistyped --model does not
        # truncate last run's --out file; a path that cannot be written is one line, exit 2
        try:
            out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout
        except OSError as e:
            raise CommandError(f"--out {args.out}: cannot write: {e.strerror or e}") from None
        if workers > 1:
            cv2.setNumThreads(1)  # the parallelism is across images; OpenCV's own would oversubscribe
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="predict") as ex:
            pending: deque = deque()

            def drain(limit: int) -> None:
                # write the oldest results, in input order, until at most `limit` are pending
                nonlocal images, faces, failed
                while len(pending) > limit:
                    path, error, future = pending.popleft()
                    images += 1
                    result = None
                    if error is None:
                        result, error, read_ms = future.result()
                    if error is not None:
                        failed += 1
                        record = {"image": path, "error": error}
                    else:
                        stages["read"] = stages.get("read", 0.0) + read_ms
                        for k, v in result.stages_ms.items():
                            stages[k] = stages.get(k, 0.0) + v
                        faces += len(result.faces)
                        record = {"image": path, **result.to_dict()}
                    try:
                        out.write(json.dumps(record) + "\n")
                        if out is sys.stdout:
                            out.flush()
                    except OSError as e:
                        raise OutputError(out_name, e) from None

            try:
                for path, error in iter_images(args.inputs):
                    future = ex.submit(_analyze_file, pool, path, max_pixels) if error is None else None
                    pending.append((path, error, future))
                    drain(2 * workers)  # bounded: at most 2 images per worker decoded and waiting
                drain(0)
            except BaseException:
                for _, _, future in pending:  # do not analyse what will never be written
                    if future is not None:
                        future.cancel()
                raise
    except OutputError as e:
        if e.closed_stdout:
            closed_stdout = True  # `facemtl predict ... | head -1`: the reader has all it wanted
        else:
            raise CommandError(str(e)) from None
    finally:
        failing = sys.exc_info()[0] is not None  # an error on its way out keeps its place
        cv2.setNumThreads(cv_threads)
        for a in analyzers:
            a.close()
        if out is not None and out is not sys.stdout:
            try:
                out.close()  # flushes: a full disk shows here at the latest
            except OSError as e:
                if not failing:
                    raise CommandError(str(OutputError(out_name, e))) from None
    if closed_stdout:
        quiet_closed_stdout()
        return 141  # what a shell reports for a writer ended by SIGPIPE
    seconds = time.perf_counter() - t0
    ok = max(images - failed, 1)
    per = ", ".join(f"{k} {v / ok:.1f}" for k, v in stages.items())
    print(f"facemtl predict: {images} image(s), {faces} face(s), {failed} failed, {seconds:.1f} s, "
          f"{workers} worker(s)" + (f" (ms per image and worker: {per})" if stages else ""), file=sys.stderr)
    return 1 if failed else 0


# --- calibrate -----------------------------------------------------------------------------
def register_calibrate(sub) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure how each detector's boxes map to the model's face square; write it into spec.json",
        description=(
            "Run each detector on MTFL training images, match its faces to the square the model was "
            "trained on (from the annotated landmarks), fit the offset and scale (medians), print match "
            "rate and residual spread, and write the calibrations into MODEL_DIR/spec.json (atomically). "
            "Calibrate before `facemtl convert`, which embeds the spec in the converted files; the runtime "
            "also takes calibrations from a spec.json beside a model file."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder with spec.json (or the spec.json file)")
    p.add_argument("--data", metavar="DIR", default=None,
                   help="the MTFL folder (default: $FACEMTL_DATA, else ../shared/data/mtfl)")
    p.add_argument("--detectors", default="haar,none", metavar="LIST",
                   help="comma-separated: haar, yunet:PATH, none (default: haar,none)")
    p.add_argument("--limit", type=int, default=2000, metavar="N",
                   help="use N training images spread over the file (default 2000; 0 = all 10,000)")
    p.add_argument("--min-iou", type=float, default=0.5, help="IoU of a calibrated square with the truth to count as a match")
    p.add_argument("--json", metavar="FILE", help="also write the full report as JSON")
    p.add_argument("--dry-run", action="store_true", help="measure and print, but do not change spec.json")
    p.set_defaults(func=run_calibrate)


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("FACEMTL_DATA")
    if env:
        return Path(env)
    return Path.cwd().parent / "shared" / "data" / "mtfl"


def run_calibrate(args) -> int:
    from facemtl.runtime.calibration import CalibrationError, calibrate_spec_file
    from facemtl.runtime.detectors import DetectorError
    from facemtl.runtime.io import atomic_write_text
    from facemtl.runtime.spec import SpecError

    spec_path = Path(args.model_dir)
    if spec_path.is_dir():
        spec_path = spec_path / "spec.json"
    if not spec_path.is_file():
        raise CommandError(f"{spec_path} does not exist; MODEL_DIR must be a model folder with spec.json")
    names = [s.strip() for s in args.detectors.split(",") if s.strip()]
    if not names:
        raise CommandError("--detectors is empty; give e.g. haar,yunet:PATH,none")
    tty = sys.stderr.isatty()

    def progress(name: str, i: int, n: int) -> None:
        if tty and (i % 50 == 0 or i == n):
            print(f"\r{name}: {i}/{n}", end="" if i < n else "\n", file=sys.stderr, flush=True)

    try:
        reports = calibrate_spec_file(spec_path, _data_dir(args.data), names, limit=args.limit or None,
                                      min_iou=args.min_iou, dry_run=args.dry_run, progress=progress)
    except (CalibrationError, DetectorError, SpecError) as e:
        raise CommandError(str(e)) from None
    if args.json:
        atomic_write_text(args.json, json.dumps({"spec": str(spec_path), "reports": [r.to_dict() for r in reports]},
                                                indent=2) + "\n")
    return 0


# --- demo (the video engineer's) -----------------------------------------------------------
def register_demo(sub) -> None:
    from facemtl.runtime.live.demo import add_arguments

    p = sub.add_parser(
        "demo",
        help="live demo: camera, video or the built-in sample through the analyzer with tracking and smoothing",
        description=(
            "Read frames from a camera (newest frame always), a video or image files (every frame) or the "
            "built-in sample stream, run the analyzer in video mode (detect now and then, follow faces by "
            "their landmarks, smooth), draw box, landmarks, id, attributes, FPS and stage times, and show, "
            "serve (MJPEG over HTTP), record and/or write JSON lines. Prints a summary at the end "
            "(Ctrl-C or SIGTERM end the run cleanly). See docs/live.md."
        ),
    )
    add_arguments(p)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from facemtl.runtime.live.demo import run

    return run(args)
