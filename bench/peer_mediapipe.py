"""facemtl against MediaPipe FaceMesh on the same frames: the system users would pick for landmarks.

MediaPipe runs in its own virtual environment (its wheel bundles the face mesh models and
pins its own numpy), the way the Pi test keeps its environment apart:

    python bench/peer_mediapipe.py setup --venv /tmp/mpvenv            # mediapipe==0.10.21
    python bench/peer_mediapipe.py run --venv /tmp/mpvenv --frames TRAIN_FRAMES --out mp_train.jsonl
    python bench/peer_mediapipe.py run --venv /tmp/mpvenv --frames TEST_FRAMES --out mp_test.jsonl
    python bench/peer_mediapipe.py score --frames TEST_FRAMES --mediapipe mp_test.jsonl \\
        --facemtl PREDICT.jsonl --offset-frames TRAIN_FRAMES --offset-mediapipe mp_train.jsonl --json peer.json

FRAMES are `bench/frames.py make` folders; PREDICT.jsonl is `facemtl predict`'s output on the
test frames (what `bench/frames.py measure` writes to its --out-dir). MediaPipe's five points
from the 478-point mesh (the legacy FaceMesh solution, refine_landmarks on): the iris centres
468 and 473 for the eyes (image-left eye first, as MTFL), the nose tip 1, the mouth corners 61
and 291. The two annotations place points differently (a convention offset): it is measured
on the *training* frames (the mean offset of each point, in inter-ocular distances, in the
face's own eye-line frame) and reported; the test NME is given raw and with that training
offset removed. Found and NME use `bench/frames.py`'s rules, on all frames and on the frames
both systems find.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench/frames.py: the frames' truth and the found rule

MEDIAPIPE = "mediapipe==0.10.21"
MESH_POINTS = (468, 473, 1, 61, 291)  # eye, eye, nose tip, mouth corner, mouth corner

# Runs inside the MediaPipe environment: frames.json in, one JSON line per frame out.
_RUNNER = r'''
import json, sys, time
import cv2, mediapipe as mp
frames_dir, out_path = sys.argv[1], sys.argv[2]
meta = json.load(open(f"{frames_dir}/frames.json"))
mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=True,
                                       min_detection_confidence=0.5)
with open(out_path, "w") as out:
    for rec in meta["frames"]:
        image = cv2.imread(f"{frames_dir}/{rec['file']}")
        h, w = image.shape[:2]
        t0 = time.perf_counter()
        res = mesh.process(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        ms = 1000 * (time.perf_counter() - t0)
        faces = []
        for lm in res.multi_face_landmarks or []:
            pts = [[lm.landmark[i].x * w - 0.5, lm.landmark[i].y * h - 0.5] for i in POINTS]
            xs = [p.x * w for p in lm.landmark]; ys = [p.y * h for p in lm.landmark]
            box = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            # image-left eye first, as MTFL (the mesh's 468 is the subject's right eye)
            if pts[0][0] > pts[1][0]:
                pts[0], pts[1] = pts[1], pts[0]
                pts[3], pts[4] = pts[4], pts[3]
            faces.append({"box": box, "landmarks": pts})
        out.write(json.dumps({"image": rec["file"], "faces": faces, "ms": ms}) + "\n")
'''


def setup(venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", MEDIAPIPE], check=True)


def run(venv: Path, frames: Path, out: Path) -> None:
    code = _RUNNER.replace("POINTS", repr(MESH_POINTS))
    t0 = time.perf_counter()
    subprocess.run([str(venv / "bin" / "python"), "-c", code, str(frames), str(out)], check=True)
    print(f"wrote {out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


def _records(path: Path) -> dict[str, dict]:
    return {Path(r["image"]).name: r for r in map(json.loads, path.read_text().splitlines())}


def _truth(frames: Path) -> dict[str, np.ndarray]:
    meta = json.loads((frames / "frames.json").read_text())
    return {r["file"]: np.array(r["points"], np.float64) for r in meta["frames"]}


def _eye_frame(truth: np.ndarray) -> tuple[np.ndarray, float]:
    """Rotation into the face's eye-line frame, and the inter-ocular distance."""
    d = truth[1] - truth[0]
    iod = float(np.hypot(*d))
    c, s = d / iod
    return np.array([[c, s], [-s, c]]), iod


