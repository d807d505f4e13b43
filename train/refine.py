"""Train the refinement stage (`facemtl.runtime.refine`) on the first stage's real errors.

    python -m facemtl.train.refine cache --data ../shared/data/mtfl --out runs/refine/first_stage.npz
    python -m facemtl.train.refine fit --cache runs/refine/first_stage.npz --out runs/refine/r1
    python -m facemtl.train.refine convert runs/refine/r1 --out runs/refine/r1/converted

1. `cache`: the first stage (a converted file, the packaged int8 model by default) runs on
   every face of `training.txt` the way IMAGE mode runs it: a square near the face's
   canonical square (shifted and scaled a little, as a detector's box is), two passes (the
   second cropped from the first's landmarks, the size anchored) and flip averaging. Its
   answers are saved with the truth, so the refinement trains on the errors the first stage
   really makes, systematic ones included (a nose placed low on turned faces), not on noise.
2. `fit`: on the first stage's faces the training part was fitted on, its errors are smaller
   than on faces it never saw. So each epoch adds Gaussian jitter per point and axis whose
   variance is the validation part's mean squared error minus the training part's (in units
   of the face square): the training errors then have the spread the first stage shows on
   held-out faces, and the refinement learns corrections of the size it will meet. Patches
   are cut by `facemtl.runtime.preprocess.point_patches`, the runtime's own function.
   Validation: the validation part of training.txt (the same faces the first stage held out,
   by path hash), no jitter; the epoch with the lowest NME of the refined points is kept.
3. `convert`: TFLite and ONNX files through `facemtl.convert`'s exporters, each checked on
   the validation faces against the Keras model by the NME of the refined points (the head's
   tolerance), and accepted only if it passes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from facemtl.runtime.mirror import mirror_permutation
from facemtl.runtime.preprocess import canonical_square, from_patches, patch_targets, point_patches
from facemtl.runtime.refine import mirror_offsets, mirror_patches
from facemtl.runtime.spec import REGRESSION, HeadSpec, InputSpec, ModelSpec, RefineSpec, contract_id

logger = logging.getLogger(__name__)

PATCH = 0.3          # patch side / face square side
PATCH_SIZE = 24      # pixels: the eyes are ~36 px apart in patch pixels, twice the 40x40 crop's
# The first pass's square around the true canonical square: a detector's box, calibrated.
FIRST_SHIFT = 0.04   # centre shift, uniform in +-shift x side on each axis
FIRST_SCALE = 0.06   # log side factor, uniform in +-scale


# --- 1. the first stage's answers on the training faces ---------------------------------------

def run_first_stage(core, policy, grey: np.ndarray, square, passes: int = 2) -> np.ndarray:
    """(K, 2) landmarks in pixels, as `FaceAnalyzer` IMAGE mode finds them from `square`."""
    from facemtl.runtime.core import landmark_square, size_anchor

    out = core(grey, [square])
    anchor = size_anchor(square, out.points[0], policy)
    for _ in range(passes - 1):
        out = core(grey, [landmark_square(out.points[0], policy, anchor=anchor)])
    return out.points[0]


def first_stage_cache(data_dir, out, model=None, draws: int = 2, seed: int = 0, val_fraction: float = 0.1,
                      limit: int = 0, passes: int = 2, flip_average: bool = True, log=logger.info) -> dict:
    """Run the first stage on training.txt's faces (`draws` framings per training-part face,
    one per validation face) and save truth and answers to `out` (.npz). Returns its summary."""
    from facemtl.runtime.analyzer import load_model
    from facemtl.runtime.core import InferenceCore
    from facemtl.runtime.preprocess import Square
    from facemtl.train.mtfl import load_images, load_split, validation_mask

    backend = load_model(model, threads=1)
    spec, policy = backend.spec, backend.spec.crop
    core = InferenceCore(backend.run, spec, flip_average=flip_average)
    ann = load_split(data_dir, "training")
    if limit:
        ann = ann.subset(np.arange(min(limit, len(ann))))
    t0 = time.perf_counter()
    images = load_images(ann, skip_bad=True)
    ann = images.annotations
    val = validation_mask(ann.paths, val_fraction)
    log(f"{len(images)} faces read in {time.perf_counter() - t0:.1f} s ({int(val.sum())} validation)")
    rng = np.random.default_rng(seed)
    face, first, is_val = [], [], []
    t0 = time.perf_counter()
    for i, grey in enumerate(images.images):
        truth = ann.points[i]
        base = canonical_square(truth, policy)
        for _ in range(1 if val[i] else draws):
            dx, dy = rng.uniform(-FIRST_SHIFT, FIRST_SHIFT, 2) * base.side
            side = base.side * float(np.exp(rng.uniform(-FIRST_SCALE, FIRST_SCALE)))
            pts = run_first_stage(core, policy, grey, Square(base.cx + dx, base.cy + dy, side), passes)
            face.append(i)
            first.append(pts)
            is_val.append(bool(val[i]))
    seconds = time.perf_counter() - t0
    face = np.array(face)
    first = np.array(first)
    is_val = np.array(is_val)
    truth = ann.points[face].reshape(len(face), -1, 2)
    meta = {"model": str(getattr(backend, "path", model)), "contract": contract_id(spec), "trunk": spec.trunk,
            "passes": passes, "flip_average": flip_average, "draws": draws, "seed": seed,
            "val_fraction": val_fraction, "first_shift": FIRST_SHIFT, "first_scale": FIRST_SCALE,
            "seconds": round(seconds, 1), "crop": {"scale": policy.scale, "shift_y": policy.shift_y}}
    summary = {**meta, "train_nme": float(nme(first[~is_val], truth[~is_val]).mean()),
               "val_nme": float(nme(first[is_val], truth[is_val]).mean()), "samples": len(face)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, face=face, first=first, truth=truth, val=is_val,
                        paths=np.array(ann.paths), meta=json.dumps(summary))
    log(f"first stage on {len(face)} framings in {seconds:.1f} s: NME {summary['train_nme']:.3f} (training part), "
        f"{summary['val_nme']:.3f} (validation part) -> {out}")
    return summary


def nme(points: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per face: mean point distance / inter-ocular distance (eye centre to eye centre), percent."""
    points = np.asarray(points, np.float64).reshape(len(points), -1, 2)
    truth = np.asarray(truth, np.float64).reshape(len(truth), -1, 2)
    iod = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=1)
    return 100 * np.linalg.norm(points - truth, axis=2).mean(axis=1) / np.maximum(iod, 1e-9)


