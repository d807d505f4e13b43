"""Training data for the face verifier: is a small image, as a whole, one face?

The detector misses some tight face crops (a 64x64 image cut brows to chin: detectors want
context around a face). Where it finds nothing in a small image, the runtime can ask a tiny
classifier whether the image itself is a face crop and, if it is, analyse it whole, as
`--detector none` would (`facemtl.runtime.verify`, issue 18). This module makes that
classifier's data from MTFL's `training.txt`, the training part only (the validation part,
`validation_mask`, is held out for measuring):

- face: tight crops of every training-part face (`tight_crop`), the span drawn from 1.2 to
  2.4 eye-to-mouth distances, shifted by up to 8% of the crop and turned by up to 15 degrees;
- background: squares of the same photographs clear of the face (15% margin), 32 px or more.

Both at 64x64, as a folder per class (`OUT/face/{face,background}/*.png`), which `facemtl
train --crop image` trains on with the rest of the pipeline (docs/data.md):

    python -m facemtl.train.verify data --data ../shared/data/mtfl --out runs/verify/data
    python -m facemtl.train.verify data --data ../shared/data/mtfl --part validation --out runs/verify/check
    facemtl train --data runs/verify/data/face --crop image --heads face \\
        --add-head face:classification:background,face --width 8 --depth 3 --features 32 \\
        --pool gdc --epochs 20 --out runs/verify/run
    python -m facemtl.train.verify convert runs/verify/run --train runs/verify/data --check runs/verify/check \\
        --data ../shared/data/mtfl
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import shutil
from pathlib import Path

import cv2
import numpy as np

from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import BoxCalibration, CropPolicy
from facemtl.train.mtfl import load_split, validation_mask

log = logging.getLogger(__name__)

TIGHT_SIDE = 64
# the calibration name of the verifier's framing of a whole-image face (`fit_framing`)
FRAMING = "tight"
# the face square a background square must keep clear of (3.6 RMS radii, with a 15% margin)
_FACE = CropPolicy(scale=3.6)


def tight_crop(image: np.ndarray, pts: np.ndarray, side: int = TIGHT_SIDE, span: float = 2.0,
               shift: tuple[float, float] = (0.0, 0.0), angle: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A tight face crop, brows to chin, resized to `side` x `side` (the kind of image face
    data sets hand out): d = eye-centre to mouth-centre distance; the square is `span` d (2) on
    a side, centred 0.15 d below the midpoint of the two (brows about 0.35 d above the eyes,
    chin about 0.65 d below the mouth), moved by `shift` x its side and turned by `angle`
    degrees (0, 0: upright and centred); the border replicated where it leaves the photograph.
    Returns the crop and the points in it."""
    eyes, mouth = pts[:2].mean(axis=0), pts[3:5].mean(axis=0)
    d = float(np.linalg.norm(mouth - eyes))
    down = (mouth - eyes) / max(d, 1e-9)
    centre = (eyes + mouth) / 2 + 0.15 * d * down + np.asarray(shift) * span * d
    k = side / (span * d)
    a = math.radians(angle)
    c, s = k * math.cos(a), k * math.sin(a)
    # pixel-index coordinates: the square's centre goes to the crop's centre, (side - 1) / 2
    m = np.array([[c, s, (side - 1) / 2 - c * centre[0] - s * centre[1]],
                  [-s, c, (side - 1) / 2 + s * centre[0] - c * centre[1]]])
    crop = cv2.warpAffine(image, m, (side, side), flags=cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop, pts @ m[:, :2].T + m[:, 2]


def background_squares(shape: tuple[int, ...], points: np.ndarray, rng: np.random.Generator, n: int,
                       tries: int = 40) -> list[tuple[int, int, int]]:
    """Up to `n` squares (x, y, side) of a photograph that keep clear of its face square (with
    a 15% margin) and are at least 32 px on a side."""
    sq = canonical_square(points, _FACE)
    h, w = shape[:2]
    fx0, fy0 = sq.cx - 0.65 * sq.side, sq.cy - 0.65 * sq.side
    fx1, fy1 = sq.cx + 0.65 * sq.side, sq.cy + 0.65 * sq.side
    out = []
    for _ in range(tries):
        if len(out) == n:
            break
        side = int(rng.uniform(32, max(33, min(h, w) * 0.6)))
        if side > min(h, w):
            continue
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        if x + side <= fx0 or x >= fx1 or y + side <= fy0 or y >= fy1:
            out.append((x, y, side))
    return out


def make_data(data_dir: Path, out: Path, seed: int = 0, val_fraction: float = 0.1, per_photo: int = 2,
              part: str = "training") -> dict:
    """Write the verifier's folder per class from `training.txt`'s training part (or its
    validation part: the conversion check's crops); returns the counts."""
    ann = load_split(data_dir, "training")
    held_out = validation_mask(ann.paths, val_fraction)
    part = np.flatnonzero(held_out if part == "validation" else ~held_out)
    faces, background = out / "face" / "face", out / "face" / "background"
    faces.mkdir(parents=True, exist_ok=True)
    background.mkdir(parents=True, exist_ok=True)
    counts = {"face": 0, "background": 0, "unreadable": 0}
    for i in part:
        rng = np.random.default_rng([seed, int(i)])
        image = cv2.imread(str(ann.root / ann.paths[i]), cv2.IMREAD_COLOR)
        if image is None:
            counts["unreadable"] += 1
            continue
        pts = ann.points[i].astype(np.float64)
        crop, _ = tight_crop(image, pts, span=float(rng.uniform(1.2, 2.4)),
                             shift=tuple(rng.uniform(-0.08, 0.08, 2)), angle=float(rng.uniform(-15, 15)))
        cv2.imwrite(str(faces / f"{i:05d}.png"), crop)
        counts["face"] += 1
        for k, (x, y, side) in enumerate(background_squares(image.shape, pts, rng, per_photo)):
            patch = cv2.resize(image[y:y + side, x:x + side], (TIGHT_SIDE, TIGHT_SIDE), interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(background / f"{i:05d}_{k}.png"), patch)
            counts["background"] += 1
    log.info("wrote %d face and %d background crops to %s", counts["face"], counts["background"], out)
    return counts


def fit_framing(data_dir: Path, policy: CropPolicy, val_fraction: float = 0.1) -> BoxCalibration:
    """How a tight crop (brows to chin, span 2.0) frames its face: the median offset and scale of
    the training square (`canonical_square` under `policy`, the first model's) against the
    whole image's box, over the training part's faces. The verifier's whole-image face is cut
    from this square (`FaceVerifier.detect`); the model's further passes re-centre it."""
    ann = load_split(data_dir, "training")
    rows = []
    for i in np.flatnonzero(~validation_mask(ann.paths, val_fraction)):
        image = cv2.imread(str(ann.root / ann.paths[i]), cv2.IMREAD_COLOR)
        if image is None:
            continue
        _, pts = tight_crop(image, ann.points[i].astype(np.float64))
        sq = canonical_square(pts, policy)
        # the whole image's box as a square: centre (side / 2, side / 2), side = its width
        half = TIGHT_SIDE / 2
        rows.append(((sq.cx - half) / TIGHT_SIDE, (sq.cy - half) / TIGHT_SIDE, sq.side / TIGHT_SIDE))
    dx, dy, scale = np.median(np.array(rows), axis=0)
    return BoxCalibration(float(dx), float(dy), float(scale), len(rows))


def folder_examples(folder: Path, spec) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 1) model input and (N,) class ids (the head's labels) of a folder per class
    (`OUT/face`), each image cut whole as the runtime's verifier cuts it."""
    from facemtl.runtime.preprocess import frame_crops, image_square, normalize, read_grey

    head = spec.head("face")
    xs, ys = [], []
    for k, label in enumerate(head.labels):
        for f in sorted((folder / label).glob("*.png")):
            grey = read_grey(f)
            crops, _ = frame_crops(grey, [image_square(grey.shape)], spec.input.size)
            xs.append(normalize(crops, spec.input)[0])
            ys.append(k)
    return np.stack(xs)[..., None].astype(np.float32), np.array(ys, np.int32)


def convert_verifier(model_dir: Path, out_dir: Path, train_folder: Path, check_folder: Path,
                     formats=("tflite-int8-float", "onnx-fp32"), calibration: int = 500,
                     framing: BoxCalibration | None = None) -> dict:
    """Export the verifier in `formats` through `facemtl convert`'s own export and check
    (`convert_checked`): each file's `face` accuracy on the validation part's crops
    (`check_folder`, `make_data(part="validation")`) against the Keras model's, within the
    head's conversion tolerance; int8 calibration crops from the training part's
    (`train_folder`). Files that fail go to `rejected/`. `framing` (`fit_framing`) is written
    into the run's spec first, as the "tight" calibration."""
    from facemtl.convert.data import Crops
    from facemtl.convert.run import ConvertOptions, convert_checked
    from facemtl.runtime.spec import ModelSpec
    from facemtl.train.model import load_model

    model = load_model(model_dir / "model.keras")
    spec = ModelSpec.load(model_dir / "spec.json")
    if framing is not None:
        # the square a verified whole image is cut from, embedded with the files' spec
        spec = spec.replace(crop=dataclasses.replace(spec.crop, calibrations={**spec.crop.calibrations,
                                                                               FRAMING: framing}))
        spec.save(model_dir / "spec.json")
    xv, yv = folder_examples(check_folder, spec)
    xt, _ = folder_examples(train_folder, spec)
    pick = np.sort(np.random.default_rng(0).choice(len(xt), size=min(calibration, len(xt)), replace=False))
    nowhere = np.zeros((len(xv), 2 * len(spec.landmark_names)), np.float32)  # no landmark head
    held = Crops(xv, nowhere, {"face": yv}, f"{len(xv)} validation-part crops ({int(yv.sum())} faces)")
    cal = Crops(xt[pick], np.zeros((len(pick), nowhere.shape[1]), np.float32), {}, "training-part crops")
    out_dir.mkdir(parents=True, exist_ok=True)
    report = convert_checked(model, spec, "spec.json", model_dir / "model.keras", out_dir, held, cal,
                             ConvertOptions(formats=tuple(formats), float_heads=True), log.info)
    shutil.copy(model_dir / "spec.json", out_dir / "spec.json")
    return report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m facemtl.train.verify", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the training part's (or validation part's) crops as a folder per class")
    d.add_argument("--data", type=Path, required=True, help="the MTFL folder")
    d.add_argument("--out", type=Path, required=True)
    d.add_argument("--part", default="training", choices=["training", "validation"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--per-photo", type=int, default=2, help="background squares per photograph")
    c = sub.add_parser("convert", help="export a trained verifier and check it on the validation part's crops")
    c.add_argument("run", type=Path, help="the `facemtl train` run folder (model.keras, spec.json)")
    c.add_argument("--train", type=Path, required=True, help="the training part's folder (`data`): calibration")
    c.add_argument("--check", type=Path, required=True, help="the validation part's folder (`data --part validation`)")
    c.add_argument("--out", type=Path, default=None, help="default: RUN/converted")
    c.add_argument("--data", type=Path, default=None,
                   help="the MTFL folder, to fit the tight-crop framing on the training part (default: the "
                        "framing the run's spec.json holds already)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "data":
        print(make_data(args.data, args.out, args.seed, per_photo=args.per_photo, part=args.part))
        return 0
    framing = None
    if args.data is not None:
        from facemtl.runtime.analyzer import load_model as load_runtime_model

        with load_runtime_model(None) as first:  # the packaged model's crop policy
            framing = fit_framing(args.data, first.spec.crop)
        print(f"tight-crop framing: {framing}")
    report = convert_verifier(args.run, args.out or args.run / "converted", args.train / "face", args.check / "face",
                              framing=framing)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
