"""Per-head evaluation on an MTFL split: `facemtl evaluate`.

Faces are cropped by the documented crop policy: the canonical square of the annotated
landmarks (`facemtl.runtime.preprocess.canonical_square`), exactly as validation crops are cut in
training. Landmarks are decoded back to pixels of the original image and scored there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from facemtl.runtime.preprocess import crop, face_square, normalize, to_image
from facemtl.runtime.spec import REGRESSION, ModelSpec
from facemtl.train.metrics import calibration, class_metrics, landmark_metrics, nme_per_face
from facemtl.train.mtfl import Images, load_images, load_split, split_train_val

Predictor = Callable[[np.ndarray], dict]  # (N, S, S, 1) normalised crops -> {head: (N, units)}


@dataclass
class EvalReport:
    split: str
    faces: int
    crop: str
    heads: dict[str, dict]
    seconds: float
    skipped: list[str] = field(default_factory=list)
    flip_average: bool = False  # each face also run mirrored, the two answers averaged

    def to_dict(self) -> dict:
        return {"split": self.split, "faces": self.faces, "crop": self.crop, "flip_average": self.flip_average,
                "seconds": round(self.seconds, 2), "heads": self.heads, "skipped": self.skipped}

    def summary(self) -> str:
        """One line per head: the head's main metrics."""
        flip = ", flip-averaged" if self.flip_average else ""
        lines = [f"{self.split}: {self.faces} faces{flip}, {self.seconds:.1f}s"]
        for name, m in self.heads.items():
            if "nme" in m:
                lo, hi = m["nme_ci95"]
                lines.append(f"  {name:<10} NME {m['nme']:.2f}% ({lo:.2f}-{hi:.2f})  failure {m['failure_rate']:.1f}%  "
                             f"AUC@10 {m['auc10']:.3f}")
            else:
                lo, hi = m["accuracy_ci95"]
                lines.append(f"  {name:<10} accuracy {m['accuracy']:.2f}% ({lo:.1f}-{hi:.1f})  "
                             f"balanced {m['balanced_accuracy']:.2f}%  ECE {m['calibration']['ece']:.1f}  "
                             f"confidently contradicted {m['contradicted']}")
        lines.append("  (95% bootstrap intervals over faces in brackets)")
        for name, m in self.heads.items():
            if "by_collection" in m:
                key = "nme" if "nme" in m else "accuracy"
                parts = ", ".join(f"{g} {v[key]:.2f}% ({v['faces']})" for g, v in m["by_collection"].items())
                lines.append(f"  {name:<10} {'NME' if key == 'nme' else key} by image folder: {parts}")
        return "\n".join(lines)