def matched_jitter(first: np.ndarray, truth: np.ndarray, val: np.ndarray, policy) -> np.ndarray:
    """(K, 2) standard deviations, in face-square units, of the jitter that gives the training
    part's first-stage errors the validation part's mean square: sqrt(max(val - train, 0))."""
    side = np.array([canonical_square(t, policy).side for t in truth])
    err = (first - truth) / side[:, None, None]
    ms_val = (err[val] ** 2).mean(axis=0)
    ms_train = (err[~val] ** 2).mean(axis=0)
    return np.sqrt(np.maximum(ms_val - ms_train, 0.0))


# --- 2. the refinement model ----------------------------------------------------------------

def refine_spec(first_spec: ModelSpec, patch: float = PATCH, size: int = PATCH_SIZE, first_name: str = "",
                level: int = 1) -> ModelSpec:
    """The refinement stage's contract for a first stage's (`level` 2: run after level 1)."""
    k = len(first_spec.landmark_names)
    head = HeadSpec("landmarks", REGRESSION, 2 * k, loss_weight=1.0, tolerance=0.15,
                    description="per point: the true point in its own patch, (x, y) patch units from the centre")
    return ModelSpec(input=InputSpec(size=size, channels=k, min_std=first_spec.input.min_std),
                     crop=first_spec.crop.__class__(scale=first_spec.crop.scale, shift_y=first_spec.crop.shift_y),
                     heads=(head,), landmark_names=first_spec.landmark_names, trunk="refine",
                     refine=RefineSpec(contract_id(first_spec), patch, first_name, level))


def build_refine_model(spec: ModelSpec, width: int = 24, hidden: int = 128, dropout: float = 0.1):
    """Three conv-BN-ReLU-pool blocks (width, 2x, ~2.7x channels) over the K patches stacked
    as channels (each block halves the map: 24 -> 12 -> 6 -> 3), a hidden Dense layer and the
    head: 2K outputs. Seeing all K patches at once, it can use one point to place another."""
    import keras
    from keras import layers

    inp = keras.Input(spec.input.shape, name="patches")
    x = inp
    for i, c in enumerate((width, 2 * width, int(round(8 * width / 3)))):
        x = layers.Conv2D(c, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden, use_bias=False, name="hidden")(x)
    x = layers.BatchNormalization(name="bn_hidden")(x)
    x = layers.ReLU(name="relu_hidden")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    head = spec.heads[0]
    out = layers.Dense(head.units, name=head.name, kernel_initializer="zeros")(x)
    return keras.Model(inp, {head.name: out}, name="facemtl_refine")


