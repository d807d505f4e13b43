"""MTFL faces pasted into cluttered 640x480 frames: make them, and measure detectors on them.

For MEASUREMENT of the runtime on `testing.txt` (report, never tune on it) and for choosing
detector settings on `training.txt` frames. No TensorFlow.

    python bench/frames.py make --split testing --out /tmp/facemtl_frames/testing
    python bench/frames.py measure --frames /tmp/facemtl_frames/testing --model M \\
        --detectors haar,yunet:../shared/models/face_detection_yunet_2026may.onnx \\
        --probe 200 --json bench_testing.json
    python bench/frames.py tune --frames /tmp/facemtl_frames/training --limit 600   # Haar settings

A frame: a procedurally drawn cluttered background (smooth colour field, shapes, lines,
text, textures, noise), one MTFL face pasted at a random position fully inside the frame.
The pasted patch is the face with 1.47x its square side of context (what an AFLW test image
shows), scaled so that the face square (3.6 x the RMS radius of the five points) is 68..204
pixels, its edge feathered into the background. The five points are moved with the face:
`frames.json` holds them in frame pixels.

`measure` runs `facemtl predict` on the frames (a subprocess, timed end to end) and scores
its JSON lines. Found: a returned face whose box centre is within 0.3 x the true face
square's side of that square's centre, its box side within a factor 2 of the square's.
NME: that face's landmarks in frame pixels against the truth, over the inter-ocular
distance (eye centre to eye centre), in percent, on found faces.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.calibration import read_landmark_file, spread_subset
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import CropPolicy
from facemtl.train.verify import TIGHT_SIDE, tight_crop

HERE = Path(__file__).resolve().parent

# The frames' geometry and the found criterion are measured in this square, not in the model's:
# a model with a tighter or looser crop policy is then scored on the same frames by the same rule.
FRAME_SQUARE = CropPolicy(scale=3.6)

W, H = 640, 480
CONTEXT = 1.47  # patch side / face square side (an AFLW test image is ~1.47x its face square)
FACE_SIDE = (68.0, 204.0)


# --- making frames -------------------------------------------------------------------------
def clutter(rng: np.random.Generator) -> np.ndarray:
    """A cluttered BGR background: smooth colour field, shapes, lines, text, texture, noise."""
    small = rng.integers(0, 256, (rng.integers(3, 9), rng.integers(4, 12), 3)).astype(np.uint8)
    img = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(25, 60))):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 7)
        x, y = int(rng.integers(-50, W)), int(rng.integers(-50, H))
        s = int(rng.integers(8, 160))
        thick = int(rng.choice([-1, 1, 2, 3, 5]))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(rng.integers(8, 160))), colour, thick)
        elif kind == 1:
            cv2.circle(img, (x, y), s // 2, colour, thick)
        elif kind == 2:
            cv2.ellipse(img, (x, y), (s // 2, int(rng.integers(4, 80))), float(rng.uniform(0, 180)), 0, 360, colour, thick)
        elif kind == 3:
            cv2.line(img, (x, y), (int(rng.integers(0, W)), int(rng.integers(0, H))), colour, int(rng.integers(1, 6)))
        elif kind == 4:
            text = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(2, 10))))
            cv2.putText(img, text, (x, y), int(rng.integers(0, 7)), float(rng.uniform(0.5, 2.5)), colour, int(rng.integers(1, 4)))
        elif kind == 5:  # stripes / checker texture patch
            w, h = int(rng.integers(20, 140)), int(rng.integers(20, 140))
            period = int(rng.integers(3, 16))
            yy, xx = np.mgrid[0:h, 0:w]
            pattern = ((xx // period + (yy // period) * int(rng.integers(0, 2))) % 2).astype(np.uint8)
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x0 + w, W), min(y0 + h, H)
            if x1 > x0 and y1 > y0:
                patch = pattern[: y1 - y0, : x1 - x0, None] * np.array(colour, np.uint8)
                img[y0:y1, x0:x1] = patch
        else:  # a noisy block
            w, h = int(rng.integers(20, 120)), int(rng.integers(20, 120))
            x0, y0 = max(x, 0), max(y, 0)
            x1, y1 = min(x0 + w, W), min(y0 + h, H)
            if x1 > x0 and y1 > y0:
                img[y0:y1, x0:x1] = rng.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.2)))
    noise = rng.normal(0, rng.uniform(2, 8), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, face: np.ndarray, points: np.ndarray, rng: np.random.Generator,
          policy: CropPolicy) -> np.ndarray:
    """Paste the face (with context) into the frame; return its points in frame pixels."""
    sq = canonical_square(points, policy)
    half = CONTEXT * sq.side / 2
    x0, y0 = max(int(round(sq.cx - half)), 0), max(int(round(sq.cy - half)), 0)
    x1 = min(int(round(sq.cx + half)), face.shape[1])
    y1 = min(int(round(sq.cy + half)), face.shape[0])
    patch = face[y0:y1, x0:x1]
    k = float(rng.uniform(*FACE_SIDE)) / sq.side
    pw, ph = max(1, round(patch.shape[1] * k)), max(1, round(patch.shape[0] * k))
    if pw > W or ph > H:  # never the case for MTFL faces at these sizes; keep it inside
        k *= min(W / pw, H / ph)
        pw, ph = max(1, round(patch.shape[1] * k)), max(1, round(patch.shape[0] * k))
    sh, sw = patch.shape[:2]
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR)
    px, py = int(rng.integers(0, W - pw + 1)), int(rng.integers(0, H - ph + 1))
    # feathered edge: alpha ramps from 0 to 1 over 10% of the patch side
    ramp = max(2.0, 0.1 * min(pw, ph))
    yy, xx = np.mgrid[0:ph, 0:pw]
    d = np.minimum.reduce([xx + 0.5, yy + 0.5, pw - xx - 0.5, ph - yy - 0.5])
    alpha = np.clip(d / ramp, 0, 1)[..., None]
    roi = frame[py:py + ph, px:px + pw].astype(np.float32)
    frame[py:py + ph, px:px + pw] = np.clip(alpha * patch + (1 - alpha) * roi, 0, 255).astype(np.uint8)
    # pixel-index coordinates: source pixel centre u -> (u - x0 + 0.5) * k - 0.5 + px
    out = np.empty_like(points, dtype=np.float64)
    out[:, 0] = (points[:, 0] - x0 + 0.5) * (pw / sw) - 0.5 + px
    out[:, 1] = (points[:, 1] - y0 + 0.5) * (ph / sh) - 0.5 + py
    return out


def roll_face(face: np.ndarray, points: np.ndarray, degrees: float, policy: CropPolicy) -> tuple[np.ndarray, np.ndarray]:
    """The source image turned by `degrees` (counter-clockwise in the image) about its face
    square's centre, and its points turned with it: a rolled head, for harder training frames."""
    sq = canonical_square(points, policy)
    m = cv2.getRotationMatrix2D((sq.cx, sq.cy), degrees, 1.0)
    turned = cv2.warpAffine(face, m, (face.shape[1], face.shape[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT_101)
    return turned, points @ m[:, :2].T + m[:, 2]


def _pick(data: Path, split: str, n: int, count: int | None, poses: str | None, part: str = "all") -> np.ndarray:
    """Indices of the split's faces to use: those of the MTFL `poses` (e.g. "1,2,4,5"; all
    when None), of `training.txt`'s `part` ("training" or "validation", as `facemtl train`
    splits it; "all"), `count` of them spread over the split."""
    index = np.arange(n)
    if poses:
        want = {int(p) for p in poses.split(",")}
        lines = [f for f in (ln.split() for ln in (data / f"{split}.txt").read_text().splitlines()) if f]
        index = np.array([i for i, f in enumerate(lines) if int(f[-1]) in want])
    if part != "all":
        from facemtl.train.mtfl import load_split, validation_mask

        paths = load_split(data, split).paths
        assert len(paths) == n, (len(paths), n)
        val = validation_mask(paths, 0.1)
        index = np.array([i for i in index if val[i] == (part == "validation")])
    return index[spread_subset(len(index), count)]


def make_frames(data: Path, split: str, out: Path, count: int | None, seed: int, poses: str | None = None,
                roll: float = 0.0) -> None:
    paths, points = read_landmark_file(data / f"{split}.txt", data)
    keep = _pick(data, split, len(paths), count, poses)
    out.mkdir(parents=True, exist_ok=True)
    policy = FRAME_SQUARE
    records = []
    for n, i in enumerate(keep):
        rng = np.random.default_rng([seed, int(i)])
        face = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        if face is None:
            print(f"skipping unreadable {paths[i]}", file=sys.stderr)
            continue
        frame = clutter(rng)
        pts = points[i].astype(np.float64)
        if roll:
            face, pts = roll_face(face, pts, float(rng.uniform(-roll, roll)), policy)
        pts = paste(frame, face, pts, rng, policy)
        name = f"{n:05d}.jpg"
        cv2.imwrite(str(out / name), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
        records.append({"file": name, "source": str(paths[i].relative_to(data)), "points": pts.round(3).tolist()})
        if (n + 1) % 500 == 0:
            print(f"{n + 1}/{len(keep)}", file=sys.stderr)
    (out / "frames.json").write_text(json.dumps({"split": split, "seed": seed, "width": W, "height": H,
                                                 "face_side": FACE_SIDE, "roll": roll, "frames": records}) + "\n")
    print(f"wrote {len(records)} frames to {out}")




def make_tight(data: Path, split: str, out: Path, count: int | None, span: float = 2.0,
               poses: str | None = None, part: str = "all") -> None:
    """`tight_crop` of every face of a split (or `count` spread over it, of `poses` only),
    with frames.json."""
    paths, points = read_landmark_file(data / f"{split}.txt", data)
    keep = _pick(data, split, len(paths), count, poses, part)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for n, i in enumerate(keep):
        image = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        if image is None:
            print(f"skipping unreadable {paths[i]}", file=sys.stderr)
            continue
        crop, pts = tight_crop(image, points[i].astype(np.float64), span=span)
        name = f"{n:05d}.png"
        cv2.imwrite(str(out / name), crop)
        records.append({"file": name, "source": str(paths[i].relative_to(data)), "points": pts.round(3).tolist()})
    (out / "frames.json").write_text(json.dumps({"split": split, "width": TIGHT_SIDE, "height": TIGHT_SIDE,
                                                 "tight": True, "span": span, "frames": records}) + "\n")
    print(f"wrote {len(records)} tight {TIGHT_SIDE}x{TIGHT_SIDE} crops to {out}")


def make_background(data: Path, split: str, out: Path, count: int | None, part: str = "all") -> None:
    """64x64 crops of the split's photographs that hold no face: the largest square corner of
    each photograph clear of its face square (with a 15% margin), when at least 32 px on a
    side. Real photographic content for counting false detections on small images."""
    paths, points = read_landmark_file(data / f"{split}.txt", data)
    keep = _pick(data, split, len(paths), count, None, part)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for i in keep:
        image = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
        if image is None:
            continue
        sq = canonical_square(points[i].astype(np.float64), FRAME_SQUARE)
        h, w = image.shape[:2]
        x0, y0 = sq.cx - 0.65 * sq.side, sq.cy - 0.65 * sq.side
        x1, y1 = sq.cx + 0.65 * sq.side, sq.cy + 0.65 * sq.side
        # the free band on each side of the face square, as a square crop at its corner
        bands = [(0, 0, int(min(x0, h))), (int(x1), 0, int(min(w - x1, h))),
                 (0, 0, int(min(y0, w))), (0, int(y1), int(min(h - y1, w)))]
        x, y, side = max(bands, key=lambda b: b[2])
        if side < 32:
            continue
        name = f"{len(names):05d}.png"
        crop = image[y:y + side, x:x + side]
        cv2.imwrite(str(out / name), cv2.resize(crop, (TIGHT_SIDE, TIGHT_SIDE), interpolation=cv2.INTER_AREA))
        names.append(name)
    (out / "frames.json").write_text(json.dumps({"split": split, "background": True, "files": names}) + "\n")
    print(f"wrote {len(names)} face-free {TIGHT_SIDE}x{TIGHT_SIDE} crops to {out}")


def tune_tight(frames_dirs: list[Path], detectors: list[str], chains: list[tuple[float, ...]], limit: int | None,
               background: Path | None = None, thresholds: list[float | None] = (None,),
               scales: list[float] = (1.0,)) -> dict:
    """Found rate of each detector on tight crops for each chain of `pad_small` paddings
    (() = no retry on a padded copy), by `found_face`'s rule, per folder; the time per crop;
    and, with `background` (a `make-background` folder), the share of face-free crops in
    which something was found. For choosing PAD_SMALL on training crops (report the testing
    crops, never tune on them)."""
    from facemtl.runtime.detectors import create_detector

    sets = {}
    for folder in frames_dirs:
        sets[folder.name] = [(cv2.imread(str(p), cv2.IMREAD_COLOR), truth) for p, truth in load_frames(folder, limit)]
    empty = []
    if background:
        files = json.loads((background / "frames.json").read_text())["files"]
        empty = [cv2.imread(str(background / f), cv2.IMREAD_COLOR) for f in files[:limit]]
    out = {}
    for spec in detectors:
        for chain, threshold, scale in [(c, t, k) for c in chains for t in thresholds for k in scales]:
            det = create_detector(spec, max_side=None)
            det.pad_small = chain
            key = f"{spec} pads {'/'.join(map(str, chain)) or 0}"
            if threshold is not None:  # YuNet's score threshold for the padded retry
                det.small_score_threshold = threshold
                key += f" retry score {threshold}"
            if scale != 1.0:
                det.small_scale = scale
                key += f" retry scale {scale}"
            row, n, t = {}, 0, 0.0
            for name, images in sets.items():
                t0 = time.perf_counter()
                found = sum(found_face([{"box": d.box} for d in det.detect(image)], truth, FRAME_SQUARE) is not None
                            for image, truth in images)
                t += time.perf_counter() - t0
                n += len(images)
                row[name] = round(100.0 * found / len(images), 2)
            row["ms_per_crop"] = round(1000 * t / max(n, 1), 2)
            if empty:
                row["false_found_rate"] = round(100.0 * sum(bool(det.detect(im)) for im in empty) / len(empty), 2)
            out[key] = row
            print(key, json.dumps(row), flush=True)
    return out


def tune_image(frames_dir: Path, model: str | None, sizes: list[int | None], limit: int | None) -> dict:
    """IMAGE mode settings on the same frames: YuNet at each detection size, then for every
    (passes, flip averaging) the analyzer's own passes on those detections; the default Haar
    as the time reference. Found: the crop square of a detection overlaps the true face square
    with IoU >= 0.5 (as `measure_in_process`). Time per frame: detection plus model (decoding
    the JPEG not counted), in this process, one thread."""
    from facemtl.runtime.analyzer import FaceAnalyzer
    from facemtl.runtime.detectors import box_overlap, create_detector, crop_square

    frames = [(cv2.imread(str(p), cv2.IMREAD_COLOR), truth) for p, truth in load_frames(frames_dir, limit)]
    combos = [(passes, flip) for passes in (1, 2, 3) for flip in (False, True)]
    analyzers = {c: FaceAnalyzer.create_from_model_path(model, detector="none", passes=c[0], flip_average=c[1])
                 for c in combos}
    policy = next(iter(analyzers.values())).spec.crop
    out = {}
    detectors = [("haar", create_detector("haar"))] + [
        (f"yunet at {size or 'full'}", create_detector("yunet", max_side=size)) for size in sizes]
    # detection timed interleaved, frame by frame, so that load changes of this shared machine
    # fall on every detector alike
    all_dets = {name: [] for name, _ in detectors}
    all_ms = {name: 0.0 for name, _ in detectors}
    for image, _ in frames:
        for name, det in detectors:
            t0 = time.perf_counter()
            all_dets[name].append(det.detect(image))
            all_ms[name] += 1000 * (time.perf_counter() - t0)
    for name, det in detectors:
        det_ms, dets = all_ms[name], all_dets[name]
        for combo in (combos if name != "haar" else [(1, False)]):
            a = analyzers[combo]
            found, nmes, model_ms = 0, [], 0.0
            for (image, truth), ds in zip(frames, dets):
                t0 = time.perf_counter()
                faces, _ = a._analyze_detections(image, ds)
                model_ms += 1000 * (time.perf_counter() - t0)
                if ds:
                    gt = canonical_square(truth, policy)
                    iou, _ = box_overlap(np.array([gt.box()]), np.array([crop_square(d, policy).box() for d in ds]))
                    j = int(np.argmax(iou[0]))
                    if iou[0, j] >= 0.5:
                        found += 1
                        nmes.append(_nme(faces[j].landmarks, truth))
            n = len(frames)
            key = f"{name}, passes {combo[0]}, flip {'on' if combo[1] else 'off'}"
            out[key] = {"found_rate": round(100.0 * found / n, 2), "nme_found": round(float(np.mean(nmes)), 3),
                        "failure_rate_found": round(float(100.0 * (np.array(nmes) > 10).mean()), 2),
                        "ms_per_frame": round((det_ms + model_ms) / n, 2), "detect_ms": round(det_ms / n, 2)}
            print(key, json.dumps(out[key]), flush=True)
    for a in analyzers.values():
        a.close()
    return out


# --- measuring -----------------------------------------------------------------------------
def load_frames(folder: Path, limit: int | None):
    meta = json.loads((folder / "frames.json").read_text())
    recs = meta["frames"]
    recs = [recs[i] for i in spread_subset(len(recs), limit)]
    return [(folder / r["file"], np.array(r["points"], np.float64)) for r in recs]


def _nme(pred: np.ndarray, true: np.ndarray) -> float:
    iod = float(np.linalg.norm(true[1] - true[0]))
    return 100.0 * float(np.linalg.norm(pred - true, axis=1).mean()) / max(iod, 1e-9)


def found_face(faces: list[dict], truth: np.ndarray, policy: CropPolicy) -> dict | None:
    """The returned face that is the true one: its box centre within 0.3 x the true square's
    side of the square's centre and its box side within a factor 2 of it (closest first)."""
    sq = canonical_square(truth, policy)
    best, best_d = None, math.inf
    for f in faces:
        x, y, w, h = f["box"]
        d = math.hypot(x + w / 2 - sq.cx, y + h / 2 - sq.cy) / sq.side
        if abs(x + w / 2 - sq.cx) < 0.3 * sq.side and abs(y + h / 2 - sq.cy) < 0.3 * sq.side \
                and 0.5 < sq.side / max(w, 1e-9) < 2 and d < best_d:
            best, best_d = f, d
    return best


def score_predictions(jsonl: Path, frames_dir: Path) -> dict:
    """Found rate and NME (frame pixels) of `facemtl predict` output against frames.json."""
    meta = json.loads((frames_dir / "frames.json").read_text())
    truth = {r["file"]: np.array(r["points"], np.float64) for r in meta["frames"]}
    policy = FRAME_SQUARE
    n = found = errors = extra = 0
    nmes = []
    for line in jsonl.read_text().splitlines():
        rec = json.loads(line)
        name = Path(rec["image"]).name
        if name not in truth:
            continue
        n += 1
        if "error" in rec:
            errors += 1
            continue
        f = found_face(rec["faces"], truth[name], policy)
        extra += len(rec["faces"]) - (f is not None)
        if f is not None:
            found += 1
            nmes.append(_nme(np.array(f["landmarks"]), truth[name]))
    nmes = np.array(nmes)
    return {
        "frames": n, "errors": errors, "found": found, "found_rate": round(100.0 * found / max(n, 1), 2),
        "nme_found": round(float(nmes.mean()), 3) if len(nmes) else None,
        "nme_found_median": round(float(np.median(nmes)), 3) if len(nmes) else None,
        "failure_rate_found": round(float(100.0 * (nmes > 10).mean()), 2) if len(nmes) else None,
        "other_faces_per_frame": round(extra / max(n, 1), 3),
    }


def run_predict(frames_dir: Path, model: str | None, detector: str, out: Path, limit: int | None,
                workers: int | None = None, flip_average: bool = False) -> dict:
    """Time `facemtl predict` (a subprocess, as users run it) on the frames."""
    if limit:
        files = [str(p) for p, _ in load_frames(frames_dir, limit)]
    else:
        files = [str(frames_dir)]
    # "DET+--flag+--flag=value": the detector and further `facemtl predict` options
    detector, *flags = detector.split("+")
    cmd = [sys.executable, "-m", "facemtl", "predict", "--detector", detector, "--out", str(out), *flags]
    if model:
        cmd += ["--model", model]
    if workers:
        cmd += ["--workers", str(workers)]
    if flip_average:
        cmd += ["--flip-average"]
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd + files, capture_output=True, text=True, cwd=HERE.parent)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shown = " ".join(cmd + ([str(frames_dir)] if not limit else [f"<{limit} frames>"]))
    # CPU seconds: what the run cost whatever else the machine was doing; on an idle machine
    # with N cores and N workers, the wall time is about cpu_seconds / N (or more)
    return {"command": shown, "exit_code": r.returncode, "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "summary": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""}


def startup_seconds() -> float:
    """Wall time of `facemtl predict --help`: interpreter start and command registration."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "facemtl", "predict", "--help"], capture_output=True, cwd=HERE.parent)
    return round(time.perf_counter() - t0, 1)


def measure_in_process(frames_dir: Path, model: str | None, detector: str, limit: int | None,
                       flip_average: bool = False) -> dict:
    """The same pipeline as `facemtl predict`, in this process, scored two ways: the face
    whose crop square (the calibrated square the model analysed) overlaps the true face
    square with IoU >= 0.5 ("found", the primary criterion), and the box-centre criterion of
    `score_predictions` (which a detector whose boxes sit off the face centre, like the
    profile cascade, can fail although its crop is right)."""
    from facemtl.runtime.analyzer import FaceAnalyzer
    from facemtl.runtime.detectors import box_overlap, crop_square

    frames = load_frames(frames_dir, limit)
    found = by_box = 0
    nmes = []
    t = 0.0
    with FaceAnalyzer.create_from_model_path(model, detector=detector, flip_average=flip_average) as fa:
        policy = fa.spec.crop
        for path, truth in frames:
            t0 = time.perf_counter()
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            dets = fa._detect(image)
            faces, _ = fa._analyze_detections(grey, dets)
            t += time.perf_counter() - t0
            gt = canonical_square(truth, policy)
            if dets:
                iou, _ = box_overlap(np.array([gt.box()]), np.array([crop_square(d, policy).box() for d in dets]))
                j = int(np.argmax(iou[0]))
                if iou[0, j] >= 0.5:
                    found += 1
                    nmes.append(_nme(faces[j].landmarks, truth))
            by_box += found_face([{"box": f.box} for f in faces], truth, CropPolicy()) is not None
    nmes = np.array(nmes)
    n = len(frames)
    return {"frames": n, "found_rate": round(100.0 * found / n, 2), "found_rate_box_centre": round(100.0 * by_box / n, 2),
            "nme_found": round(float(nmes.mean()), 3) if len(nmes) else None,
            "nme_found_median": round(float(np.median(nmes)), 3) if len(nmes) else None,
            "ms_per_frame": round(1000 * t / n, 1)}


def measure_yunet_points(frames_dir: Path, yunet: str, limit: int | None) -> dict:
    """YuNet's own five points as the landmarks (no facemtl model): the detector users would
    otherwise take its landmarks from, scored by `score_predictions`'s rules on the same frames."""
    from facemtl.runtime.detectors import YuNetDetector

    frames = load_frames(frames_dir, limit)
    detector = YuNetDetector(yunet)
    found = 0
    nmes = []
    t = 0.0
    for path, truth in frames:
        t0 = time.perf_counter()
        dets = detector.detect(cv2.imread(str(path), cv2.IMREAD_COLOR))
        t += time.perf_counter() - t0
        faces = [{"box": d.box, "landmarks": d.landmarks} for d in dets if d.landmarks is not None]
        f = found_face(faces, truth, FRAME_SQUARE)
        if f is not None:
            found += 1
            nmes.append(_nme(np.asarray(f["landmarks"]), truth))
    nmes = np.array(nmes)
    n = len(frames)
    return {"frames": n, "found": found, "found_rate": round(100.0 * found / max(n, 1), 2),
            "nme_found": round(float(nmes.mean()), 3) if len(nmes) else None,
            "nme_found_median": round(float(np.median(nmes)), 3) if len(nmes) else None,
            "failure_rate_found": round(float(100.0 * (nmes > 10).mean()), 2) if len(nmes) else None,
            "ms_per_frame": round(1000 * t / max(n, 1), 1)}


def detector_probe(frames_dir: Path, yunet: str | None, n: int) -> dict:
    """Detection ms per frame, interleaved frame by frame (so load changes hit all alike):
    the default Haar, Haar's frontal cascade alone at full size, and YuNet. The issue's
    reference machine measured 26 ms (frontal, full size) and 10 ms (YuNet): the ratio to
    these says how much slower this machine is."""
    from facemtl.runtime.detectors import HaarDetector, YuNetDetector

    dets = {"haar_default": HaarDetector(),
            # the reference: OpenCV's frontal cascade alone, full size, its default minNeighbors 3
            "haar_frontal_full": HaarDetector(profile=False, rotations=(), max_side=None, min_neighbors=3)}
    if yunet:
        dets["yunet"] = YuNetDetector(yunet)
    t = {k: 0.0 for k in dets}
    frames = load_frames(frames_dir, n)
    for path, _ in frames:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for k, d in dets.items():
            t0 = time.perf_counter()
            d.detect(img)
            t[k] += time.perf_counter() - t0
    return {k: round(1000 * v / len(frames), 1) for k, v in t.items()}


def run_measure(args) -> None:
    frames_dir = Path(args.frames)
    report = {"frames_dir": str(frames_dir), "model": args.model, "flip_average": args.flip_average, "cv2": cv2.__version__,
              "cpu_count": os.cpu_count(), "startup_seconds": startup_seconds(), "results": {}}
    if args.probe:
        yunet = next((d.split(":", 1)[1] for d in args.detectors.split(",") if d.startswith("yunet:")), None)
        report["probe_ms"] = detector_probe(frames_dir, yunet, args.probe)
        print("probe", json.dumps(report["probe_ms"]), flush=True)
    if args.yunet_points:
        r = measure_yunet_points(frames_dir, args.yunet_points, args.limit)
        print("yunet-points", json.dumps(r), flush=True)
        report["results"]["yunet_points"] = r
    if args.in_process:
        for det in args.detectors.split(","):
            r = measure_in_process(frames_dir, args.model, det, args.limit, args.flip_average)
            print("in-process", det, json.dumps(r), flush=True)
            report["results"][det] = r
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return
    for det in args.detectors.split(","):
        name, *flags = det.split("+")
        name = name.replace(":", "_") if name.startswith("haar") else name.split(":")[0] + ("_path" if ":" in name else "")
        tag = "_".join([name, *flags]).replace("=", "").replace("-", "")
        out = Path(args.out_dir) / f"predict_{tag}.jsonl"
        out.parent.mkdir(parents=True, exist_ok=True)
        timing = run_predict(frames_dir, args.model, det, out, args.limit, args.workers, args.flip_average)
        r = {**score_predictions(out, frames_dir), "predict": timing}
        r["ms_per_frame"] = round(1000 * timing["seconds"] / max(r["frames"], 1), 1)
        print(det, json.dumps(r), flush=True)
        report["results"][det] = r
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


# --- tuning detector settings (training frames only) -----------------------------------------
# Haar settings compared by `tune`: HaarDetector keyword arguments on top of `_V1`, the first
# defaults (frontal at 320 px, pyramid step 1.1), so that each name keeps its meaning when the
# detector's defaults change. The last entries are the presets of facemtl.runtime.detectors.HAAR_PRESETS
# as they are now ("image", "all", "video").
_V1 = {"max_side": 320, "scale_factor": 1.1}
_NOW = {"max_side": 288, "scale_factor": 1.15}
TUNE_CONFIGS: dict[str, dict] = {
    "old (F320 + P240 always, mn 3)": {**_V1, "min_neighbors": 3, "rotations": (), "fallback": False},
    "F320 alone, mn 3": {**_V1, "min_neighbors": 3, "profile": False, "rotations": ()},
    "F320 alone, mn 2": {**_V1, "profile": False, "rotations": ()},
    "F320 alone, mn 2, frontalface_default": {**_V1, "profile": False, "rotations": (),
                                              "frontal_file": "haarcascade_frontalface_default.xml"},
    "F320 alone, mn 3, frontalface_default": {**_V1, "profile": False, "rotations": (), "min_neighbors": 3,
                                              "frontal_file": "haarcascade_frontalface_default.xml"},
    "F320 alone, mn 2, frontalface_alt": {**_V1, "profile": False, "rotations": (),
                                          "frontal_file": "haarcascade_frontalface_alt.xml"},
    # "if none": pass 2 where pass 1 found no face at all (confident_neighbors = min_neighbors)
    "F320; P240 if none": {**_V1, "rotations": (), "confident_neighbors": 2},
    "F320; P240 + R240 if none": {**_V1, "confident_neighbors": 2},
    "F240; P240 + R240 if none": {**_V1, "max_side": 240, "confident_neighbors": 2},
    "F240; P240 + R240 if no 4+ face": {**_V1, "max_side": 240},
    "F320; P240 + R240 if none, mn 3": {**_V1, "min_neighbors": 3, "confident_neighbors": 3},
    # pass 2 also where pass 1 found only faces that under 4 windows agreed on (the first default;
    # its predict run on the 2,995 test frames took 152 s against a 120 s budget)
    "F320; P240 + R240 if no 4+ face": {**_V1},
    "F320; P240 + R240 if no 4+ face, all passes always": {**_V1, "fallback": False},
    # cheaper variants of it
    "F320; P240 + R240 if no 4+ face, step 1.15": {**_V1, "scale_factor": 1.15},
    "F320; P240 + R240 if no 4+ face, step 1.2": {**_V1, "scale_factor": 1.2},
    "F288; P240 + R240 if no 4+ face": {**_V1, "max_side": 288},
    "F320; P240 + R240 if no 3+ face, step 1.15": {**_V1, "confident_neighbors": 3, "scale_factor": 1.15},
    "F320; P240 + R200 if no 4+ face, step 1.15": {**_V1, "rotation_max_side": 200, "scale_factor": 1.15},
    # the presets now
    "image: F288; P240 + R240 if no 4+ face, step 1.15": {**_NOW},
    "all: F288 + P240 + R240 always, step 1.15": {**_NOW, "fallback": False},
    "video: F240 alone, step 1.15": {**_NOW, "max_side": 240, "profile": False, "rotations": ()},
}


def run_tune(args) -> None:
    """Found rate, false boxes and time of Haar settings (`TUNE_CONFIGS`), each run through
    the real HaarDetector on every frame, per training frame folder. Found: a box whose
    square is centred within 0.3x of the true square's side and sized within a factor 2 (the
    box-centre rule `measure` scores `facemtl predict` by). Time: CPU ms per frame of the
    detector (this process, one OpenCV thread; a loaded machine inflates wall time, not CPU
    time) and wall ms. "test pose mix": found rates per MTFL pose weighted to testing.txt's
    published pose balance (README: 193/450/1825/401/126)."""
    from facemtl.runtime.detectors import HaarDetector, base_square

    data = Path(args.data)
    pose = {}
    for line in (data / "training.txt").read_text().splitlines():
        f = line.split()
        if f:
            pose[f[0].replace("\\", "/")] = int(f[-1])
    mix = np.array([193, 450, 1825, 401, 126], float)
    policy = FRAME_SQUARE
    names = list(TUNE_CONFIGS) if not args.configs else [n for n in TUNE_CONFIGS if any(
        n.startswith(c) for c in args.configs.split("|"))]
    cv2.setNumThreads(1)
    sets = []
    for folder in map(Path, args.frames):
        meta = json.loads((folder / "frames.json").read_text())
        if meta["split"] != "training":
            raise SystemExit("tune only on training frames: testing.txt is for reporting")
        part = load_frames(folder, args.limit)
        recs = {r["file"]: r["source"] for r in meta["frames"]}
        poses = np.array([pose.get(recs[p.name], 3) for p, _ in part])
        images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p, _ in part]
        truths = [canonical_square(t, policy) for _, t in part]
        sets.append((folder.name, images, truths, poses))
        print(f"{folder.name}: {len(part)} frames, poses 1..5: {[int((poses == k).sum()) for k in range(1, 6)]}"
              + (f", roll +-{meta['roll']:g} deg" if meta.get("roll") else ""), flush=True)
    rows = []
    for name in names:
        det = HaarDetector(**TUNE_CONFIGS[name])
        for set_name, images, truths, poses in sets:
            hit = np.zeros(len(images), bool)
            fp = 0
            cpu = wall = 0.0
            for i, (g, sq) in enumerate(zip(images, truths)):
                w0, c0 = time.perf_counter(), time.process_time()
                found = det.detect(g)
                cpu += time.process_time() - c0
                wall += time.perf_counter() - w0
                for d in found:
                    b = base_square(d, policy)
                    if abs(b.cx - sq.cx) < 0.3 * sq.side and abs(b.cy - sq.cy) < 0.3 * sq.side and 0.5 < sq.side / b.side < 2:
                        hit[i] = True
                    else:
                        fp += 1
            per_pose = [float(hit[poses == k].mean()) if (poses == k).any() else float("nan") for k in range(1, 6)]
            have = ~np.isnan(per_pose)
            n = len(images)
            row = {"config": name, "frames": set_name, "cpu_ms": round(1000 * cpu / n, 1), "wall_ms": round(1000 * wall / n, 1),
                   "found": round(100 * float(hit.mean()), 1),
                   "found_test_mix": round(100 * float(np.nansum(np.array(per_pose) * mix) / mix[have].sum()), 1),
                   "found_by_pose": [round(100 * v, 1) for v in per_pose], "fp_per_frame": round(fp / n, 3)}
            rows.append(row)
            print(f"{name:36s} {set_name:18s} cpu {row['cpu_ms']:6.1f} ms (wall {row['wall_ms']:6.1f})  "
                  f"found {row['found']:5.1f}%  test pose mix {row['found_test_mix']:5.1f}%  "
                  f"by pose {row['found_by_pose']}  false boxes/frame {row['fp_per_frame']:.3f}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="write frames and frames.json")
    m.add_argument("--data", default=os.environ.get("FACEMTL_DATA", str(HERE.parent.parent / "shared" / "data" / "mtfl")))
    m.add_argument("--split", default="testing", choices=["testing", "training"])
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--count", type=int, default=None, help="frames (default: one per face of the split)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--poses", default=None, help="only faces of these MTFL poses, e.g. 1,5 (profiles)")
    m.add_argument("--roll", type=float, default=0.0, metavar="DEG",
                   help="turn each face by a random angle in -DEG..DEG before pasting (harder training frames)")
    tc = sub.add_parser("make-tight", help=f"write tight {TIGHT_SIDE}x{TIGHT_SIDE} face crops (brows to chin) and frames.json")
    tc.add_argument("--data", default=os.environ.get("FACEMTL_DATA", str(HERE.parent.parent / "shared" / "data" / "mtfl")))
    tc.add_argument("--split", default="training", choices=["testing", "training"])
    tc.add_argument("--out", required=True, type=Path)
    tc.add_argument("--count", type=int, default=None, help="crops (default: one per face of the split)")
    tc.add_argument("--span", type=float, default=2.0, help="crop side in eye-to-mouth distances (default 2.0)")
    tc.add_argument("--poses", default=None, help="only faces of these MTFL poses, e.g. 1,2,4,5 (turned heads)")
    tc.add_argument("--part", default="all", choices=["all", "training", "validation"],
                    help="of training.txt, the part `facemtl train` trains on or holds out (default: all)")
    mb = sub.add_parser("make-background", help="write 64x64 face-free crops of the split's photographs")
    mb.add_argument("--data", default=os.environ.get("FACEMTL_DATA", str(HERE.parent.parent / "shared" / "data" / "mtfl")))
    mb.add_argument("--split", default="training", choices=["testing", "training"])
    mb.add_argument("--out", required=True, type=Path)
    mb.add_argument("--count", type=int, default=None)
    mb.add_argument("--part", default="all", choices=["all", "training", "validation"],
                    help="of training.txt, the part `facemtl train` trains on or holds out (default: all)")
    tt = sub.add_parser("tune-tight", help="found rate on tight crops per detector and padding (pad_small)")
    tt.add_argument("--frames", required=True, type=Path, nargs="+",
                    help="make-tight folders (of training faces, to choose)")
    tt.add_argument("--detectors", default="yunet,haar")
    tt.add_argument("--pads", default="0,0.25,0.5,1.0",
                    help="comma-separated chains of paddings tried in turn, e.g. 0.25,0.25/0.5 (0 = none)")
    tt.add_argument("--retry-scores", default=None,
                    help="YuNet: comma-separated score thresholds for the padded retry (default: its threshold)")
    tt.add_argument("--retry-scales", default="1", help="comma-separated scales of the padded retry's copy")
    tt.add_argument("--background", type=Path, default=None, help="a make-background folder: false detections")
    tt.add_argument("--limit", type=int, default=None)
    tt.add_argument("--json", default=None)
    ti = sub.add_parser("tune-image", help="IMAGE mode: YuNet detection size x passes x flip averaging")
    ti.add_argument("--frames", required=True, type=Path, help="a make folder (of training faces, to choose)")
    ti.add_argument("--model", default=None)
    ti.add_argument("--sizes", default="0,480,320", help="YuNet detection sizes, 0 = full size")
    ti.add_argument("--limit", type=int, default=None)
    ti.add_argument("--json", default=None)
    s = sub.add_parser("measure", help="found rate, NME and timings per detector")
    s.add_argument("--frames", required=True)
    s.add_argument("--model", default=None)
    s.add_argument("--detectors", default="yunet",
                   help="comma-separated; DET+--flag+--flag=value adds `facemtl predict` options to that run, e.g. "
                        "haar+--passes=1+--no-flip-average (the 0.1 default path)")
    s.add_argument("--limit", type=int, default=None, help="only N frames spread over the set")
    s.add_argument("--out-dir", default="/tmp/facemtl_bench", help="where the predict outputs go")
    s.add_argument("--workers", type=int, default=None, help="facemtl predict --workers (default: its own)")
    s.add_argument("--in-process", action="store_true",
                   help="score in this process by the crop square (IoU >= 0.5) instead of timing the CLI")
    s.add_argument("--probe", type=int, default=0, metavar="N",
                   help="also time the detectors interleaved on N frames (machine speed against the issue's)")
    s.add_argument("--flip-average", action="store_true", help="facemtl predict --flip-average")
    s.add_argument("--yunet-points", default=None, metavar="PATH",
                   help="also score YuNet's own five points (this YuNet .onnx file), no facemtl model")
    s.add_argument("--json", default=None)
    t = sub.add_parser("tune", help="Haar settings: found rate vs time (training frames only)")
    t.add_argument("--frames", required=True, nargs="+", help="training frame folders")
    t.add_argument("--data", default=os.environ.get("FACEMTL_DATA", str(HERE.parent.parent / "shared" / "data" / "mtfl")))
    t.add_argument("--limit", type=int, default=600, help="at most N frames per folder, spread over it")
    t.add_argument("--configs", default=None, help="prefixes of TUNE_CONFIGS names, separated by | (default: all)")
    t.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.cmd == "make":
        make_frames(Path(args.data), args.split, args.out, args.count, args.seed, args.poses, args.roll)
    elif args.cmd == "make-tight":
        make_tight(Path(args.data), args.split, args.out, args.count, args.span, args.poses, args.part)
    elif args.cmd == "tune-image":
        sizes = [int(v) or None for v in args.sizes.split(",")]
        r = tune_image(args.frames, args.model, sizes, args.limit)
        if args.json:
            Path(args.json).write_text(json.dumps({"frames_dir": str(args.frames), "results": r}, indent=2) + "\n")
    elif args.cmd == "tune-tight":
        chains = [tuple(float(p) for p in c.split("/") if float(p)) for c in args.pads.split(",")]
        thresholds = [float(v) for v in args.retry_scores.split(",")] if args.retry_scores else [None]
        scales = [float(v) for v in args.retry_scales.split(",")]
        r = tune_tight(args.frames, args.detectors.split(","), chains, args.limit, args.background, thresholds, scales)
        if args.json:
            Path(args.json).write_text(json.dumps({"frames_dirs": [str(f) for f in args.frames], "results": r},
                                                  indent=2) + "\n")
    elif args.cmd == "make-background":
        make_background(Path(args.data), args.split, args.out, args.count, args.part)
    elif args.cmd == "measure":
        run_measure(args)
    else:
        run_tune(args)


if __name__ == "__main__":
    main()
