"""`facemtl demo`: a camera (or file, or the sample stream) through the analyzer in video
mode, drawn and shown, served, recorded and/or written as JSON lines, with a summary.

    facemtl demo --source 0 --show
    facemtl demo --source picam --serve 0.0.0.0:8080          # headless Pi
    facemtl demo --source sample --max-frames 300 --record demo.mp4

The loop: read the newest frame (a camera's grabber thread keeps only the newest; files
give every frame), `analyze_for_video`, draw, hand to the outputs. Ctrl-C or SIGTERM (a
systemd stop) ends it cleanly: the recording is finished, the server closed, the summary
printed. A camera that cannot be opened is an error (exit 2); one that goes away and does
not come back ends the run (exit 1) with the summary so far.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

import numpy as np

from facemtl.runtime.live.stats import StageStats
from facemtl.runtime.mirror import FLIP_AVERAGE_HELP

log = logging.getLogger(__name__)

SUMMARY_STAGES = ("capture", "detect", "crop", "infer", "track", "draw", "output", "analysis", "total")


# The live tools' detector: the packaged YuNet, on a copy of the frame 480 pixels on its longer
# side (`live_detect_size`): between detections a tracked face is followed by its landmarks.
LIVE_DETECTOR = "yunet"


# The live tools' detection size for YuNet: 480 pixels on the longer side. At 320, YuNet missed
# faces under about 40 pixels between the eyes at 640x480, and the tracker dropped them when
# re-detections kept missing them (crowd stream: 94.3% of face-frames found against 98.8% at
# 480 and at full size; `facemtl bench --live`, docs/experiments.md, run 39).
LIVE_YUNET_SIZE = 480


def live_detect_size(detector: str, detect_size: int | None):
    """`detection_max_side` for the live tools' --detect-size: 0 = full size (None); unset =
    Haar's own setting ("auto", 240 for haar:video), LIVE_YUNET_SIZE for the other detectors."""
    if detect_size is None:
        return "auto" if str(detector).strip().lower().startswith("haar") else LIVE_YUNET_SIZE
    return None if detect_size == 0 else detect_size


