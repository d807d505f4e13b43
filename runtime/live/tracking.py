"""Video mode: detect now and then, follow every face from its own landmarks in between.

    FaceAnalyzerOptions(running_mode=RunningMode.VIDEO, tracking=TrackingOptions(detect_every=15))
    analyzer.analyze_for_video(frame, timestamp_ms)     # FaceTracker.process underneath

Per frame, for each tracked face, the crop is the canonical square (`canonical_square`,
the very framing the model was trained on) of its landmarks from the previous frame (moved
on by the face's velocity), turned by the roll of their eye line (`eye_angle`) beyond
`align_free` degrees (default 0: upright crops). The model was trained on
squares jittered by +-8% shift, +-12% scale and +-18 degrees (train/pipeline.py `Augment`),
so a face that moved less than that between two frames is still framed well enough, and
its new landmarks re-centre the next crop. No detector, no full-frame colour conversion:
only the region around each square is converted to grey, and all faces go through the
interpreter in one batch.

The detector (on the analyzer's downscaled copy of the frame) runs when no face is tracked,
and every `detect_every` frames to pick up new faces and to confirm the tracked ones; a
track the detector has not confirmed for `max_unconfirmed` detections in a row is dropped.

"Lost" is decided per frame by appearance, at almost no cost: the normalised 40x40 crop the
model sees is compared (normalised cross-correlation, one 1600-element dot product) with
the track's reference crop, taken when the detector last confirmed the face and updated
slowly while the match is good. Measured on 600 MTFL test faces and 840 crops of
photographs without a face (`python bench/measure_lost.py`): the same face moved,
rescaled, turned and re-lit by a few frames of tracking error matches at 0.77 (median;
5th percentile 0.55), a crop of no face at -0.01 (95th percentile 0.27), half a face at
0.09; ROC AUC 0.999 (face vs no face). At `lost_score` 0.4, 98.8% of faces pass and 1.7%
of no-face crops do. The model's own landmark geometry is much weaker (AUC 0.78): trained
on canonical squares only, it draws a canonically framed face into any crop (RMS spread
ratio 0.99 on faces, 0.92 on no face).
A track under `lost_score` for `lost_frames` frames in a row is dropped.

Landmarks are smoothed with a One Euro filter (`facemtl.runtime.live.smoothing`) per track, and
the next crop is framed from the smoothed landmarks moved on by the face's velocity:
sensor noise then does not feed back through the crop position, and the velocity keeps a
moving face centred. Attributes are averaged over time with hysteresis. Face ids are
unique per tracker and stable for the life of a track.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from facemtl.runtime.core import InferenceCore, landmark_square, size_anchor
from facemtl.runtime.detectors import Detection, box_overlap, crop_square
from facemtl.runtime.preprocess import Square
from facemtl.runtime.results import Classification, Face, FrameResult
from facemtl.runtime.live.smoothing import HeadsSmoother, OneEuroFilter, OneEuroParams
from facemtl.runtime.spec import REGRESSION, ModelSpec, SpecError


@dataclass
class TrackingOptions:
    """How video mode follows faces. Every field has a working default.

    detect_every: run the detector every N frames while faces are tracked (always when
        none is). 1 detects on every frame (tracks still give ids and smoothing).
    align / align_free: turn each crop by the part of the eye line's roll (of the last
        landmarks) beyond `align_free` degrees (default 0: the whole roll, so every crop is
        upright as in training). A free range keeps the crop upright for small rolls, which
        helps a model whose roll answer is biased: the crop angle comes from the model's own
        answer, and its bias feeds back through it (`facemtl bench --live --align-free 14`
        measures it; docs/live.md).
    anchor: size a tracked face's crop as its detector did, not as its own landmarks would.
        On the frame that starts a track, the side of the detector's square (calibrated to the
        training framing) is compared with the side of the canonical square of the landmarks
        the model gave on that crop; later crops are the landmarks' square scaled by that
        ratio. A model's landmark square can be biased in size for a given face, and a crop
        framed from it alone compounds the bias (a square 2% too large grows from frame to
        frame). Size only, measured once per track: anchoring the centre as well, or
        re-measuring at each re-detection, brings the detector's box noise into the crop
        (`facemtl bench --live --no-anchor` compares; docs/live.md).
    smooth_landmarks / landmark_filter: One Euro filter on the reported landmarks.
    smooth_attributes / attribute_tau / attribute_margin: average class probabilities over
        `attribute_tau` seconds; change a label only when another class leads by the margin.
    lost_score / lost_frames: drop a track whose crop matches its reference crop (see
        `appearance_match`) under `lost_score` for `lost_frames` frames in a row.
    reference_rate: while the match is above `lost_score` + 0.2, the reference crop moves this
        fraction of the way to the current crop each frame (it follows slow changes of pose
        and light); a detection that confirms the track resets it to the current crop.
    max_unconfirmed: drop a track the detector missed on this many detections in a row.
    match_iou: a detection and a track are the same face above this IoU of their squares.
    refine_new: a new face is cropped twice on its first frame: from the detector's box,
        then from the landmarks that gave (the detector's framing is rougher).
    min_side: drop a track whose face square is under this many pixels.
    predict: move each crop on by the face's velocity (smoothed over frames) before cutting
        it, so a moving face is framed where it is now, not where it was.
    crop_from: "smoothed" (default) frames the next crop from the smoothed landmarks, which
        keeps sensor noise from feeding back through the crop position (on the still
        sample face: 0.015 px jitter against 0.09 px from "raw"); "raw" from the model's
        own. Without landmark smoothing it is always "raw".
    passes: model runs per frame; 2 re-crops every face from this frame's first answer
        (NME 2.8 against 3.1 on the sample stream, at twice the model cost).
    """

    detect_every: int = 15
    align: bool = True
    align_free: float = 0.0
    anchor: bool = True
    smooth_landmarks: bool = True
    landmark_filter: OneEuroParams = field(default_factory=OneEuroParams)
    smooth_attributes: bool = True
    attribute_tau: float = 0.5
    attribute_margin: float = 0.2
    lost_score: float = 0.4
    lost_frames: int = 2
    reference_rate: float = 0.05
    max_unconfirmed: int = 2
    match_iou: float = 0.3
    refine_new: bool = True
    min_side: float = 16.0
    predict: bool = True
    crop_from: str = "smoothed"
    passes: int = 1

    def __post_init__(self) -> None:
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if not -1.0 <= self.lost_score < 1.0:
            raise ValueError(f"lost_score must be in -1..1, got {self.lost_score}")
        if not 0.0 <= self.reference_rate <= 1.0:
            raise ValueError(f"reference_rate must be in 0..1, got {self.reference_rate}")
        if self.lost_frames < 1 or self.max_unconfirmed < 1:
            raise ValueError("lost_frames and max_unconfirmed must be >= 1")
        if self.crop_from not in ("raw", "smoothed"):
            raise ValueError(f"crop_from must be 'raw' or 'smoothed', got {self.crop_from!r}")
        if self.passes < 1:
            raise ValueError(f"passes must be >= 1, got {self.passes}")
        if not 0.0 <= self.align_free < 90.0:
            raise ValueError(f"align_free must be in 0..90 degrees, got {self.align_free}")
        if not 0.0 < self.match_iou < 1.0:
            raise ValueError(f"match_iou must be in (0, 1), got {self.match_iou}")


def appearance_match(x: np.ndarray, ref: np.ndarray) -> float:
    """Normalised cross-correlation of two crops (any shape, same size), -1..1."""
    x = np.asarray(x, np.float32).ravel()
    ref = np.asarray(ref, np.float32).ravel()
    xc = x - x.mean()
    rc = ref - ref.mean()
    return float(xc @ rc / max(float(np.linalg.norm(xc) * np.linalg.norm(rc)), 1e-9))


class _Track:
    __slots__ = ("id", "points", "smooth", "filter", "labels", "score", "unconfirmed", "confirmed", "low", "age",
                 "match", "ref", "velocity", "t", "anchor", "box")

    def __init__(self, track_id: int, options: TrackingOptions, heads: dict[str, int]):
        self.id = track_id
        self.points: np.ndarray | None = None   # raw landmarks of the last frame (image pixels)
        self.smooth: np.ndarray | None = None
        self.filter = OneEuroFilter(options.landmark_filter) if options.smooth_landmarks else None
        self.labels = (HeadsSmoother(heads, options.attribute_tau, options.attribute_margin)
                       if options.smooth_attributes and heads else None)
        self.score = 0.0        # the score of the detection that last confirmed it
        self.unconfirmed = 0    # detections in a row that missed it
        self.confirmed = True   # a detection confirmed it on this frame (or created it)
        self.low = 0            # frames in a row under lost_score
        self.age = 0
        self.match = 1.0        # appearance match of the last crop with the reference
        self.ref: np.ndarray | None = None  # reference crop, zero-mean, unit norm (size*size,)
        self.velocity = np.zeros(2)  # of the landmarks' centroid, pixels per second (smoothed)
        self.t: float | None = None  # time of the last frame, seconds
        # log of the detector's square side over the landmarks' own square side on the
        # track's first frame; see TrackingOptions.anchor
        self.anchor: float | None = None
        # the box of the detection that last confirmed it, in units of that detection's square
        # (centre offset and size over the side): how the detector frames this face
        self.box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


class FaceTracker:
    """Follows faces across the frames of one stream for a FaceAnalyzer (VIDEO mode).

    detect: frame -> detections, best first (the analyzer's detector, score filter and cap).
    core: the analyzer's `InferenceCore`, the same crop -> run -> decode path as IMAGE mode.
    max_faces: at most this many faces tracked at once (None: all).
    """

    def __init__(self, detect: Callable[[np.ndarray], list[Detection]], core: InferenceCore, spec: ModelSpec,
                 options: TrackingOptions | None = None, max_faces: int | None = None):
        self._detect = detect
        self._core = core
        self.options = options or TrackingOptions()
        self.max_faces = max_faces
        self.spec = spec
        self.policy = self.spec.crop
        if self.policy.mode != "landmarks":
            raise SpecError("video mode follows faces by their landmarks; this model was trained on whole images "
                            "(crop mode 'image'), so it cannot track: use IMAGE mode")
        self._landmark_head = next((h.name for h in self.spec.heads if h.kind == REGRESSION), None)
        if self._landmark_head is None:
            raise SpecError("video mode follows faces by their landmarks; this model has no landmark head")
        self._class_heads = [h for h in self.spec.heads if h.kind != REGRESSION]
        self._landmark_names = tuple(self.spec.landmark_names)
        self._tracks: list[_Track] = []
        self._next_id = 1
        self._frame = 0
        self._since_detect = 0
        self.detections = 0     # frames the detector ran on

    # --- per frame -----------------------------------------------------------------------
    def process(self, frame: np.ndarray, timestamp_ms: float) -> FrameResult:
        t0 = time.perf_counter()
        image = _check_frame(frame)
        t_s = timestamp_ms / 1000.0
        stages = {"detect": 0.0, "crop": 0.0, "infer": 0.0}
        h, w = image.shape[:2]
        found: list[Detection] = []

        if detect := (not self._tracks or self._since_detect + 1 >= self.options.detect_every):
            td = time.perf_counter()
            found = self._detect(image if image.ndim == 2 or image.shape[2] == 3
                                 else cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
            stages["detect"] = 1000 * (time.perf_counter() - td)
            self.detections += 1
            self._since_detect = 0
        else:
            self._since_detect += 1
        # every track is framed by its own last landmarks, moved on by their velocity
        squares = [self._square(self._predict(t, t_s), t.anchor) for t in self._tracks]

        new = self._match(found, squares) if detect else []
        # tracks the detector keeps missing go; new faces come in (up to max_faces)
        alive = [i for i, t in enumerate(self._tracks) if t.unconfirmed < self.options.max_unconfirmed]
        tracks = [self._tracks[i] for i in alive]
        squares = [squares[i] for i in alive]
        if self.max_faces is not None:
            new = new[: max(self.max_faces - len(tracks), 0)]
        n_old = len(tracks)
        for d in new:
            tr = _Track(self._next_id, self.options, {hd.name: len(hd.labels) for hd in self._class_heads})
            self._next_id += 1
            tr.score = float(d.score)
            squares.append(crop_square(d, self.policy))
            tr.box = box_in_square(d.box, squares[-1])
            tracks.append(tr)

        faces: list[Face] = []
        keep: list[_Track] = []
        if tracks:
            points, probs, crops = self._run(image, squares, stages)
            seen = list(squares)  # the square the model saw last, per face
            if self.options.anchor:
                # a new track's anchor compares the detector's square (its crop on this frame)
                # with the square of the landmarks the model gave on that very crop: on the
                # next frames, the landmarks' square scaled by it is the size the detector
                # would have given
                for i in range(n_old, len(tracks)):
                    tracks[i].anchor = size_anchor(squares[i], points[i], self.policy)
            for _ in range(self.options.passes - 1):
                seen = [self._square(p, t.anchor) for p, t in zip(points, tracks)]
                points, probs, crops = self._run(image, seen, stages)
            if self.options.refine_new and len(tracks) > n_old:
                # new faces once more, framed by the landmarks of the first pass
                seen[n_old:] = [self._square(points[i], tracks[i].anchor) for i in range(n_old, len(tracks))]
                again = self._run(image, seen[n_old:], stages)
                points[n_old:], crops[n_old:] = again[0], again[2]
                for name in probs:
                    probs[name][n_old:] = again[1][name]
            points, refine_crop_ms, refine_ms = self._core.refine(image, points)
            stages["crop"] += refine_crop_ms
            stages["infer"] += refine_ms
            opts = self.options
            for i, tr in enumerate(tracks):
                pts = points[i]
                x = crops[i]
                if tr.ref is None or tr.confirmed:
                    tr.ref = x.copy()
                    tr.match = 1.0
                else:
                    tr.match = float(x @ tr.ref)
                    if tr.match > opts.lost_score + 0.2 and opts.reference_rate > 0:
                        tr.ref += opts.reference_rate * (x - tr.ref)
                        tr.ref /= max(math.sqrt(float(tr.ref.dot(tr.ref))), 1e-9)  # np.linalg.norm's arithmetic
                tr.confirmed = False
                tr.low = tr.low + 1 if tr.match < opts.lost_score else 0
                # canonical_square's centre and side, without its call cost (paid per face and frame)
                c = pts.sum(axis=0) / len(pts)
                d = pts - c
                side = self.policy.scale * math.sqrt(float(np.vdot(d, d)) / len(pts))
                if (tr.low >= opts.lost_frames or not (0 <= c[0] < w and 0 <= c[1] < h)
                        or side < opts.min_side):
                    continue
                if tr.points is not None and tr.t is not None and t_s > tr.t:
                    v = (c - tr.points.sum(axis=0) / len(tr.points)) / (t_s - tr.t)
                    tr.velocity += 0.5 * (v - tr.velocity)
                tr.points = pts
                tr.t = t_s
                tr.age += 1
                keep.append(tr)
                faces.append(self._face(tr, pts, side, {k: v[i] for k, v in probs.items()}, t_s, seen[i]))
        self._tracks = _drop_duplicates(keep, faces)
        self._frame += 1
        faces = [f for f in faces if any(t.id == f.id for t in self._tracks)]
        return FrameResult(faces, timestamp_ms, 1000 * (time.perf_counter() - t0), stages)

    def reset(self) -> None:
        """Forget every face (a new stream); ids keep counting up."""
        self._tracks = []
        self._since_detect = 0

    @property
    def tracks(self) -> int:
        return len(self._tracks)

    # --- pieces --------------------------------------------------------------------------
    def _square(self, points: np.ndarray, anchor: float | None = None) -> Square:
        return landmark_square(points, self.policy, self.options.align, self.options.align_free,
                               anchor if self.options.anchor else None)

    def _predict(self, tr: "_Track", t_s: float) -> np.ndarray:
        base = tr.smooth if (self.options.crop_from == "smoothed" and tr.smooth is not None) else tr.points
        if not self.options.predict or tr.t is None:
            return base
        return base + tr.velocity * min(t_s - tr.t, 0.2)

    def _match(self, found: list[Detection], squares: list[Square]) -> list[Detection]:
        """Confirm the tracks a detection overlaps (best detections first, one each); count a
        miss for the others; return the detections of faces not tracked yet."""
        if not self._tracks:
            return list(found)
        for tr in self._tracks:
            tr.unconfirmed += 1
        if not found:
            return []
        det_sq = [crop_square(d, self.policy) for d in found]
        iou, _ = box_overlap(np.array([s.box() for s in det_sq]), np.array([s.box() for s in squares]))
        new, taken = [], set()
        for di in sorted(range(len(found)), key=lambda k: -found[k].score):
            free = [j for j in range(len(squares)) if j not in taken]
            j = max(free, key=lambda k: iou[di, k]) if free else -1
            if j >= 0 and iou[di, j] >= self.options.match_iou:
                taken.add(j)
                self._tracks[j].unconfirmed = 0
                self._tracks[j].confirmed = True
                self._tracks[j].score = float(found[di].score)
                self._tracks[j].box = box_in_square(found[di].box, det_sq[di])
            elif iou[di].max() < self.options.match_iou:
                new.append(found[di])   # overlapping no track at all: a new face
        return new

    def _run(self, image: np.ndarray, squares: list[Square], stages: dict):
        """The inference core on every square: (landmarks (N, K, 2) image pixels, {head:
        probabilities (N, C)}, crops (N, size*size) zero-mean and unit-norm, for the
        appearance match)."""
        out = self._core(image, squares)
        stages["crop"] += out.crop_ms
        stages["infer"] += out.infer_ms
        return out.points, out.probabilities, out.crops

    def _face(self, tr: _Track, points: np.ndarray, side: float, probs: dict[str, np.ndarray], t_s: float,
              square: Square) -> Face:
        shown = tr.filter(points, t_s, scale=side) if tr.filter is not None else points
        tr.smooth = shown
        if tr.labels is not None:
            steady = tr.labels.update(probs, t_s)  # {head: (shown class, averaged probabilities)}
            attrs = {hd.name: Classification(hd.name, hd.labels, steady[hd.name][1], steady[hd.name][0])
                     for hd in self._class_heads}
        else:
            attrs = {hd.name: Classification.of(hd, probs[hd.name]) for hd in self._class_heads}
        # the box the detector would give for the square the model saw (on a new face's
        # first frame with no second crop, exactly the detection's box)
        ox, oy, bw, bh = tr.box
        w, h = bw * square.side, bh * square.side
        box = (square.cx + ox * square.side - w / 2, square.cy + oy * square.side - h / 2, w, h)
        return Face(box=box, score=tr.score, square=square, landmarks=np.asarray(shown),
                    landmark_names=self._landmark_names, attributes=attrs, id=tr.id)


def _drop_duplicates(tracks: list["_Track"], faces: list[Face], iou: float = 0.5) -> list["_Track"]:
    """Two tracks that ended up on one face (a detection beside a drifting track): keep the
    older one."""
    if len(tracks) < 2:
        return tracks
    squares = np.array([f.square.box() for f in faces])
    ov = box_overlap(squares, squares)[0].tolist()
    drop = set()
    order = sorted(range(len(tracks)), key=lambda i: tracks[i].id)
    for a, i in enumerate(order):
        if i in drop:
            continue
        for j in order[a + 1:]:
            if ov[i][j] > iou:
                drop.add(j)
    return [t for k, t in enumerate(tracks) if k not in drop]


def box_in_square(box, square: Square) -> tuple[float, float, float, float]:
    """A detector's x, y, w, h box relative to a square: (centre offset x, y, width, height)
    over the square's side. `FaceTracker` keeps it per face, so that a face followed by its
    landmarks still reports the box its detector would draw."""
    x, y, w, h = (float(v) for v in box)
    side = square.side
    return ((x + w / 2 - square.cx) / side, (y + h / 2 - square.cy) / side, w / side, h / side)


def _check_frame(frame) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
        from facemtl.runtime.preprocess import ImageError

        raise ImageError(f"frame: expected a uint8 numpy array (grey, BGR or BGRA), got "
                         f"{getattr(frame, 'dtype', type(frame).__name__)}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))) or min(frame.shape[:2]) < 2:
        from facemtl.runtime.preprocess import ImageError

        raise ImageError(f"frame: expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {frame.shape}")
    return frame