def _matched(frames: Path, predictions: Path):
    """{frame: (predicted (5, 2), truth (5, 2))} for the frames where the true face is found."""
    from frames import FRAME_SQUARE, found_face

    truth, recs = _truth(frames), _records(predictions)
    out = {}
    for name, t in truth.items():
        rec = recs.get(name)
        f = found_face(rec["faces"], t, FRAME_SQUARE) if rec and "faces" in rec else None
        if f is not None:
            out[name] = (np.asarray(f["landmarks"], np.float64), t)
    return out, len(truth)


def convention_offset(frames: Path, predictions: Path) -> np.ndarray:
    """Mean (5, 2) offset of the predicted points from the truth, in inter-ocular distances,
    in each face's eye-line frame (x along the eyes, y down the face)."""
    pairs, _ = _matched(frames, predictions)
    offs = []
    for pred, t in pairs.values():
        rot, iod = _eye_frame(t)
        offs.append((pred - t) @ rot.T / iod)
    return np.mean(offs, axis=0)


def _nme(pred: np.ndarray, truth: np.ndarray, offset: np.ndarray | None = None) -> float:
    rot, iod = _eye_frame(truth)
    if offset is not None:
        pred = pred - (offset * iod) @ rot  # back from the eye-line frame to the image
    return 100.0 * float(np.linalg.norm(pred - truth, axis=1).mean()) / iod


def _summary(pairs: dict, n: int, names=None, offset=None) -> dict:
    keys = [k for k in pairs if names is None or k in names]
    nmes = np.array([_nme(*pairs[k], offset) for k in keys])
    return {"frames": n if names is None else len(names), "found": len(keys),
            "found_rate": round(100.0 * len(keys) / max(n, 1), 2),
            "nme": round(float(nmes.mean()), 3) if len(nmes) else None,
            "nme_median": round(float(np.median(nmes)), 3) if len(nmes) else None,
            "failure_rate": round(float(100.0 * (nmes > 10).mean()), 2) if len(nmes) else None}


def score(frames: Path, mediapipe: Path, facemtl: Path, offset_frames: Path | None, offset_mediapipe: Path | None,
          offset_facemtl: Path | None) -> dict:
    mp_pairs, n = _matched(frames, mediapipe)
    fm_pairs, _ = _matched(frames, facemtl)
    both = set(mp_pairs) & set(fm_pairs)
    report = {"frames": str(frames), "mediapipe": MEDIAPIPE, "points": list(MESH_POINTS)}
    mp_off = convention_offset(offset_frames, offset_mediapipe) if offset_frames and offset_mediapipe else None
    fm_off = convention_offset(offset_frames, offset_facemtl) if offset_frames and offset_facemtl else None
    ms = [r["ms"] for r in _records(mediapipe).values() if "ms" in r]
    report["mediapipe_all"] = {**_summary(mp_pairs, n), "ms_per_frame_median": round(float(np.median(ms)), 1)}
    report["facemtl_all"] = _summary(fm_pairs, n)
    report["both_found"] = len(both)
    report["mediapipe_both"] = _summary(mp_pairs, n, both)
    report["facemtl_both"] = _summary(fm_pairs, n, both)
    if mp_off is not None:
        report["mediapipe_offset_training_iod"] = np.round(mp_off, 4).tolist()
        report["mediapipe_both_offset_removed"] = _summary(mp_pairs, n, both, mp_off)
    if fm_off is not None:
        report["facemtl_offset_training_iod"] = np.round(fm_off, 4).tolist()
        report["facemtl_both_offset_removed"] = _summary(fm_pairs, n, both, fm_off)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup")
    s.add_argument("--venv", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--venv", type=Path, required=True)
    r.add_argument("--frames", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("score")
    c.add_argument("--frames", type=Path, required=True)
    c.add_argument("--mediapipe", type=Path, required=True)
    c.add_argument("--facemtl", type=Path, required=True)
    c.add_argument("--offset-frames", type=Path, help="training frames, to measure the convention offsets on")
    c.add_argument("--offset-mediapipe", type=Path, help="MediaPipe's output on --offset-frames")
    c.add_argument("--offset-facemtl", type=Path, help="facemtl's output on --offset-frames")
    c.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.cmd == "setup":
        setup(args.venv)
    elif args.cmd == "run":
        run(args.venv, args.frames, args.out)
    else:
        report = score(args.frames, args.mediapipe, args.facemtl, args.offset_frames, args.offset_mediapipe,
                       args.offset_facemtl)
        text = json.dumps(report, indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