def point_distance_loss(y_true, y_pred):
    """Mean Euclidean distance per point (patch units): the NME's own measure, unsquared."""
    from keras import ops

    d = ops.reshape(y_true - y_pred, (-1, ops.shape(y_true)[-1] // 2, 2))
    return ops.mean(ops.sqrt(ops.sum(d * d, axis=-1) + 1e-8), axis=-1)


def examples(images, truth: np.ndarray, first: np.ndarray, spec: ModelSpec, rng=None,
             sigma: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Model inputs (M, S, S, K), targets (M, 2K) and patch matrices (M, K, 2, 3) for faces
    `images[m]` with `truth[m]` and first-stage `first[m]` landmarks ((M, K, 2) pixels). With
    `rng` and `sigma` ((K, 2), face-square units), the first-stage points are jittered first."""
    m, k = len(first), len(spec.landmark_names)
    s = spec.input.size
    x = np.empty((m, s, s, k), np.float32)
    y = np.empty((m, 2 * k), np.float32)
    mats = np.empty((m, k, 2, 3))
    for i in range(m):
        p = first[i]
        if rng is not None and sigma is not None:
            side = canonical_square(truth[i], spec.crop).side
            p = p + rng.standard_normal(p.shape) * sigma * side
        x[i], mats[i] = point_patches(images[i], p, spec.crop, spec.refine.patch, spec.input)
        y[i] = patch_targets(truth[i], mats[i]).reshape(-1)
    return x, y, mats


def cascade_cache(cache, out, data_dir, refine_model, flip_average: bool = True, log=logger.info) -> dict:
    """A cache for the next cascade level: `cache`'s framings with the answers of a refinement
    file (`refine_model`, run as IMAGE mode runs it: flip-averaged) in place of the first
    stage's. `fit` on it trains a refiner of those answers; `meta["refined_by"]` names the file."""
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.refine import Refiner
    from facemtl.train.mtfl import load_images, load_split

    c = load_cache(cache)
    ann = load_split(data_dir, "training")
    index = {p: i for i, p in enumerate(ann.paths)}
    grey = load_images(ann.subset(np.array([index[p] for p in c["paths"]]))).images
    backend = load_backend(refine_model, threads=1)
    refiner = Refiner(backend, flip_average=flip_average)
    if backend.spec.refine.first != c["meta"]["contract"]:
        raise ValueError(f"{refine_model} refines another first model than {cache}'s")
    t0 = time.perf_counter()
    face, first, truth, val = c["face"], c["first"], c["truth"], c["val"]
    answers = np.stack([refiner(grey[f], p[None])[0][0] for f, p in zip(face, first)])
    seconds = time.perf_counter() - t0
    refiner.close()
    meta = {**c["meta"], "refined_by": str(refine_model), "refined_by_level": backend.spec.refine.level,
            "refine_flip_average": flip_average,
            "refine_seconds": round(seconds, 1),
            "before": {"train_nme": c["meta"]["train_nme"], "val_nme": c["meta"]["val_nme"]},
            "train_nme": float(nme(answers[~val], truth[~val]).mean()),
            "val_nme": float(nme(answers[val], truth[val]).mean())}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, face=face, first=answers, truth=truth, val=val, paths=c["paths"], meta=json.dumps(meta))
    log(f"{refine_model} on {len(face)} framings in {seconds:.1f} s: NME {meta['train_nme']:.3f} (training part), "
        f"{meta['val_nme']:.3f} (validation part) -> {out}")
    return meta


def mirror_examples(x: np.ndarray, y: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The same examples for the mirror images of the faces, as the runtime's flip averaging
    makes them (`facemtl.runtime.refine.mirror_patches`): patches flipped, twins swapped, x of
    each target negated."""
    perm = list(mirror_permutation(spec.landmark_names))
    k = len(perm)
    return mirror_patches(x, perm), mirror_offsets(y.reshape(len(y), k, 2), perm).reshape(len(y), -1)


def predict_offsets(model, x: np.ndarray, spec: ModelSpec, flip_average: bool = False) -> np.ndarray:
    """(M, 2K) answers of a Keras refinement model, flip-averaged as the runtime does."""
    y = model.predict(x, batch_size=512, verbose=0)[spec.heads[0].name]
    if not flip_average:
        return y
    perm = list(mirror_permutation(spec.landmark_names))
    ym = model.predict(mirror_patches(x, perm), batch_size=512, verbose=0)[spec.heads[0].name]
    back = mirror_offsets(ym.reshape(len(ym), len(perm), 2), perm).reshape(len(ym), -1)
    return 0.5 * (y + back)


def refined_points(offsets: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """(M, 2K) model outputs and (M, K, 2, 3) patch matrices -> (M, K, 2) image pixels."""
    k = mats.shape[1]
    return np.stack([from_patches(o.reshape(k, 2), mt) for o, mt in zip(offsets, mats)])


def load_cache(cache) -> dict:
    with np.load(cache, allow_pickle=False) as z:
        d = {k: z[k] for k in z.files}
    d["meta"] = json.loads(str(d["meta"]))
    return d


def fit_refine(cache, out, data_dir, epochs: int = 20, batch: int = 128, lr: float = 2e-3, seed: int = 0,
               width: int = 24, patch: float = PATCH, size: int = PATCH_SIZE, jitter: str = "matched",
               mirror: bool = False, select_flip: bool = False, first_model=None, log=logger.info) -> dict:
    """Train a refinement model on a `first_stage_cache` file; writes model.keras, spec.json
    and train.json to `out`. `jitter`: "matched" (see the module doc) or "none". `mirror`:
    each epoch, a random half of the examples is mirrored (`mirror_examples`). `select_flip`:
    the epoch kept is the one with the lowest flip-averaged validation NME (else plain)."""
    import keras

    from facemtl.runtime.analyzer import load_model
    from facemtl.train.mtfl import load_images, load_split

    keras.utils.set_random_seed(seed)
    c = load_cache(cache)
    meta = c["meta"]
    backend = load_model(first_model or meta["model"])
    first_spec = backend.spec
    backend.close()
    if contract_id(first_spec) != meta["contract"]:
        raise ValueError(f"{cache} was made with another first model ({meta['model']})")
    # a cache of a refinement level's answers (`cascade`) trains the next level
    spec = refine_spec(first_spec, patch, size, first_name=Path(meta["model"]).name,
                       level=meta.get("refined_by_level", 1 if "refined_by" in meta else 0) + 1)
    ann = load_split(data_dir, "training")
    paths = list(c["paths"])
    index = {p: i for i, p in enumerate(ann.paths)}
    ann = ann.subset(np.array([index[p] for p in paths]))
    t0 = time.perf_counter()
    grey = load_images(ann).images
    log(f"{len(grey)} images read in {time.perf_counter() - t0:.1f} s")
    face, first, truth, val = c["face"], c["first"], c["truth"], c["val"]
    sigma = matched_jitter(first, truth, val, spec.crop) if jitter == "matched" else np.zeros(first.shape[1:])
    log("jitter sigma (face-square units, x/y per point): " + " ".join(f"{a:.4f}/{b:.4f}" for a, b in sigma))
    tr, va = np.flatnonzero(~val), np.flatnonzero(val)
    xv, yv, mv = examples([grey[f] for f in face[va]], truth[va], first[va], spec)
    nme_first = nme(first[va], truth[va])

    model = build_refine_model(spec, width=width)
    steps = int(np.ceil(len(tr) / batch))
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=epochs * steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss={"landmarks": point_distance_loss})
    rng = np.random.default_rng(seed)
    best, history, best_weights = np.inf, [], None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        xt, yt, _ = examples([grey[f] for f in face[tr]], truth[tr], first[tr], spec, rng, sigma)
        if mirror:
            flip = rng.random(len(xt)) < 0.5
            xt[flip], yt[flip] = mirror_examples(xt[flip], yt[flip], spec)
        t1 = time.perf_counter()
        h = model.fit(xt, {"landmarks": yt}, batch_size=batch, epochs=1, verbose=0, shuffle=True)
        v = float(nme(refined_points(predict_offsets(model, xv, spec), mv), truth[va]).mean())
        vf = float(nme(refined_points(predict_offsets(model, xv, spec, True), mv), truth[va]).mean())
        history.append({"epoch": epoch, "loss": float(h.history["loss"][-1]), "val_nme": v, "val_nme_flip": vf,
                        "patch_s": round(t1 - t0, 1), "fit_s": round(time.perf_counter() - t1, 1)})
        log(f"epoch {epoch}/{epochs}: loss {history[-1]['loss']:.4f}, validation NME {v:.3f}, flip-averaged "
            f"{vf:.3f} (first stage {nme_first.mean():.3f}); {time.perf_counter() - t0:.0f} s")
        if (vf if select_flip else v) < best:
            best, best_weights = (vf if select_flip else v), model.get_weights()
    model.set_weights(best_weights)
    per_face = nme(refined_points(predict_offsets(model, xv, spec), mv), truth[va])
    per_face_flip = nme(refined_points(predict_offsets(model, xv, spec, True), mv), truth[va])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "model.keras")
    spec.save(out / "spec.json")
    result = {
        "cache": str(cache), "first": meta, "epochs": epochs, "batch": batch, "lr": lr, "seed": seed, "width": width,
        "patch": patch, "size": size, "jitter": jitter, "mirror": mirror, "select_flip": select_flip,
        "sigma": sigma.tolist(), "params": int(model.count_params()),
        "train_faces": int(len(tr)), "val_faces": int(len(va)), "seconds": round(time.perf_counter() - started, 1),
        "val": {"first_nme": float(nme_first.mean()), "first_failure": float(100 * np.mean(nme_first > 10)),
                "refined_nme": float(per_face.mean()), "refined_failure": float(100 * np.mean(per_face > 10)),
                "refined_flip_nme": float(per_face_flip.mean()),
                "refined_flip_failure": float(100 * np.mean(per_face_flip > 10)),
                "best_epoch": int(np.argmin([h["val_nme_flip" if select_flip else "val_nme"] for h in history]) + 1)},
        "history": history,
    }
    (out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    log(f"validation NME {result['val']['first_nme']:.3f} -> {result['val']['refined_nme']:.3f}, failure "
        f"{result['val']['first_failure']:.2f}% -> {result['val']['refined_failure']:.2f}% -> {out}")
    return result


# --- 3. conversion, checked per head --------------------------------------------------------

def convert_refine(model_dir, out_dir, cache, data_dir, formats=("tflite-int8-float", "onnx-fp32"),
                   calibration: int = 500, log=logger.info) -> dict:
    """Export the refinement model in `formats` and check each file on the validation faces:
    the NME of its refined points against the Keras model's, within the head's tolerance.
    Calibration patches come from the training part (the cache's first framing of each face)."""
    import shutil

    import keras

    from facemtl.convert.check import PASSED, CHECK_FAILED, Limits, check_head, keras_outputs
    from facemtl.convert.export import ExportContext, export
    from facemtl.runtime.backends import load_backend
    from facemtl.runtime.formats import get_format
    from facemtl.train.mtfl import load_images, load_split

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = keras.models.load_model(model_dir / "model.keras", custom_objects={"point_distance_loss": point_distance_loss})
    spec = ModelSpec.load(model_dir / "spec.json")
    c = load_cache(cache)
    ann = load_split(data_dir, "training")
    index = {p: i for i, p in enumerate(ann.paths)}
    grey = load_images(ann.subset(np.array([index[p] for p in c["paths"]]))).images
    face, first, truth, val = c["face"], c["first"], c["truth"], c["val"]
    va = np.flatnonzero(val)
    tr = np.flatnonzero(~val)
    pick = np.sort(np.random.default_rng(0).choice(tr, size=min(calibration, len(tr)), replace=False))
    xv, _, mv = examples([grey[f] for f in face[va]], truth[va], first[va], spec)
    xc, _, _ = examples([grey[f] for f in face[pick]], truth[pick], first[pick], spec)
    head = spec.heads[0]
    reference = keras_outputs(model, xv)[head.name]
    ref_points = refined_points(reference, mv)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with ExportContext(model, spec, xc, float_heads=True, float_stem=True) as ctx:
        for name in formats:
            fmt = get_format(name)
            staged = out_dir / f".staging_{fmt.file_name()}"
            row = {"format": name, "status": "export failed"}
            try:
                export(fmt, ctx, staged)
                with load_backend(staged, threads=1) as b:
                    raw = b.run(xv)[head.name]
                    t0 = time.perf_counter()
                    for i in range(200):
                        b.run(xv[i % len(xv): i % len(xv) + 1])
                    row["ms_per_face"] = round(1000 * (time.perf_counter() - t0) / 200, 4)
                pts = refined_points(raw, mv)
                # the check's NME in the first stage's crop units: points / face square side
                side = np.array([canonical_square(t, spec.crop).side for t in truth[va]])
                chk = check_head(head, (ref_points / side[:, None, None]).reshape(len(va), -1),
                                 (pts / side[:, None, None]).reshape(len(va), -1),
                                 (truth[va] / side[:, None, None]).reshape(len(va), -1), {},
                                 Limits.for_head(head), None)
                row.update(chk.to_dict())
                row["status"] = PASSED if chk.passed else CHECK_FAILED
                row["size_bytes"] = staged.stat().st_size
                final = out_dir / fmt.file_name()
                if chk.passed:
                    staged.replace(final)
                    row["file"] = final.name
                else:
                    (out_dir / "rejected").mkdir(exist_ok=True)
                    staged.replace(out_dir / "rejected" / fmt.file_name())
            except Exception as e:  # one failing format does not stop the others
                row["error"] = f"{type(e).__name__}: {e}"
                staged.unlink(missing_ok=True)
            log(f"{name}: {row['status']}" + (f", NME {row.get('keras', 0):.3f} -> {row.get('converted', 0):.3f}"
                                              if "converted" in row else f" ({row.get('error', '')})"))
            rows.append(row)
    report = {"model": str(model_dir), "check": f"{len(va)} validation faces of training.txt", "formats": rows}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    shutil.copy(model_dir / "spec.json", out_dir / "spec.json")
    return report


def main(argv=None) -> int:
    from facemtl.train.mtfl import default_data_dir

    p = argparse.ArgumentParser(prog="python -m facemtl.train.refine", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache", help="run the first stage on training.txt's faces and save its answers")
    c.add_argument("--data", default=default_data_dir())
    c.add_argument("--out", required=True)
    c.add_argument("--model", default=None, help="the first stage's file (default: the packaged model)")
    c.add_argument("--draws", type=int, default=2, help="framings per training-part face")
    c.add_argument("--limit", type=int, default=0)
    k = sub.add_parser("cascade", help="a cache of a refinement file's answers, for the next cascade level")
    k.add_argument("--data", default=default_data_dir())
    k.add_argument("--cache", required=True)
    k.add_argument("--refine-model", required=True)
    k.add_argument("--out", required=True)
    f = sub.add_parser("fit", help="train a refinement model on a cache")
    f.add_argument("--data", default=default_data_dir())
    f.add_argument("--cache", required=True)
    f.add_argument("--out", required=True)
    f.add_argument("--epochs", type=int, default=20)
    f.add_argument("--batch", type=int, default=128)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--width", type=int, default=24)
    f.add_argument("--patch", type=float, default=PATCH)
    f.add_argument("--size", type=int, default=PATCH_SIZE)
    f.add_argument("--jitter", choices=("matched", "none"), default="matched")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--mirror", action="store_true", help="mirror a random half of the examples each epoch")
    f.add_argument("--select-flip", action="store_true", help="keep the epoch of the best flip-averaged validation NME")
    v = sub.add_parser("convert", help="export and check a refinement model")
    v.add_argument("model_dir")
    v.add_argument("--data", default=default_data_dir())
    v.add_argument("--cache", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--formats", default="tflite-int8-float,onnx-fp32")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.data is None:
        p.error("no data folder: pass --data DIR or set $FACEMTL_DATA")
    if args.cmd == "cache":
        first_stage_cache(args.data, args.out, args.model, draws=args.draws, limit=args.limit)
    elif args.cmd == "cascade":
        cascade_cache(args.cache, args.out, args.data, args.refine_model)
    elif args.cmd == "fit":
        fit_refine(args.cache, args.out, args.data, epochs=args.epochs, batch=args.batch, lr=args.lr,
                   seed=args.seed, width=args.width, patch=args.patch, size=args.size, jitter=args.jitter,
                   mirror=args.mirror, select_flip=args.select_flip)
    else:
        convert_refine(args.model_dir, args.out, args.cache, args.data, formats=tuple(args.formats.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
