"""Training and evaluation data from three kinds of source, as one table of faces; no TensorFlow.

- an MTFL folder (`training.txt`/`testing.txt`), read by `facemtl.runtime.mtfl`;
- a dataset manifest: JSON lines, one face per line (docs/data.md has the schema);
- folder-per-class for one head: `smile/smiling/*.jpg`, `smile/not_smiling/*.jpg`.

Every source becomes `Faces`: image paths, landmarks (NaN where a face has none), an optional
box, and one class id per head (`MISSING` where a face has no label for that head). A head
missing for a face is masked in the loss and the metrics (`facemtl.train.pipeline`); a face
without landmarks is framed by a detector and the spec's calibration, as at run time
(`frame_without_landmarks`).

Checks come in two passes, both collected rather than stopping at the first: reading the
manifest (syntax, label names) and loading the images (missing or undecodable files,
landmarks or boxes outside the image, no face found). Each problem names file and line;
`skip_bad` drops the faces at fault and counts them instead of failing.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemtl.runtime.errors import DataError, ImageError, SpecError
from facemtl.runtime.mtfl import ATTRIBUTES, Annotations
from facemtl.runtime.spec import CLASSIFICATION, REGRESSION, ModelSpec, default_spec

log = logging.getLogger(__name__)

MISSING = -1
N_POINTS = 5
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_KEYS = ("image", "id", "box", "landmarks", "labels")
# A landmark may lie this far (pixels) outside the image: annotators click on the edge pixel,
# and MTFL's 1-based points shifted to 0-based land up to half a pixel beyond it.
EDGE_TOLERANCE = 1.0
SHOWN = 20  # problems listed in one error message


@dataclass
class Faces:
    """N faces of one source. `ids` key the held-out validation split (the MTFL-relative path
    for MTFL faces, in a manifest too, so a converted split holds out the same faces)."""

    root: Path                       # image paths are relative to it
    paths: list[str]
    points: np.ndarray               # (N, 5, 2) float32 image pixels, 0-based; NaN: no landmarks
    boxes: np.ndarray                # (N, 4) float32 x, y, w, h; NaN: no box
    labels: dict[str, np.ndarray]    # head name -> (N,) int32 class ids, MISSING where unlabelled
    where: list[str]                 # "file:line" (or the image path) of each face, for messages
    ids: list[str]
    source: str = ""                 # the file or folder read
    name: str = ""                   # short name for per-source metrics

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def has_points(self) -> np.ndarray:
        return ~np.isnan(self.points).any(axis=(1, 2))

    def label_counts(self) -> dict[str, int]:
        """Faces labelled per head (landmarks included)."""
        out = {"landmarks": int(self.has_points.sum())}
        out.update({k: int((v != MISSING).sum()) for k, v in self.labels.items()})
        return out

    def subset(self, index) -> "Faces":
        index = np.asarray(index, dtype=np.int64)
        return Faces(self.root, [self.paths[i] for i in index], self.points[index], self.boxes[index],
                     {k: v[index] for k, v in self.labels.items()}, [self.where[i] for i in index],
                     [self.ids[i] for i in index], self.source, self.name)


def from_annotations(ann: Annotations, name: str = "") -> Faces:
    """MTFL annotations as faces: every face has landmarks and the four attributes."""
    n = len(ann)
    return Faces(ann.root, list(ann.paths), np.asarray(ann.points, np.float32), np.full((n, 4), np.nan, np.float32),
                 {k: np.asarray(v, np.int32) for k, v in ann.labels.items()},
                 [f"{ann.source}:{line}" for line in ann.lines] if ann.lines else [ann.source] * n,
                 list(ann.paths), ann.source, name or Path(ann.root).name)


def known_heads(spec: ModelSpec | None) -> dict[str, tuple[str, ...]]:
    """Classification heads a label may name: the spec's and the default MTFL ones."""
    heads = {h.name: h.labels for h in default_spec().heads if h.kind == CLASSIFICATION}
    if spec is not None:
        heads.update({h.name: h.labels for h in spec.heads if h.kind == CLASSIFICATION})
    return heads