def add_arguments(p) -> None:
    src = p.add_argument_group("input")
    src.add_argument("--source", "-s", default="0", metavar="SRC",
                     help="0, 1, ... or /dev/videoN (V4L2 camera), picam (Pi camera module, picamera2), a video "
                          "file, an image file or folder, or sample (built-in moving face: sample, sample:still, "
                          "sample:exit); default 0")
    src.add_argument("--width", type=int, default=640, help="camera and sample frame width (default 640)")
    src.add_argument("--height", type=int, default=480, help="camera and sample frame height (default 480)")
    src.add_argument("--fps", type=float, default=30.0, help="camera rate asked for, sample stream rate (default 30)")
    src.add_argument("--retries", type=int, default=3, metavar="N",
                     help="camera: tries to open, and to reopen when it stops (default 3, 1 s apart)")
    src.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after N frames")
    src.add_argument("--max-pixels", type=int, default=None, metavar="N",
                     help="image files: refuse one of more than N pixels, read from its header before decoding "
                          "(skipped as a bad frame; default 50000000; 0 = no limit)")
    src.add_argument("--pace", choices=("auto", "on", "off"), default="auto",
                     help="play files and the sample at their frame rate instead of as fast as possible "
                          "(auto: on with --show or --serve)")
    m = p.add_argument_group("analysis")
    m.add_argument("--model", "-m", metavar="M", default=None,
                   help="a .tflite or .onnx model file, or a folder holding one (default: the packaged model)")
    m.add_argument("--detector", "-d", default=LIVE_DETECTOR, metavar="DET",
                   help="yunet (default: the packaged YuNet, at 480 px), yunet:PATH, haar:video (OpenCV 4.x's "
                        "upright frontal cascade alone, at 240 px), haar (also the profile and turned cascades "
                        "where it finds no face: thorough, slow), or none")
    m.add_argument("--detect-size", type=int, default=None, metavar="PX",
                   help="detect on a copy whose longer side is PX pixels (default: 240 for haar:video, "
                        "the detector's own for haar, 480 for YuNet; 0 = full size)")
    m.add_argument("--detect-every", type=int, default=15, metavar="N",
                   help="re-detect every N frames while faces are tracked (default 15; 1 = every frame)")
    m.add_argument("--no-track", action="store_true",
                   help="no tracking: detect and analyse every frame independently (IMAGE mode)")
    m.add_argument("--no-smooth", action="store_true", help="report the model's raw landmarks and labels")
    m.add_argument("--threads", type=int, default=1, help="interpreter and OpenCV threads (default 1)")
    m.add_argument("--max-faces", type=int, default=None, metavar="N", help="follow at most N faces")
    m.add_argument("--min-score", type=float, default=0.0, metavar="S", help="drop detections scoring below S")
    m.add_argument("--flip-average", action="store_true", help=FLIP_AVERAGE_HELP)
    m.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="the landmark refinement stage (default: on; its first level while tracking, both "
                        "levels with --no-track)")
    m.add_argument("--refine-levels", type=int, choices=(1, 2), default=None, metavar="N",
                   help="levels of the refinement cascade (default: 1 while tracking, 2 with --no-track; "
                        "2 while tracking costs a crowd of eight faces about a third of its frame rate)")
    o = p.add_argument_group("outputs (any number; none: just the summary)")
    o.add_argument("--show", action="store_true", help="a window (needs OpenCV with a GUI, and a display)")
    o.add_argument("--serve", nargs="?", const="127.0.0.1:8080", default=None, metavar="HOST:PORT",
                   help="MJPEG over HTTP with a page of the current attributes (default 127.0.0.1:8080; "
                        "0.0.0.0:8080 to reach it from the network)")
    o.add_argument("--allow-host", action="append", default=None, metavar="NAME",
                   help="--serve: also accept requests whose Host header names NAME (a DNS name the server is "
                        "reached by; repeat for several). Default: the bound address, localhost and, for 0.0.0.0 "
                        "or ::, this machine's names and addresses; others get 421 (stops DNS rebinding)")
    o.add_argument("--auth-token", metavar="TOKEN", default=None,
                   help="--serve: require this token (?token=TOKEN once, then a cookie; or "
                        "'Authorization: Bearer TOKEN'); default $FACEMTL_AUTH_TOKEN. Required to serve "
                        "beyond loopback unless --no-auth")
    o.add_argument("--no-auth", action="store_true",
                   help="--serve on a non-loopback address without a token (a network you trust)")
    o.add_argument("--max-clients", type=int, default=None, metavar="N",
                   help="--serve: at most N streams at once (default 8); more get 503")
    o.add_argument("--record", metavar="FILE", help="write the annotated video to FILE (.avi, .mkv, .mp4); .avi and .mkv keep all "
                        "but the last frames through a crash or kill (in NAME.partial-*.avi), .mp4 does not")
    o.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="one JSON line per frame ({frame, timestamp_ms, faces}) to FILE, or stdout")
    o.add_argument("--summary", metavar="FILE", help="also write the summary as JSON to FILE")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress line")