def canonical_crops(data: Images, spec: ModelSpec, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N, S, S, 1) normalised crops and (N, 2, 3) crop matrices, one per face."""
    n, s = len(data), spec.input.size
    x = np.empty((n, s, s, 1), np.float32)
    mats = np.empty((n, 2, 3), np.float64)
    it = range(n)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="cropping", unit="face", leave=False)
    for i in it:
        patch, mats[i] = crop(data.images[i], face_square(data.images[i], data.annotations.points[i], spec.crop), s)
        x[i, :, :, 0] = normalize(patch, spec.input)
    return x, mats


def keras_predictor(model, batch_size: int = 512) -> Predictor:
    def predict(x: np.ndarray) -> dict:
        out = model.predict(x, batch_size=batch_size, verbose=0)
        return {k: np.asarray(v) for k, v in out.items()}

    return predict


def score(spec: ModelSpec, outputs: dict, mats: np.ndarray, data: Images) -> dict[str, dict]:
    """Metrics per head from raw outputs; landmarks compared in pixels of the original image."""
    heads = {}
    ann = data.annotations
    groups = image_folders(ann.paths)
    for h in spec.heads:
        dec = h.decode(outputs[h.name])
        if h.kind == REGRESSION:
            pts = np.stack([to_image(p, m) for p, m in zip(dec["points"], mats)])
            nme = nme_per_face(pts, ann.points)
            heads[h.name] = landmark_metrics(pts, ann.points, spec.landmark_names).to_dict()
            heads[h.name]["by_true_pose"] = _by_pose(nme, ann.labels["pose"])
            if groups:
                heads[h.name]["by_collection"] = {g: _nme_summary(nme[i]) for g, i in groups.items()}
        elif h.name not in ann.labels:
            continue  # a head MTFL has no labels for (added by fine-tuning): nothing to score it against
        else:
            true = ann.labels[h.name]
            heads[h.name] = class_metrics(dec["class_ids"], true, h.labels).to_dict()
            heads[h.name]["contradicted"] = int(len(contradicted(dec["probabilities"], true)))
            heads[h.name]["calibration"] = calibration(dec["probabilities"], true, h.labels)
            if groups:
                heads[h.name]["by_collection"] = {
                    g: {"faces": int(len(i)), "accuracy": float(100.0 * (dec["class_ids"][i] == true[i]).mean())}
                    for g, i in groups.items()}
    return heads


def image_folders(paths: list[str]) -> dict[str, np.ndarray]:
    """Face indices per image folder (MTFL's `lfw_5590`, `net_7876`, `AFLW`), or {} when all
    faces come from one. training.txt mixes two sources that differ from each other as the
    test set differs from both (LFW is 74% male press photographs, net_7876 47% web photos),
    so a validation figure per folder shows how much of it may carry over to AFLW."""
    names = np.array([p.split("/", 1)[0] if "/" in p else "." for p in paths])
    found = sorted(set(names.tolist()))
    return {g: np.flatnonzero(names == g) for g in found} if len(found) > 1 else {}


# A face whose annotated class the model gives less than this probability counts as
# "contradicted": on MTFL's smile head most such faces look mislabelled by eye (the
# `{head}_contradicted.png` grid of `--plots`), so the count is a rough size of the annotation
# noise an accuracy figure carries, not only of the model's errors.
CONTRADICTED_BELOW = 0.1


def confident_errors(probabilities: np.ndarray, true_ids: np.ndarray) -> np.ndarray:
    """Indices of the faces whose predicted class is not the annotated one, ordered by the
    probability the model gives the annotated class, lowest (most confident) first."""
    p = np.asarray(probabilities)
    true_ids = np.asarray(true_ids, np.int64)
    p_true = p[np.arange(len(true_ids)), true_ids]
    order = np.argsort(p_true, kind="stable")
    return order[p.argmax(axis=1)[order] != true_ids[order]]


def contradicted(probabilities: np.ndarray, true_ids: np.ndarray, below: float = CONTRADICTED_BELOW) -> np.ndarray:
    """The confident errors whose annotated class gets probability < `below`, most confident first."""
    errors = confident_errors(probabilities, true_ids)
    p_true = np.asarray(probabilities)[errors, np.asarray(true_ids, np.int64)[errors]]
    return errors[p_true < below]


def _nme_summary(nme: np.ndarray) -> dict:
    from facemtl.train.metrics import FAILURE_NME

    return {"faces": int(len(nme)), "nme": float(nme.mean()), "failure_rate": float(100 * (nme > FAILURE_NME).mean())}


def _by_pose(nme: np.ndarray, pose: np.ndarray) -> dict[str, dict]:
    """NME and failure rate per annotated pose class: where the landmark error comes from."""
    from facemtl.runtime.spec import default_spec

    labels = default_spec().head("pose").labels
    return {labels[k]: _nme_summary(nme[pose == k]) for k in range(len(labels)) if (pose == k).any()}


def decode_landmarks(spec: ModelSpec, outputs: dict, mats: np.ndarray) -> np.ndarray:
    h = next(h for h in spec.heads if h.kind == REGRESSION)
    return np.stack([to_image(p, m) for p, m in zip(h.decode(outputs[h.name])["points"], mats)])


def split_annotations(data_dir: Path, split: str, val_fraction: float = 0.1):
    """`testing`, `training`, or `validation`: the held-out part of training.txt used in training."""
    if split == "validation":
        return split_train_val(load_split(data_dir, "training"), val_fraction)[1]
    return load_split(data_dir, split)


def evaluate(predict: Predictor, spec: ModelSpec, data_dir: Path, split: str = "testing", skip_bad: bool = False,
             plots: Path | None = None, progress: bool = True, flip_average: bool = False) -> EvalReport:
    """Metrics of `predict` on a split; with `flip_average`, of `predict` run on each face and
    its mirror image, the answers averaged (`facemtl.runtime.mirror.flip_averaged`, as the runtime does)."""
    if flip_average:
        from facemtl.runtime.mirror import flip_averaged

        predict = flip_averaged(predict, spec)
    t0 = time.time()
    data = load_images(split_annotations(data_dir, split), skip_bad=skip_bad, progress=progress)
    x, mats = canonical_crops(data, spec, progress=progress)
    outputs = predict(x)
    heads = score(spec, outputs, mats, data)
    crop_desc = ("image (the whole image, resized)" if spec.crop.mode == "image"
                 else f"landmarks (square of side {spec.crop.scale} x the RMS radius of the annotated points)")
    report = EvalReport(split, len(data), crop_desc, heads,
                        time.time() - t0, data.skipped, flip_average)
    if plots is not None:
        from facemtl.train.plots import write_plots

        write_plots(Path(plots), spec, report, data, outputs, mats)
    return report


def score_faces(spec: ModelSpec, outputs: dict, mats: np.ndarray, faces) -> dict[str, dict]:
    """`score` for faces of any source (`facemtl.train.sources.Faces`): each head is scored
    on the faces that have its label (landmarks: those with landmarks), and a head no face
    labels is left out. `faces` counts the faces each head was scored on."""
    from facemtl.train.sources import MISSING

    heads = {}
    for h in spec.heads:
        dec = h.decode(outputs[h.name])
        if h.kind == REGRESSION:
            have = faces.has_points
            if not have.any():
                continue
            idx = np.flatnonzero(have)
            pts = np.stack([to_image(dec["points"][i], mats[i]) for i in idx])
            true_pts = faces.points[idx].astype(np.float64)
            heads[h.name] = landmark_metrics(pts, true_pts, spec.landmark_names).to_dict()
            pose = faces.labels.get("pose")
            if pose is not None and (pose[idx] != MISSING).all():
                heads[h.name]["by_true_pose"] = _by_pose(nme_per_face(pts, true_pts), pose[idx])
        else:
            true = faces.labels.get(h.name)
            if true is None or not (true != MISSING).any():
                continue
            idx = np.flatnonzero(true != MISSING)
            heads[h.name] = class_metrics(dec["class_ids"][idx], true[idx], h.labels).to_dict()
            heads[h.name]["contradicted"] = int(len(contradicted(dec["probabilities"][idx], true[idx])))
            heads[h.name]["calibration"] = calibration(dec["probabilities"][idx], true[idx], h.labels)
        heads[h.name]["faces"] = int(len(idx))
    return heads


def source_crops(loaded, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """Crops of loaded faces (`facemtl.train.sources.LoadedFaces`): the landmark square where a
    face has landmarks, else the detector's calibrated square, as at run time."""
    from facemtl.runtime.preprocess import Square

    n, s = len(loaded), spec.input.size
    x = np.empty((n, s, s, 1), np.float32)
    mats = np.empty((n, 2, 3), np.float64)
    has = loaded.faces.has_points
    for i in range(n):
        sq = (face_square(loaded.images[i], loaded.faces.points[i], spec.crop) if has[i] or spec.crop.mode == "image"
              else Square(*loaded.squares[i]))
        patch, mats[i] = crop(loaded.images[i], sq, s)
        x[i, :, :, 0] = normalize(patch, spec.input)
    return x, mats


def evaluate_source(predict: Predictor, spec: ModelSpec, source: Path, split: str = "all", skip_bad: bool = False,
                    detector: str = "yunet", val_fraction: float = 0.1, flip_average: bool = False,
                    progress: bool = False) -> EvalReport:
    """Per-head metrics on a manifest or a folder per class: `split` "all" faces, or the
    "validation"/"training" part as `facemtl train` splits the source (by face id)."""
    from facemtl.train.sources import load_faces, raise_problems, read_source, validation_split

    if flip_average:
        from facemtl.runtime.mirror import flip_averaged

        predict = flip_averaged(predict, spec)
    t0 = time.time()
    faces, problems = read_source(source, spec)
    if split in ("validation", "training"):
        faces = validation_split(faces, val_fraction)[split == "validation"]
    elif split != "all":
        raise ValueError(f"split {split!r}: a manifest or folder per class has all, validation or training")
    loaded = load_faces(faces, spec, detector, progress=progress)
    problems = problems + loaded.problems
    raise_problems(problems, str(source), skip_bad)
    if not len(loaded):
        from facemtl.runtime.errors import DataError

        raise DataError(f"{source}: no usable faces in split {split!r}")
    x, mats = source_crops(loaded, spec)
    heads = score_faces(spec, predict(x), mats, loaded.faces)
    framing = (f"landmarks where annotated (square of side {spec.crop.scale} x their RMS radius), else the "
               f"{detector} detector through the spec's calibration")
    return EvalReport(f"{Path(source).name} ({split})", len(loaded), framing, heads, time.time() - t0,
                      problems if skip_bad else [], flip_average)


def write_json(report: EvalReport, path: Path) -> None:
    from facemtl.runtime.io import atomic_write_text

    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


__all__ = ["EvalReport", "evaluate", "evaluate_source", "score_faces", "source_crops", "keras_predictor", "canonical_crops", "image_folders", "confident_errors",
           "contradicted", "score", "nme_per_face", "write_json"]