# --- the manifest --------------------------------------------------------------------------
def _numbers(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers, got {json.dumps(value)[:80]}") from None
    if a.shape != shape:
        raise ValueError(f"{what} must have shape {list(shape)}, got {json.dumps(value)[:80]}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be finite numbers")
    return a


def parse_manifest_line(text: str, heads: dict[str, tuple[str, ...]]) -> dict | None:
    """One manifest line -> {image, id, points (5, 2) | None, box (4,) | None, labels {head: id}}.

    None for a blank line; ValueError (one line of text) for anything malformed."""
    if not text.strip():
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    unknown = sorted(set(rec) - set(MANIFEST_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; a face has {', '.join(MANIFEST_KEYS)}")
    image = rec.get("image")
    if not isinstance(image, str) or not image:
        raise ValueError('"image" (a path relative to the manifest) is required')
    face_id = rec.get("id", image)
    if not isinstance(face_id, str) or not face_id:
        raise ValueError('"id" must be a non-empty string')
    points = None if rec.get("landmarks") is None else _numbers(rec["landmarks"], (N_POINTS, 2), '"landmarks"')
    box = None if rec.get("box") is None else _numbers(rec["box"], (4,), '"box" [x, y, w, h]')
    if box is not None and (box[2] <= 0 or box[3] <= 0):
        raise ValueError(f'"box" needs a positive width and height, got {box.tolist()}')
    labels = rec.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError('"labels" must be an object {head: label}')
    ids = {}
    for head, value in labels.items():
        if head not in heads:
            raise ValueError(f"unknown head {head!r} in labels; known: {', '.join(sorted(heads))} "
                             "(a new head is added with --add-head NAME:classification:LABEL1,LABEL2)")
        if value is None:
            continue
        if value not in heads[head]:
            raise ValueError(f"{head} label {value!r} is not one of the head's classes ({', '.join(heads[head])})")
        ids[head] = heads[head].index(value)
    return {"image": image.replace("\\", "/"), "id": face_id, "points": points, "box": box, "labels": ids}


def read_manifest(file: str | os.PathLike, spec: ModelSpec | None = None, skip_bad: bool = False) -> tuple[Faces, list[str]]:
    """A JSON-lines manifest -> (faces, problems). Image paths are relative to the manifest's
    folder. Every malformed line is a problem naming file and line; the caller decides
    (`raise_problems`) whether they fail the run or are skipped and counted."""
    file = Path(file)
    try:
        text = file.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read {file}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{file}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    heads = known_heads(spec)
    recs, where, problems = [], [], []
    for i, line in enumerate(text.splitlines(), start=1):
        try:
            rec = parse_manifest_line(line, heads)
        except ValueError as e:
            problems.append(f"{file}:{i}: {e}")
            continue
        if rec is not None:
            recs.append(rec)
            where.append(f"{file}:{i}")
    if not recs and not problems:
        raise DataError(f"{file}: no faces (one JSON object per line; see docs/data.md)")
    n = len(recs)
    points = np.full((n, N_POINTS, 2), np.nan, np.float32)
    boxes = np.full((n, 4), np.nan, np.float32)
    labels = {h: np.full(n, MISSING, np.int32) for h in heads}
    for j, r in enumerate(recs):
        if r["points"] is not None:
            points[j] = r["points"]
        if r["box"] is not None:
            boxes[j] = r["box"]
        for h, v in r["labels"].items():
            labels[h][j] = v
    # heads no face of this manifest labels are left out: they are simply missing
    labels = {h: v for h, v in labels.items() if (v != MISSING).any()}
    faces = Faces(file.parent, [r["image"] for r in recs], points, boxes, labels, where, [r["id"] for r in recs],
                  str(file), file.stem)
    return faces, problems


def manifest_record(path: str, points: np.ndarray | None, labels: dict[str, str], face_id: str | None = None,
                    box=None) -> str:
    """One manifest line (no newline), the inverse of `parse_manifest_line`."""
    rec: dict = {"image": path}
    if face_id is not None and face_id != path:
        rec["id"] = face_id
    if box is not None:
        rec["box"] = [round(float(v), 3) for v in box]
    if points is not None:
        # float32 values printed in full: a manifest trains on the very numbers of its source
        rec["landmarks"] = [[float(x), float(y)] for x, y in np.asarray(points, np.float32).tolist()]
    if labels:
        rec["labels"] = labels
    return json.dumps(rec, separators=(", ", ": "))


def mtfl_to_manifest(ann: Annotations, out: Path, spec: ModelSpec | None = None) -> int:
    """Write an MTFL split as a manifest at `out` (atomically); returns the number of faces.

    Paths are written relative to the manifest's folder and `id` keeps the MTFL path, so the
    held-out validation faces are the same whichever form is trained on."""
    from facemtl.runtime.io import atomic_write_text

    spec = spec or default_spec()
    out = Path(out)
    base = out.parent.resolve()
    lines = []
    for i, rel in enumerate(ann.paths):
        image = Path(os.path.relpath((Path(ann.root) / rel).resolve(), base)).as_posix()
        labels = {name: spec.head(name).labels[int(ann.labels[name][i])] for name, _ in ATTRIBUTES}
        lines.append(manifest_record(image, ann.points[i], labels, face_id=rel))
    atomic_write_text(out, "\n".join(lines) + "\n")
    return len(lines)


# --- folder-per-class ----------------------------------------------------------------------
def read_class_folders(folder: str | os.PathLike, spec: ModelSpec | None = None, head: str | None = None) -> tuple[Faces, list[str]]:
    """`FOLDER/<label>/*.jpg` for the head named `head` (default: the folder's own name):
    each subfolder is one of the head's labels. No landmarks: a detector frames the faces."""
    folder = Path(folder)
    heads = known_heads(spec)
    head = head or folder.name
    if head not in heads:
        raise DataError(f"{folder}: folder-per-class data for unknown head {head!r}; name the folder after a head "
                        f"({', '.join(sorted(heads))}) or add one with --add-head {head}:classification:LABEL1,LABEL2")
    classes = heads[head]
    subs = sorted(p for p in folder.iterdir() if p.is_dir())
    wrong = [p.name for p in subs if p.name not in classes]
    if wrong:
        raise DataError(f"{folder}: subfolder(s) {', '.join(wrong)} are not labels of head {head!r} "
                        f"({', '.join(classes)})")
    paths, ids = [], []
    for sub in subs:
        for p in sorted(sub.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                paths.append(f"{sub.name}/{p.name}")
                ids.append(classes.index(sub.name))
    if not paths:
        raise DataError(f"{folder}: no images in its label subfolders ({', '.join(classes)})")
    n = len(paths)
    faces = Faces(folder, paths, np.full((n, N_POINTS, 2), np.nan, np.float32), np.full((n, 4), np.nan, np.float32),
                  {head: np.asarray(ids, np.int32)}, [str(folder / p) for p in paths], [f"{head}/{p}" for p in paths],
                  str(folder), folder.name)
    return faces, []


# --- any source ----------------------------------------------------------------------------
def source_kind(path: str | os.PathLike) -> str:
    """"mtfl", "manifest" or "folders", from what the path holds."""
    path = Path(path)
    if path.is_file():
        return "manifest"
    if not path.is_dir():
        raise DataError(f"data source {path} does not exist (an MTFL folder, a .jsonl manifest or a folder per class)")
    if (path / "training.txt").is_file() or (path / "testing.txt").is_file():
        return "mtfl"
    if any(p.is_dir() for p in path.iterdir()):
        return "folders"
    raise DataError(f"{path}: neither an MTFL folder (training.txt), a manifest file nor a folder with one "
                    "subfolder per class")


def read_source(path: str | os.PathLike, spec: ModelSpec | None = None, split: str = "training") -> tuple[Faces, list[str]]:
    """Faces and line problems of one source; `split` picks the MTFL file (training/testing)."""
    from facemtl.train.mtfl import load_split

    kind = source_kind(path)
    if kind == "mtfl":
        return from_annotations(load_split(path, split)), []
    if kind == "manifest":
        return read_manifest(path, spec)
    return read_class_folders(path, spec)


def raise_problems(problems: list[str], what: str, skip_bad: bool) -> None:
    """Every problem in one DataError (the first SHOWN listed), or with `skip_bad` a warning."""
    if not problems:
        return
    if skip_bad:
        log.warning("%s: skipped %d bad face(s) (--skip-bad), e.g. %s", what, len(problems), problems[0])
        return
    listing = "\n".join(f"  {p}" for p in problems[:SHOWN])
    more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
    raise DataError(f"{what}: {len(problems)} bad face(s) (fix them, or pass --skip-bad to skip and count them):\n"
                    f"{listing}{more}")


def validation_split(faces: Faces, fraction: float) -> tuple[Faces, Faces]:
    from facemtl.train.mtfl import validation_mask

    val = validation_mask(faces.ids, fraction)
    return faces.subset(np.flatnonzero(~val)), faces.subset(np.flatnonzero(val))


# --- images --------------------------------------------------------------------------------
@dataclass
class LoadedFaces:
    """Faces with their grey images and, for faces without landmarks, the detector's square
    (cx, cy, side, angle; NaN rows for faces framed by their landmarks)."""

    faces: Faces
    images: list[np.ndarray]
    squares: np.ndarray
    problems: list[str] = field(default_factory=list)   # the faces dropped, and why
    detector: str = ""

    def __len__(self) -> int:
        return len(self.images)


def _inside(points: np.ndarray, shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    return bool(np.all(points[:, 0] >= -EDGE_TOLERANCE) and np.all(points[:, 0] <= w - 1 + EDGE_TOLERANCE)
                and np.all(points[:, 1] >= -EDGE_TOLERANCE) and np.all(points[:, 1] <= h - 1 + EDGE_TOLERANCE))


def _box_overlap(box: np.ndarray, shape: tuple[int, ...]) -> bool:
    h, w = shape[:2]
    x, y, bw, bh = box
    return x < w and y < h and x + bw > 0 and y + bh > 0


def frame_without_landmarks(grey: np.ndarray, box: np.ndarray | None, spec: ModelSpec, detector):
    """The square a face without landmarks is cut from: the runtime's detector on the image,
    the detection that best overlaps `box` (or the most confident one without a box), through
    the spec's calibration for that detector (`facemtl.runtime.detectors.crop_square`, the
    function the runtime frames every face with). None when no face is found."""
    from facemtl.runtime.detectors import box_overlap, crop_square

    dets = detector.detect(grey)
    if not dets:
        return None
    if box is not None and not np.isnan(box).any():
        iou, _ = box_overlap(np.asarray([box], np.float64), np.asarray([d.box for d in dets], np.float64))
        k = int(np.argmax(iou[0]))
        if iou[0, k] < 0.3:
            return None
        d = dets[k]
    else:
        d = max(dets, key=lambda d: d.score)
    return crop_square(d, spec.crop)


def load_faces(faces: Faces, spec: ModelSpec, detector: str = "yunet", workers: int = 4, progress: bool = False) -> LoadedFaces:
    """Decode every image (grey, the runtime's `read_grey`), check landmarks and boxes against
    the image, and frame faces without landmarks by `detector`. Faces at fault are left out and
    listed in `problems` (file and line each); the caller raises or counts them."""
    from facemtl.runtime.preprocess import read_grey

    if (~faces.has_points).any() and spec.crop.mode == "landmarks":
        try:
            spec.crop.calibration(detector.partition(":")[0].strip().lower())
        except SpecError:
            raise DataError(f"{faces.source}: faces without landmarks are framed by the {detector} detector through "
                            f"the spec's calibration, which it lacks: calibrate the spec (`facemtl calibrate`), start from a calibrated "
                            "model (`facemtl train --init`), or give the faces landmarks") from None

    def work(i: int):
        nan_square = np.full(4, np.nan)
        try:
            grey = read_grey(faces.root / faces.paths[i])
        except ImageError as e:
            return None, nan_square, f"{faces.where[i]}: {e}"
        if faces.has_points[i] and not _inside(faces.points[i], grey.shape):
            return None, nan_square, (f"{faces.where[i]}: landmarks outside the {grey.shape[1]}x{grey.shape[0]} image "
                                      f"{faces.paths[i]} (0-based pixels expected)")
        box = faces.boxes[i]
        if not np.isnan(box).any() and not _box_overlap(box, grey.shape):
            return None, nan_square, f"{faces.where[i]}: box {box.tolist()} lies outside the {grey.shape[1]}x{grey.shape[0]} image"
        if faces.has_points[i] or spec.crop.mode != "landmarks":
            return grey, nan_square, None
        sq = frame_without_landmarks(grey, box, spec, local_detector())
        if sq is None:
            return None, nan_square, f"{faces.where[i]}: the {detector} detector finds no face in {faces.paths[i]}"
        return grey, np.array([sq.cx, sq.cy, sq.side, sq.angle]), None

    # OpenCV's detectors are not safe to share between threads: one per worker thread
    local = threading.local()

    def local_detector():
        if getattr(local, "det", None) is None:
            from facemtl.runtime.detectors import create_detector

            local.det = create_detector(detector)
        return local.det

    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(work, range(len(faces)))
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(faces), desc=f"reading {faces.name}", unit="img", leave=False)
        results = list(results)
    keep = [i for i, r in enumerate(results) if r[2] is None]
    problems = [r[2] for r in results if r[2] is not None]
    squares = np.array([results[i][1] for i in keep], np.float64).reshape(-1, 4)
    return LoadedFaces(faces.subset(keep), [results[i][0] for i in keep], squares, problems, detector)


def head_targets(faces: Faces, spec: ModelSpec) -> np.ndarray:
    """(N, number of classification heads of `spec`) class ids in spec order, MISSING where a
    face has no label for the head (or its source none at all)."""
    heads = [h for h in spec.heads if h.kind == CLASSIFICATION]
    out = np.full((len(faces), len(heads)), MISSING, np.int32)
    for j, h in enumerate(heads):
        if h.name in faces.labels:
            v = faces.labels[h.name]
            if len(v) and v.max() >= h.units:
                raise DataError(f"{faces.source}: {h.name} class id {int(v.max())} but the head has {h.units} classes")
            out[:, j] = v
    return out


def labelled_heads(faces_list: list[Faces], spec: ModelSpec) -> set[str]:
    """Heads of `spec` that at least one face of these sources labels."""
    out = set()
    for f in faces_list:
        counts = f.label_counts()
        out |= {h.name for h in spec.heads
                if counts.get("landmarks" if h.kind == REGRESSION else h.name, 0) > 0}
    return out


def source_names(paths: list[str]) -> list[str]:
    """Short distinct names for metric keys: the file or folder name, numbered if repeated."""
    names = []
    for p in paths:
        base = Path(p).stem if Path(p).is_file() else Path(p).name
        base = "".join(c if c.isalnum() else "_" for c in base) or "source"
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


__all__ = ["Faces", "LoadedFaces", "MISSING", "from_annotations", "read_manifest", "read_class_folders", "read_source",
           "load_faces", "mtfl_to_manifest", "manifest_record", "raise_problems", "validation_split", "head_targets",
           "labelled_heads", "source_kind", "source_names", "concat"]


def concat(parts: list[LoadedFaces]) -> LoadedFaces:
    """Several sources' loaded faces as one set (paths made whole; labels a source lacks are
    MISSING)."""
    if len(parts) == 1:
        return parts[0]
    heads = sorted({h for p in parts for h in p.faces.labels})
    n = sum(len(p) for p in parts)
    labels = {h: np.concatenate([p.faces.labels.get(h, np.full(len(p), MISSING, np.int32)) for p in parts])
              for h in heads}
    faces = Faces(Path("."), [str(p.faces.root / q) for p in parts for q in p.faces.paths],
                  np.concatenate([p.faces.points for p in parts]), np.concatenate([p.faces.boxes for p in parts]),
                  labels, [w for p in parts for w in p.faces.where], [i for p in parts for i in p.faces.ids],
                  "+".join(p.faces.source for p in parts), "+".join(p.faces.name for p in parts))
    assert len(faces) == n
    return LoadedFaces(faces, [im for p in parts for im in p.images], np.concatenate([p.squares for p in parts]),
                       [q for p in parts for q in p.problems], parts[0].detector)
