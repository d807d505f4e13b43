"""`facemtl bench --live`: per-stage latency and FPS of the live pipeline, no TensorFlow.

For each stream (the sample stream at 640x480, and `--video FILE` if given), each thread
count (1, and every core) and each mode (detection on every frame, IMAGE mode; tracking,
VIDEO mode), run `--live-frames` frames after a warm-up and report the median and p95 of
each stage (capture, detect, crop, infer, track, draw) and of the whole frame, and FPS
from the median frame time. Then the sample stream's quality numbers: landmark jitter on
a still face with and without smoothing, and landmark NME still and moving.

The sample frames are rendered before timing (its "capture" is then the cost of handing
over a ready frame, as from a camera's grabber thread); a video file is decoded in the loop
and its capture time is the decoder's.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from facemtl.runtime.live.demo import LIVE_DETECTOR, live_detect_size
from facemtl.runtime.live.stats import StageStats

STAGES = ("capture", "detect", "crop", "infer", "track", "draw", "total")


def add_arguments(p) -> None:
    """Options of `facemtl bench` that only --live uses."""
    g = p.add_argument_group("--live (the live video pipeline; PATH is then the model, default the packaged one)")
    g.add_argument("--video", metavar="FILE", help="--live: also benchmark this video file (decoded in the loop)")
    g.add_argument("--live-frames", type=int, default=300, metavar="N", help="--live: timed frames per run (default 300)")
    g.add_argument("--detector", default=LIVE_DETECTOR, metavar="DET",
                   help="--live: yunet (default, as `facemtl demo`), yunet:PATH, haar:video, haar or none")
    g.add_argument("--detect-size", type=int, default=None, metavar="PX",
                   help="--live: detection size (default as `facemtl demo`: 240 for haar:video, 480 for YuNet; 0 = full)")
    g.add_argument("--detect-every", type=int, default=15, metavar="N",
                   help="--live: re-detection interval while tracking (default 15)")
    g.add_argument("--no-quality", action="store_true", help="--live: skip the jitter and NME measurements")
    g.add_argument("--align-free", type=float, default=None, metavar="DEG",
                   help="--live: TrackingOptions.align_free, the roll left unturned in the crop (default 0; "
                        "0 turns every crop by the whole eye-line roll)")
    g.add_argument("--no-crowd", action="store_true", help="--live: skip the several-faces stream")
    g.add_argument("--refine", action=argparse.BooleanOptionalAction, default=None,
                   help="--live: the refinement stage in every run (default: as the analyzer does: on, both "
                        "levels in IMAGE mode and level 1 in VIDEO mode)")
    g.add_argument("--refine-levels", type=int, choices=(1, 2), default=None, metavar="N",
                   help="--live: refinement levels in every run (default: as the analyzer does)")
    g.add_argument("--crowd-data", metavar="DIR", help="--live: the MTFL folder the crowd stream takes its faces "
                   "from (default: $FACEMTL_DATA, else ../shared/data/mtfl)")
    g.add_argument("--no-anchor", action="store_true",
                   help="--live: TrackingOptions.anchor off (frame tracked faces by their own landmarks alone)")


def _analyzer(model, detector, detect_size, threads, tracking, detect_every=15, smooth=True, overrides=None,
              refine=None, refine_levels=None):
    from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions, RunningMode
    from facemtl.runtime.live.tracking import TrackingOptions

    return FaceAnalyzer.create_from_options(FaceAnalyzerOptions(
        model_path=model, detector=detector, detection_max_side=live_detect_size(detector, detect_size),
        num_threads=threads, running_mode=RunningMode.VIDEO if tracking else RunningMode.IMAGE,
        flip_average=False,  # as `facemtl demo` (its --flip-average is off unless given)
        refine=refine, refine_levels=refine_levels,
        tracking=TrackingOptions(detect_every=detect_every, smooth_landmarks=smooth, smooth_attributes=smooth,
                                 **(overrides or {}))))


def time_run(analyzer, frames, tracking: bool, warmup: int = 20, truth=None) -> dict:
    """Time the loop over `frames`, an iterable of (index, timestamp_ms, image); the first
    `warmup` frames are not counted. `truth(index)` (the sample's) adds the NME."""
    from facemtl.runtime.live.demo import analysis_stages, match_truth
    from facemtl.runtime.live.overlay import draw
    from facemtl.runtime.live.sample import nme

    stats = StageStats()
    errors = []
    it = iter(frames)
    n = 0
    fps_shown = None
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        if item is None:
            break
        i, ts, image = item
        t1 = time.perf_counter()
        result = analyzer.analyze_for_video(image, ts) if tracking else analyzer.analyze(image)
        t2 = time.perf_counter()
        draw(image, result, fps_shown, None)
        t3 = time.perf_counter()
        n += 1
        if n <= warmup:
            continue
        stages = {"capture": 1000 * (t1 - t0), **analysis_stages(result, 1000 * (t2 - t1)),
                  "draw": 1000 * (t3 - t2), "total": 1000 * (t3 - t0)}
        stats.add(stages)
        fps_shown = 1000.0 / stages["total"]
        if truth is not None:
            tr = truth(i)
            face = match_truth(result.faces, tr)
            if face is not None:
                errors.append(nme(face.landmarks, tr))
    out = {"frames": stats.frames, "stages": stats.to_dict(), "fps": stats.fps("total"),
           "fps_analysis": stats.fps("analysis")}
    if truth is not None:
        out["nme"] = float(np.mean(errors)) if errors else None
    return out


def _sample_frames(n: int, motion: str = "moving"):
    from facemtl.runtime.live.sample import SampleStream

    s = SampleStream((640, 480), motion=motion)
    return s, [(i, s.timestamp_ms(i), s.frame(i)) for i in range(n)]


def _video_frames(path: str, n: int):
    from facemtl.runtime.live.sources import VideoFileSource

    def gen():
        with VideoFileSource(path) as src:
            k = 0
            while k < n and (f := src.read()) is not None:
                yield f.index, f.timestamp_ms, f.image
                k += 1
    return gen


def quality(model, detector, detect_size, detect_every, overrides=None, refine=None, refine_levels=None) -> dict:
    """Jitter (still face, frames 20-119, RMS over the 10 coordinates of their standard
    deviation) with and without smoothing, and NME on the still and the moving stream."""
    from facemtl.runtime.live.demo import match_truth
    from facemtl.runtime.live.sample import nme

    out = {}
    for motion in ("still", "moving"):
        s, frames = _sample_frames(300 if motion == "moving" else 120, motion)
        for smooth in (False, True):
            pts, errs = [], []
            with _analyzer(model, detector, detect_size, 1, True, detect_every, smooth, overrides, refine,
                           refine_levels) as a:
                for i, ts, img in frames:
                    f = match_truth(a.analyze_for_video(img, ts).faces, s.truth(i))
                    pts.append(f.landmarks if f is not None else np.full((5, 2), np.nan))
                    if f is not None:
                        errs.append(nme(f.landmarks, s.truth(i)))
            key = f"{motion}_{'smoothed' if smooth else 'raw'}"
            out[key] = {"nme": float(np.mean(errs)) if errs else None, "frames_scored": len(errs)}
            if motion == "still":
                out[key]["jitter_px"] = float(np.sqrt(np.nanmean(np.nanvar(np.asarray(pts[20:120]), axis=0))))
    # IMAGE mode (the detector frames every face) on the still stream: the still-image NME
    # and the model's own bias on this face, which a crop framed from its landmarks inherits:
    # the roll of the eye line and the size of the landmarks' square against the truth's
    from facemtl.runtime.preprocess import canonical_square, eye_angle

    s, frames = _sample_frames(60, "still")
    errs, roll, size = [], [], []
    with _analyzer(model, detector, detect_size, 1, False, refine=refine, refine_levels=refine_levels) as a:
        policy = a.spec.crop
        for i, ts, img in frames:
            t = s.truth(i)
            f = match_truth(a.analyze(img).faces, t)
            if f is not None:
                errs.append(nme(f.landmarks, t))
                roll.append(eye_angle(f.landmarks) - eye_angle(t))
                size.append(canonical_square(f.landmarks, policy).side / canonical_square(t, policy).side)
    out["still_image_mode"] = {"nme": float(np.mean(errs)) if errs else None, "frames_scored": len(errs),
                               "roll_bias_deg": float(np.mean(roll)) if roll else None,
                               "size_ratio": float(np.mean(size)) if size else None}
    return out


def crowd(model, detector, detect_size, detect_every, data=None, n: int = 480, refine=None,
          refine_levels=None) -> dict:
    """Several faces at once (`CrowdStream`: 8 real MTFL training faces moving, entering and
    leaving): found rate over the face-frames where a face is wholly in the frame, NME on the
    faces found, and the median analysis time per frame, in VIDEO mode (tracking) and IMAGE
    mode (detection on every frame) on the same frames."""
    from facemtl.runtime.live.crowd import CrowdStream, match_faces
    from facemtl.runtime.live.sample import nme

    s = CrowdStream(data, frames=n)
    frames = [(i, s.timestamp_ms(i), s.frame(i)) for i in range(n)]
    truths = [s.truth(i) for i in range(n)]
    out = {"faces": s.count, "frames": n, "face_frames": sum(len(t) for t in truths)}
    for tracking in (True, False):
        found, errors, ms = 0, [], []
        with _analyzer(model, detector, detect_size, 1, tracking, detect_every, refine=refine,
                       refine_levels=refine_levels) as a:
            for (i, ts, img), tr in zip(frames, truths):
                t0 = time.perf_counter()
                result = a.analyze_for_video(img, ts) if tracking else a.analyze(img)
                ms.append(1000 * (time.perf_counter() - t0))
                faces = [f.landmarks for f in result.faces]
                for t, k in zip(tr, match_faces(tr, faces)):
                    if k is not None:
                        found += 1
                        errors.append(nme(faces[k], t))
        out["tracking" if tracking else "image_mode"] = {
            "found_rate": round(100.0 * found / max(out["face_frames"], 1), 2),
            "nme": round(float(np.mean(errors)), 3) if errors else None,
            "analysis_ms_median": round(float(np.median(ms)), 3),
            "analysis_fps_median_frame": round(1000.0 / max(float(np.median(ms)), 1e-9), 1)}
    return out


def main(args) -> int:
    import cv2

    from facemtl.runtime.artifact import ModelFileError
    from facemtl.runtime.cli import CommandError
    from facemtl.runtime.detectors import DetectorError
    from facemtl.runtime.live.sources import SourceError
    from facemtl.runtime.spec import SpecError

    paths = list(getattr(args, "paths", None) or [])
    if len(paths) > 1:
        raise CommandError("--live benchmarks one model: give one PATH (a model file or folder)")
    model = paths[0] if paths else None
    n = int(getattr(args, "live_frames", 300))
    warmup = int(getattr(args, "warmup", 30) or 0)
    warmup = min(warmup, 30)
    detector = getattr(args, "detector", LIVE_DETECTOR)
    detect_size = getattr(args, "detect_size", None)
    detect_every = int(getattr(args, "detect_every", 15))
    refine = getattr(args, "refine", None)
    refine_levels = getattr(args, "refine_levels", None)
    # TrackingOptions other than the defaults, from --align-free and --no-anchor
    overrides = {}
    if getattr(args, "align_free", None) is not None:
        overrides["align_free"] = args.align_free
    if getattr(args, "no_anchor", False):
        overrides["anchor"] = False
    if n < 10:
        raise CommandError("--live-frames must be at least 10")
    cores = os.cpu_count() or 1
    threads = [1] if cores == 1 else [1, cores]
    rows = []
    try:
        streams = [("sample 640x480", None)]
        if getattr(args, "video", None):
            streams.append((f"video {Path(args.video).name}", args.video))
        for label, video in streams:
            for th in threads:
                cv2.setNumThreads(th)
                for tracking in (False, True):
                    if video is None:
                        s, frames = _sample_frames(n + warmup)
                        # each run draws on its own copies: the frames stay clean for the next
                        frames_it = [(i, ts, img.copy()) for i, ts, img in frames]
                        truth = s.truth
                    else:
                        frames_it = _video_frames(video, n + warmup)()
                        truth = None
                    with _analyzer(model, detector, detect_size, th, tracking, detect_every, overrides=overrides,
                                   refine=refine, refine_levels=refine_levels) as a:
                        described = describe_detector(detector, a._detector)
                        r = time_run(a, frames_it, tracking, warmup=warmup, truth=truth)
                    row = {"stream": label, "threads": th, "mode": "tracking" if tracking else "detect every frame",
                           "detector": described, **r}
                    rows.append(row)
                    print(_row_text(row), flush=True)
        q = None if getattr(args, "no_quality", False) else quality(model, detector, detect_size, detect_every, overrides,
                                                                        refine, refine_levels)
        c = None
        if not getattr(args, "no_crowd", False):
            from facemtl.runtime.live.crowd import default_data_dir

            data = getattr(args, "crowd_data", None) or default_data_dir()
            if (Path(data) / "training.txt").is_file():
                c = crowd(model, detector, detect_size, detect_every, data, refine=refine,
                          refine_levels=refine_levels)
                print(_crowd_text(c), flush=True)
            else:
                print(f"  crowd stream skipped: no MTFL training.txt in {data} (--crowd-data DIR)", flush=True)
    except (DetectorError, SpecError, ModelFileError, SourceError, ValueError) as e:
        raise CommandError(str(e)) from None
    finally:
        cv2.setNumThreads(cores)
    text = table(rows, q, rows[0]["detector"] if rows else detector, model)
    print(text)
    if getattr(args, "json", None):
        from facemtl.runtime.io import atomic_write_text

        atomic_write_text(args.json, json.dumps({"detector": rows[0]["detector"] if rows else detector,
                                                 "model": str(model) if model else "packaged",
                                                 "tracking_overrides": overrides, "refine": refine,
                                                 "refine_levels": refine_levels,
                                                 "load_average": os.getloadavg(), "runs": rows, "quality": q,
                                                 "crowd": c},
                                                indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _crowd_text(c: dict) -> str:
    lines = [f"  crowd stream ({c['faces']} real faces, {c['frames']} frames, {c['face_frames']} face-frames):"]
    for key, label in (("tracking", "tracking"), ("image_mode", "detect every frame")):
        r = c[key]
        nme = "-" if r["nme"] is None else f"{r['nme']:.2f}%"
        lines.append(f"    {label}: {r['found_rate']:.1f}% of face-frames found, NME {nme}, "
                     f"analysis {r['analysis_fps_median_frame']:.0f} FPS (median frame)")
    return "\n".join(lines)


def describe_detector(spec: str, detector) -> str:
    """`spec` and what it runs (Haar's cascades and sizes), for the table: the detection-every-
    frame rows are only as meaningful as the detector they name."""
    describe = getattr(detector, "describe", None)
    size = getattr(detector, "max_side", None)
    what = describe() if describe else f"{type(detector).__name__} at {size or 'full'} px"
    return f"{spec} ({what})"


def _row_text(row) -> str:
    st = row["stages"]
    return (f"  {row['stream']}, {row['threads']} thread(s), {row['mode']}: "
            f"{row['fps']['median']:.1f} FPS (median frame {st['total']['median_ms']:.2f} ms)")


def table(rows, q, detector, model) -> str:
    out = [f"\nlive pipeline, model {model or 'packaged'}; load average "
           + " ".join(f"{v:.1f}" for v in os.getloadavg()),
           f"detector (every mode below, detect-every-frame included): {detector}",
           "medians / p95 in ms; detect: on the frames it ran on, and its mean per frame; FPS from the median "
           "frame time (mean in brackets)",
           "| stream | threads | mode | capture | detect | crop | infer | track | draw | total | FPS | analysis FPS | NME |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        st = r["stages"]

        def cell(k):
            d = st.get(k)
            if d is None:
                return "-"
            if k == "detect":
                return f"{d['median_ms']:.2f} / {d['p95_ms']:.2f} (x{d['frames']}, {d['mean_per_frame_ms']:.2f}/frame)"
            return f"{d['median_ms']:.2f} / {d['p95_ms']:.2f}"
        nme = r.get("nme")
        out.append(f"| {r['stream']} | {r['threads']} | {r['mode']} | " + " | ".join(cell(k) for k in STAGES)
                   + f" | {r['fps']['median']:.1f} ({r['fps']['mean']:.1f}) | {r['fps_analysis']['median']:.1f} | "
                   + ("-" if nme is None else f"{nme:.2f}") + " |")
    if q:
        sr, ss = q["still_raw"], q["still_smoothed"]
        ratio = sr["jitter_px"] / max(ss["jitter_px"], 1e-9)
        out += ["", "sample stream quality (tracking, 1 thread):",
                f"  jitter on a still face (std of landmark positions over 100 frames, sensor noise sigma 2.5): "
                f"{sr['jitter_px']:.3f} px raw, {ss['jitter_px']:.3f} px smoothed ({ratio:.1f}x lower)",
                f"  NME still image (IMAGE mode): {q['still_image_mode']['nme']:.2f}%; tracked still: "
                f"{sr['nme']:.2f}% raw, {ss['nme']:.2f}% smoothed",
                f"  NME moving: {q['moving_raw']['nme']:.2f}% raw, {q['moving_smoothed']['nme']:.2f}% smoothed "
                f"({q['moving_smoothed']['nme'] / q['still_image_mode']['nme']:.2f}x the still-image NME, "
                f"{q['moving_smoothed']['nme'] / ss['nme']:.2f}x the tracked still NME)"]
        im = q["still_image_mode"]
        if im.get("roll_bias_deg") is not None:
            out.append(f"  the model's bias on the still face (IMAGE mode): eye line {im['roll_bias_deg']:+.1f} degrees, "
                       f"landmark square {im['size_ratio']:.3f}x the true one")
    return "\n".join(out)