class _Stop:
    """Ctrl-C and SIGTERM set a flag; the loop finishes its frame and ends cleanly."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, lambda *_: self.event.set())
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _window_check():
    import cv2

    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "there is no display (DISPLAY is not set: over SSH?); use --serve and open the page in a browser"
    try:
        cv2.namedWindow("facemtl", cv2.WINDOW_AUTOSIZE)
    except cv2.error:
        return ("this OpenCV has no GUI (opencv-python-headless, facemtl's default); for a window run "
                "`pip uninstall -y opencv-python-headless && pip install opencv-python`, or use --serve")
    return None


def build_analyzer(args, tracking: bool):
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions, RunningMode
    from facemtl.runtime.live.tracking import TrackingOptions

    max_side = live_detect_size(args.detector, args.detect_size)
    opts = TrackingOptions(detect_every=args.detect_every, smooth_landmarks=not args.no_smooth,
                           smooth_attributes=not args.no_smooth)
    return FaceAnalyzer.create_from_options(FaceAnalyzerOptions(
        model_path=args.model, detector=args.detector, detection_max_side=max_side,
        min_detection_score=args.min_score, max_faces=args.max_faces, num_threads=args.threads,
        running_mode=RunningMode.VIDEO if tracking else RunningMode.IMAGE, tracking=opts,
        flip_average=args.flip_average, refine=args.refine, refine_levels=args.refine_levels))


def analysis_stages(result, elapsed_ms: float) -> dict[str, float]:
    """capture-free stage split of one analyze/analyze_for_video call."""
    s = result.stages_ms
    crop = s.get("crop", 0.0) + s.get("decode", 0.0)
    detect, infer = s.get("detect", 0.0), s.get("infer", 0.0)
    return {"detect": detect, "crop": crop, "infer": infer, "track": max(elapsed_ms - detect - crop - infer, 0.0),
            "analysis": elapsed_ms}


def match_truth(faces, truth: np.ndarray):
    """The face whose landmark centroid is nearest the true one (and within one inter-ocular
    distance), or None."""
    if truth is None or len(truth) == 0 or not faces:
        return None
    c = truth.mean(axis=0)
    iod = float(np.linalg.norm(truth[1] - truth[0]))
    best = min(faces, key=lambda f: float(np.linalg.norm(np.asarray(f.landmarks).mean(axis=0) - c)))
    if float(np.linalg.norm(np.asarray(best.landmarks).mean(axis=0) - c)) > iod:
        return None
    return best


def run(args) -> int:
    import cv2

    from facemtl.runtime.cli import CommandError
    from facemtl.runtime.live.overlay import draw
    from facemtl.runtime.live.sources import SourceError, open_source

    if args.max_frames is not None and args.max_frames < 1:
        raise CommandError("--max-frames must be >= 1")
    if args.threads < 1 or args.detect_every < 1 or (args.detect_size is not None and args.detect_size < 0):
        raise CommandError("--threads and --detect-every must be >= 1, --detect-size >= 0")
    if args.show:
        problem = _window_check()
        if problem:
            raise CommandError(f"--show: {problem}")
    cv2.setNumThreads(args.threads)
    from facemtl.runtime.artifact import ModelFileError
    from facemtl.runtime.detectors import DetectorError
    from facemtl.runtime.spec import SpecError

    try:
        analyzer = build_analyzer(args, tracking=not args.no_track)
    except (DetectorError, SpecError, ModelFileError, ValueError) as e:
        raise CommandError(str(e)) from None
    try:
        source = open_source(args.source, args.width, args.height, args.fps, frames=None,
                             retries=args.retries, max_pixels=args.max_pixels)
    except (SourceError, ValueError) as e:
        analyzer.close()
        raise CommandError(str(e)) from None

    server = recorder = None
    json_out = None
    summary = None
    failure: CommandError | None = None
    closed_stdout = False
    try:
        if args.serve is not None:
            from facemtl.runtime.live.mjpeg import server_from_args

            server = server_from_args(args)
            print(f"facemtl demo: serving {server.url} (stream: {server.url}stream.mjpg)", file=sys.stderr, flush=True)
        if args.record:
            from facemtl.runtime.live.record import RecordError, Recorder

            try:
                recorder = Recorder(args.record, fps=source.fps or args.fps)
            except RecordError as e:
                raise CommandError(str(e)) from None
        if args.json is not None:
            try:
                json_out = sys.stdout if args.json == "-" else open(args.json, "w", encoding="utf-8")
            except OSError as e:
                raise CommandError(f"--json {args.json}: cannot write: {e.strerror or e}") from None
        summary, code = _loop(args, source, analyzer, server, recorder, json_out, draw)
        if "output_error" in summary:
            if summary.get("closed_stdout"):
                closed_stdout = True
            else:
                failure = CommandError(summary["output_error"])
                code = 2
    finally:
        # whatever ended the run, the outputs are finished: the JSON lines so far flushed and
        # closed, the recording so far moved into place (no partial file left behind)
        if json_out is not None and json_out is not sys.stdout:
            try:
                json_out.close()
            except OSError as e:
                if summary is not None and failure is None:
                    failure, code = CommandError(f"cannot write {args.json}: {e.strerror or e}"), 2
        if server is not None:
            server.stop()
        source.close()
        analyzer.close()
        if recorder is not None:
            from facemtl.runtime.live.record import RecordError

            try:
                path = recorder.close()
            except RecordError as e:
                path = None
                if summary is not None and failure is None:
                    failure, code = CommandError(str(e)), 2
            if summary is not None:
                summary["recording"] = {"path": str(path) if path else None, "frames": recorder.frames}
        if args.show:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass
    if closed_stdout:
        from facemtl.runtime.io import quiet_closed_stdout

        quiet_closed_stdout()
        return 141
    summary.pop("output_error", None)
    summary.pop("closed_stdout", None)
    if summary.pop("source_error_at_start", False):
        raise CommandError(summary["error"])
    report = sys.stderr if args.json == "-" else sys.stdout
    try:
        print(format_summary(summary), file=report, flush=True)
    except BrokenPipeError:
        from facemtl.runtime.io import quiet_closed_stdout

        quiet_closed_stdout()
    if args.summary:
        from facemtl.runtime.io import atomic_write_text

        atomic_write_text(args.summary, json.dumps(summary, indent=2) + "\n")
    if failure is not None:
        raise failure
    return code


def _loop(args, source, analyzer, server, recorder, json_out, draw):
    import cv2

    from facemtl.runtime.errors import ImageError
    from facemtl.runtime.live.sources import SourceError
    from facemtl.runtime.live.sample import nme as nme_of

    tracking = not args.no_track
    visual = bool(args.show or server is not None or recorder is not None)
    stats = StageStats()
    errors: list[float] = []
    missed = 0
    ids: set[int] = set()
    faces_total = 0
    ema = {}
    fps_ema = None
    code = 0
    error = None
    start_error = False
    out_error = None
    tty = sys.stderr.isatty() and not args.quiet
    t_start = time.perf_counter()
    last_print = t_start
    pace = (not source.live and source.fps and
            (args.pace == "on" or (args.pace == "auto" and (args.show or server is not None))))
    with _Stop() as stop:
        n = 0
        while not stop.event.is_set() and (args.max_frames is None or n < args.max_frames):
            if pace:  # a file plays at its own rate: wait for this frame's time (not counted as capture)
                wait = t_start + n / source.fps - time.perf_counter()
                if wait > 0:
                    stop.event.wait(wait)
            t0 = time.perf_counter()
            try:
                frame = source.read()
            except SourceError as e:
                # before the first frame the source never worked (an empty video, a folder of
                # undecodable images): a usage error, exit 2; later, a camera that went away, exit 1
                error = str(e)
                code = 1
                start_error = n == 0
                break
            if frame is None:
                break
            t1 = time.perf_counter()
            try:
                result = (analyzer.analyze_for_video(frame.image, frame.timestamp_ms) if tracking
                          else analyzer.analyze(frame.image))
            except (ImageError, cv2.error) as e:
                # one frame OpenCV or the analyzer cannot use (an image file of odd shape): that
                # frame's problem, skipped and counted like an undecodable one; a model file that
                # fails (ModelFileError) ends the run
                source.bad += 1
                log.warning("%s: frame %d skipped: %s", source.name, frame.index, str(e).strip().splitlines()[-1])
                continue
            t2 = time.perf_counter()
            stages = {"capture": 1000 * (t1 - t0), **analysis_stages(result, 1000 * (t2 - t1))}
            if visual:
                draw(frame.image, result, fps_ema, ema)
            t3 = time.perf_counter()
            stages["draw"] = 1000 * (t3 - t2)
            if recorder is not None:
                recorder.write(frame.image)
            record = {"frame": frame.index, "timestamp_ms": round(float(frame.timestamp_ms), 3),
                      "faces": [f.to_dict() for f in result.faces]}
            if server is not None:
                server.publish(frame.image, {**record, "fps": fps_ema})
            if json_out is not None:
                try:
                    json_out.write(json.dumps(record) + "\n")
                    if json_out is sys.stdout:
                        json_out.flush()
                except OSError as e:  # a full disk, a closed pipe: end the run, keep what was written
                    from facemtl.runtime.io import OutputError

                    out_error = OutputError("stdout" if json_out is sys.stdout else str(args.json), e)
                    break
            if args.show:
                cv2.imshow("facemtl", frame.image)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    stop.event.set()
            t4 = time.perf_counter()
            stages["output"] = 1000 * (t4 - t3)
            stages["total"] = 1000 * (t4 - t0)
            stats.add(stages)
            n += 1
            # the overlay shows smoothed FPS and stage times (of the frames before this one)
            k = 0.1 if fps_ema is not None else 1.0
            fps_ema = (1 - k) * (fps_ema or 0.0) + k * (1000.0 / max(stages["total"], 1e-6))
            for s in ("capture", "detect", "crop", "infer", "draw"):
                ema[s] = (1 - k) * ema.get(s, 0.0) + k * stages[s]
            faces_total += len(result.faces)
            ids.update(f.id for f in result.faces if f.id is not None)
            truth = source.truth(frame.index)
            if truth is not None and len(truth) and np.all((truth >= 0) & (truth < frame.image.shape[1::-1])):
                face = match_truth(result.faces, truth)
                if face is None:
                    missed += 1
                else:
                    errors.append(nme_of(face.landmarks, truth))
            if tty and t4 - last_print > 1.0:
                last_print = t4
                print(f"\rframe {n}  {fps_ema:6.1f} FPS  {len(result.faces)} face(s)   ", end="", file=sys.stderr,
                      flush=True)
    if tty:
        print(file=sys.stderr)
    wall = time.perf_counter() - t_start
    summary = {
        "source": source.name, "frames": stats.frames, "seconds": round(wall, 3),
        "fps": {"loop": stats.frames / wall if wall > 0 else 0.0, **{f"{k}_frame_time": v for k, v in stats.fps().items()},
                "analysis_median": stats.fps("analysis")["median"]},
        "mode": "tracking" if tracking else "detect every frame",
        "faces": faces_total, "face_ids": len(ids), "bad_frames": source.bad, "dropped_frames": source.dropped,
        "stages": stats.to_dict(),
    }
    if tracking and getattr(analyzer, "_tracker", None) is not None:
        summary["detector_frames"] = analyzer._tracker.detections
    if errors or missed:
        summary["sample"] = {"nme": float(np.mean(errors)) if errors else None,
                             "nme_median": float(np.median(errors)) if errors else None,
                             "frames_scored": len(errors), "frames_missed": missed}
    if error:
        summary["error"] = error
        summary["source_error_at_start"] = start_error
    if out_error is not None:
        summary["output_error"] = str(out_error)
        summary["closed_stdout"] = out_error.closed_stdout
    return summary, code


def format_summary(s: dict) -> str:
    lines = [f"facemtl demo: {s['source']}, {s['frames']} frames in {s['seconds']:.1f} s, {s['mode']}"]
    f = s["fps"]
    lines.append(f"  FPS: {f['loop']:.1f} loop (wall clock); {f['median_frame_time']:.1f} from the median frame time; "
                 f"{f['analysis_median']:.1f} analysis alone (median)")
    lines.append(f"  faces: {s['faces']} over {s['face_ids'] if s['mode'] == 'tracking' else '-'} id(s); "
                 f"bad frames {s['bad_frames']}, dropped (camera newer than the loop) {s['dropped_frames']}"
                 + (f"; detector ran on {s['detector_frames']} frames" if "detector_frames" in s else ""))
    lines.append("  stage        median     p95    mean (ms)")
    for name, d in s["stages"].items():
        extra = (f"   (on {d['frames']} frames; {d['mean_per_frame_ms']:.2f} per frame overall)"
                 if name == "detect" else "")
        lines.append(f"  {name:10s} {d['median_ms']:8.2f} {d['p95_ms']:7.2f} {d['mean_ms']:7.2f}{extra}")
    if "sample" in s:
        sm = s["sample"]
        nme = "-" if sm["nme"] is None else f"{sm['nme']:.2f}% (median {sm['nme_median']:.2f}%)"
        lines.append(f"  landmark NME on the sample stream: {nme} of the inter-ocular distance over "
                     f"{sm['frames_scored']} frames; {sm['frames_missed']} frame(s) without the face")
    if "recording" in s:
        r = s["recording"]
        lines.append(f"  recorded {r['path']} ({r['frames']} frames)" if r["path"] else "  nothing recorded")
    if "error" in s:
        lines.append(f"  stopped: {s['error']}")
    return "\n".join(lines)
