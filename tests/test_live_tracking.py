"""Video mode: following faces, losing and finding them again, smoothing, ids."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from live_helpers import canonical_shape, constant_model, live_model, rms_jitter, run_stream, video_analyzer
from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions, RunningMode
from facemtl.runtime.core import crop_angle
from facemtl.runtime.live.tracking import TrackingOptions, appearance_match
from facemtl.runtime.preprocess import Square, crop, crop_region, to_grey
from facemtl.runtime.spec import CropPolicy

needs_sample = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                  reason="the sample stream needs scikit-image (pip install scikit-image)")


def _sample(motion, **kw):
    from facemtl.runtime.live.sample import SampleStream

    return SampleStream(motion=motion, **kw)


# --- pieces that need no model ---------------------------------------------------------------
@pytest.mark.parametrize("square", [
    Square(320, 240, 150, 0.0), Square(320, 240, 150, 17.0), Square(40, 30, 140, -8.0),      # inside, turned, at a corner
    Square(620, 400, 180, 25.0), Square(-20, 200, 120, 0.0), Square(300, 470, 60, 90.0),     # cut by the edges
])
def test_crop_region_is_the_whole_frame_crop(square):
    rng = np.random.default_rng(3)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8), (0, 0), 2.0)
    want, m_want = crop(to_grey(frame), square, 40)
    got, m_got = crop_region(frame, square, 40)
    assert np.allclose(m_got, m_want)
    assert np.abs(got - want).max() < 1e-3


def test_appearance_match():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 40))
    assert appearance_match(a, a) == pytest.approx(1.0)
    assert appearance_match(a, 3 * a + 7) == pytest.approx(1.0)
    assert appearance_match(a, -a) == pytest.approx(-1.0)
    assert abs(appearance_match(a, rng.normal(size=(40, 40)))) < 0.1


def test_bad_tracking_options():
    with pytest.raises(ValueError, match="detect_every"):
        TrackingOptions(detect_every=0)
    with pytest.raises(ValueError, match="crop_from"):
        TrackingOptions(crop_from="detector")


def test_wrong_running_mode_is_a_clear_error(tmp_path):
    model = constant_model(tmp_path)
    frame = np.zeros((48, 64, 3), np.uint8)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=model, detector="none")) as a:
        with pytest.raises(ValueError, match="running_mode=VIDEO"):
            a.analyze_for_video(frame, 0)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=model, detector="none",
                                                              running_mode=RunningMode.VIDEO)) as a:
        with pytest.raises(ValueError, match="analyze_for_video"):
            a.analyze(frame)
        a.analyze_for_video(frame, 10)
        with pytest.raises(ValueError, match="increase"):
            a.analyze_for_video(frame, 10)


@needs_sample
def test_a_face_that_vanishes_is_dropped_by_the_appearance_check(tmp_path):
    """The constant model draws the same landmarks into any crop, so nothing in the landmarks
    says the face went: only the appearance check can (and the detector is not asked: the
    face vanishes between two detections)."""
    model = constant_model(tmp_path)
    still = _sample("still")
    empty = _sample("exit")
    gone = next(i for i in range(400) if len(empty.truth(i)) == 0)
    with video_analyzer(model, detect_every=1000) as a:
        for i in range(10):
            r = a.analyze_for_video(still.frame(i), still.timestamp_ms(i))
            assert len(r.faces) == 1 and r.faces[0].id == 1
        faces = []
        for k in range(4):
            i = 10 + k
            faces.append(len(a.analyze_for_video(empty.frame(gone + k), still.timestamp_ms(i)).faces))
    assert faces[-1] == 0 and faces.index(0) <= TrackingOptions().lost_frames


@needs_sample
def test_ids_are_stable_and_json_ready(tmp_path):
    model = constant_model(tmp_path)
    s = _sample("still")
    with video_analyzer(model, detect_every=5) as a:
        results, _ = run_stream(a, s, range(20))
    assert all(len(r.faces) == 1 for r in results)
    assert {r.faces[0].id for r in results} == {1}
    d = results[-1].faces[0].to_dict()
    assert d["id"] == 1 and set(d["attributes"]) == {"gender", "smile", "glasses", "pose"}
    assert results[3].stages_ms["detect"] == 0.0 and results[5].stages_ms["detect"] > 0.0


@needs_sample
def test_anchored_framing_keeps_the_detector_framing_of_a_biased_model(tmp_path):
    """A model whose landmarks always spread 20% wider than the crop's face (a framing bias):
    framed by its own landmarks alone, every crop is 1.2x the last and the track runs away;
    anchored to the detector's framing on the track's first frame, the crop stays put."""
    from runtime_models import write_constant_onnx

    pytest.importorskip("onnxruntime", reason="running the test ONNX model needs onnxruntime")
    model = write_constant_onnx(tmp_path / "wide.onnx", landmarks=canonical_shape(CropPolicy().scale / 1.2))
    s = _sample("still")
    sides = {}
    for anchor in (True, False):
        with video_analyzer(model, detect_every=1000, anchor=anchor, smooth_landmarks=False) as a:
            results, _ = run_stream(a, s, range(8))
        sides[anchor] = [r.faces[0].square.side if r.faces else float("nan") for r in results]
    on, off = np.array(sides[True]), np.array(sides[False])
    assert np.all(np.abs(on / on[0] - 1) < 0.02), on
    assert not np.all(off[1:5] / off[0] < 1.1), off  # unanchored: grows (or is lost)


# --- the trained model on the sample stream ----------------------------------------------------
def _nme(face, truth):
    from facemtl.runtime.live.sample import nme

    return nme(face.landmarks, truth)


@needs_sample
def test_tracking_follows_a_moving_face():
    model = live_model()
    s = _sample("moving")
    with video_analyzer(model) as a:
        results, truths = run_stream(a, s, range(150))
        detections = a._tracker.detections
    assert all(len(r.faces) == 1 for r in results)
    assert {r.faces[0].id for r in results} == {1}
    assert detections <= 150 // TrackingOptions().detect_every + 1
    errors = [_nme(r.faces[0], t) for r, t in zip(results, truths)]
    # the face moves up to 6 pixels a frame, scales 0.8-1.25x and rolls +-15 degrees
    assert np.mean(errors) < 8.0 and max(errors) < 15.0


@needs_sample
def test_tracking_recovers_after_the_face_leaves_and_returns():
    model = live_model()
    s = _sample("exit")
    inside = [len(t) > 0 and 0 <= t.mean(axis=0)[0] < 640 for t in (s.truth(i) for i in range(260))]
    visible = [len(s.truth(i)) > 0 for i in range(260)]
    left = inside.index(False)                        # its centre crosses the right edge
    gone = visible.index(False)                       # no pixel of it is on screen
    back = gone + visible[gone:].index(True)          # its edge is on screen again
    # the stream skips most of the empty stretch (timestamps still increase)
    with video_analyzer(model) as a:
        r1, _ = run_stream(a, s, range(0, gone + 6))
        r2, t2 = run_stream(a, s, range(back - 4, back + 75))
    assert all(len(r.faces) == 1 for r in r1[:left - 3])
    first_ids = {f.id for r in r1 for f in r.faces}
    assert {r.faces[0].id for r in r1[:left - 3]} == {1}
    assert all(len(r.faces) == 0 for r in r1[-6:])               # lost, not stuck on the background
    assert all(len(r.faces) == 0 for r in r2[:4])
    assert all(len(r.faces) == 1 for r in r2[-30:])              # found again
    assert r2[-1].faces[0].id not in first_ids                   # as a new face
    errors = [_nme(r.faces[0], t) for r, t in zip(r2[-30:], t2[-30:])]
    assert np.mean(errors) < 8.0


@needs_sample
def test_smoothing_cuts_jitter_on_a_still_face_without_lagging_a_moving_one():
    """Jitter: RMS standard deviation of the landmark coordinates over 100 frames of the
    unmoving sample face with sensor noise (sigma 2.5 grey levels). Lag: the time shift
    that best aligns the smoothed landmarks with the true ones on the moving stream; we
    state at most one frame (at 30 fps)."""
    model = live_model()
    still = _sample("still")
    jitter = {}
    for smooth in (False, True):
        with video_analyzer(model, smooth_landmarks=smooth) as a:
            results, _ = run_stream(a, still, range(120))
        jitter[smooth] = rms_jitter([r.faces[0].landmarks for r in results[20:]])
    assert jitter[True] * 3 <= jitter[False], jitter

    moving = _sample("moving")
    with video_analyzer(model) as a:
        results, _ = run_stream(a, moving, range(150))
    pts = np.array([r.faces[0].landmarks for r in results])

    def err(lag):  # mean distance to the truth `lag` frames earlier
        return np.mean([np.linalg.norm(pts[i] - moving.truth(i - lag), axis=1).mean() for i in range(20, 150)])

    lags = np.arange(-1.0, 3.01, 0.25)
    best = lags[int(np.argmin([err(k) for k in lags]))]
    assert best <= 1.0, best


def test_landmark_head_is_required(tmp_path):
    """A model without a landmark head cannot track: a clear error on the first frame."""
    from runtime_models import calibrated_spec, write_constant_onnx

    pytest.importorskip("onnx")
    spec = calibrated_spec().select(["gender", "smile"])
    model = write_constant_onnx(tmp_path / "nolandmarks.onnx", spec=spec)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=model, detector="none",
                                                              running_mode=RunningMode.VIDEO)) as a:
        from facemtl.runtime.spec import SpecError

        with pytest.raises(SpecError, match="landmark"):
            a.analyze_for_video(np.zeros((48, 64, 3), np.uint8), 0)


@needs_sample
def test_two_faces_keep_their_own_ids():
    model = live_model()
    left, right = _sample("still"), _sample("moving", seed=1)
    with video_analyzer(model) as a:
        sides = []
        for i in range(75):
            frame = np.concatenate([left.frame(i), right.frame(i)], axis=1)
            r = a.analyze_for_video(frame, left.timestamp_ms(i))
            if i >= 30:  # a detector that missed one face on the first frame finds it at the next detection
                assert len(r.faces) == 2
                sides.append({f.id: "left" if f.landmarks.mean(axis=0)[0] < 640 else "right" for f in r.faces})
    assert all(s == sides[0] for s in sides) and set(sides[0].values()) == {"left", "right"}


def _rolled(points: np.ndarray, degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = points.mean(axis=0)
    return (points - c) @ r.T + c


def test_crop_turns_only_by_the_roll_beyond_the_free_range():
    """Inside +-align_free the crop stays upright (the model's own roll bias must not feed
    back through the crop angle); beyond it, the face is left align_free off upright."""
    upright = np.array([[30.0, 40], [70, 40], [50, 60], [35, 80], [65, 80]])
    assert crop_angle(upright, 14.0) == 0.0
    assert crop_angle(_rolled(upright, 10.0), 14.0) == 0.0
    assert crop_angle(_rolled(upright, 30.0), 14.0) == pytest.approx(16.0)
    assert crop_angle(_rolled(upright, -30.0), 14.0) == pytest.approx(-16.0)
    assert crop_angle(_rolled(upright, 30.0), 0.0) == pytest.approx(30.0)  # full alignment
    with pytest.raises(ValueError, match="align_free"):
        TrackingOptions(align_free=-1.0)
