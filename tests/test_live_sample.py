"""The built-in sample stream: its true landmarks are where the face it draws has them."""

from __future__ import annotations

import importlib.util

import cv2
import numpy as np
import pytest

from facemtl.runtime.live.sample import ASTRONAUT_LANDMARKS, SampleStream, SampleUnavailable, astronaut_path, nme

pytestmark = pytest.mark.skipif(importlib.util.find_spec("skimage") is None,
                                reason="the sample stream needs scikit-image (pip install scikit-image)")


def _head_mask(shape):
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, (224, 112), (70, 90), 0, 0, 360, 255, -1)
    return mask


def _estimated_landmarks(frame: np.ndarray) -> np.ndarray:
    """Where the annotated points of astronaut.png are in `frame`, found from the pixels alone:
    ORB matches give a similarity, ECC refines it to a small fraction of a pixel."""
    ast = cv2.imread(str(astronaut_path()), cv2.IMREAD_GRAYSCALE)
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    mask = _head_mask(ast.shape)
    orb = cv2.ORB_create(1500)
    k1, d1 = orb.detectAndCompute(ast, mask)
    k2, d2 = orb.detectAndCompute(grey, None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d1, d2)
    src = np.float32([k1[m.queryIdx].pt for m in matches])
    dst = np.float32([k2[m.trainIdx].pt for m in matches])
    m, _ = cv2.estimateAffinePartial2D(src, dst, ransacReprojThreshold=2.0)
    # ECC: frame -> astronaut, with the head mask on the astronaut side
    w = cv2.invertAffineTransform(m).astype(np.float32)
    _, w = cv2.findTransformECC(grey.astype(np.float32), ast.astype(np.float32), w, cv2.MOTION_AFFINE,
                                (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 200, 1e-7), mask, 1)
    m = cv2.invertAffineTransform(w)
    return ASTRONAUT_LANDMARKS @ m[:, :2].T + m[:, 2]


@pytest.mark.parametrize("i", [0, 37, 120, 200])
def test_true_landmarks_match_what_the_stream_draws(i):
    s = SampleStream(motion="moving", noise=0.0)
    est = _estimated_landmarks(s.frame(i))
    assert np.abs(est - s.truth(i)).max() < 0.1  # pixels; a half-pixel convention slip would show


def test_frames_are_a_function_of_their_index():
    s = SampleStream(motion="moving")
    a, b = s.frame(17), s.frame(17)
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(s.frame(18), a)
    assert s.timestamp_ms(30) == pytest.approx(1000.0)


def test_still_stream_changes_only_by_sensor_noise():
    s = SampleStream(motion="still", noise=2.5)
    a, b = s.frame(0).astype(np.float64), s.frame(1).astype(np.float64)
    assert np.allclose(s.truth(0), s.truth(1))
    d = (a - b).std()
    assert 2.5 < d < 5.0  # two independent sigma-2.5 noises: sqrt(2) x 2.5, clipped a little


def test_exit_stream_leaves_and_comes_back():
    s = SampleStream(motion="exit", noise=0.0)
    visible = [len(s.truth(i)) > 0 for i in range(0, 240)]
    assert visible[0] and visible[-1] and not all(visible)
    gone = visible.index(False)
    # no face pixels while it is gone: the frame is the background
    assert np.array_equal(s.frame(gone + 5), s.frame(gone + 10))


def test_landmarks_follow_scale_and_roll():
    s = SampleStream(motion="moving", noise=0.0)
    for i in (0, 50, 100):
        p = s.pose(i)
        t = s.truth(i)
        iod0 = np.linalg.norm(ASTRONAUT_LANDMARKS[1] - ASTRONAUT_LANDMARKS[0])
        assert np.linalg.norm(t[1] - t[0]) == pytest.approx(p.scale * iod0)
        assert np.allclose(t.mean(axis=0), (p.cx, p.cy))


def test_nme_is_percent_of_the_interocular_distance():
    t = np.array([[0.0, 0.0], [100.0, 0.0], [50.0, 40.0], [20.0, 80.0], [80.0, 80.0]])
    assert nme(t, t) == 0.0
    assert nme(t + [3.0, 4.0], t) == pytest.approx(5.0)


def test_missing_scikit_image_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(SampleUnavailable, match="pip install scikit-image"):
        astronaut_path()


def test_unknown_motion():
    with pytest.raises(ValueError, match="still"):
        SampleStream(motion="dance")
