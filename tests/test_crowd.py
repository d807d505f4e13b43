"""The crowd stream (several real faces moving, entering and leaving) and IMAGE mode's passes."""

from __future__ import annotations

import numpy as np
import pytest

from facemtl import FaceAnalyzer, FaceAnalyzerOptions
from live_helpers import live_model


@pytest.fixture(scope="module")
def stream(mtfl_dir):
    from facemtl.runtime.live.crowd import CrowdStream

    return CrowdStream(mtfl_dir, frames=300)


def test_crowd_frames_are_replayable_and_faces_come_and_go(stream):
    np.testing.assert_array_equal(stream.frame(17), stream.frame(17))
    counts = [len(stream.truth(i)) for i in range(0, 300, 5)]
    assert max(counts) == stream.count == 8
    assert min(counts) < 8  # the outer faces leave the frame in turn
    for pts in stream.truth(0):
        assert pts.shape == (5, 2) and np.all(pts >= 0) and np.all(pts[:, 0] < 640) and np.all(pts[:, 1] < 480)


def test_match_faces_pairs_each_truth_with_its_own_face_once():
    from facemtl.runtime.live.crowd import match_faces

    a = np.array([[10, 10], [30, 10], [20, 20], [12, 30], [28, 30]], np.float64)
    b = a + (200, 0)
    assert match_faces([a, b], [b + 1, a - 1, a + 2]) == [1, 0]
    assert match_faces([a], [b]) == [None]
    assert match_faces([a, b], []) == [None, None]


def test_the_packaged_detector_and_model_find_the_crowd(stream):
    """Real YuNet and the real model on a real crowd frame: most faces found and their
    landmarks near the truth."""
    from facemtl.runtime.live.crowd import match_faces
    from facemtl.runtime.live.sample import nme

    truths = stream.truth(0)
    # full-size detection: the setting for many small faces (at the default 320 some are missed)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=live_model(), detection_max_side=None)) as a:
        faces = [f.landmarks for f in a.analyze(stream.frame(0)).faces]
    matched = [(t, faces[k]) for t, k in zip(truths, match_faces(truths, faces)) if k is not None]
    assert len(matched) >= len(truths) - 1
    assert np.median([nme(f, t) for t, f in matched]) < 12.0


def test_a_second_pass_crops_from_the_first_pass_landmarks(mtfl_dir):
    """passes=2: the square is the first answer's landmark square (upright by its roll, the
    detector's size kept); passes=3 crops once more from the second answer."""
    import cv2

    from facemtl.runtime.core import landmark_square, size_anchor
    from facemtl.runtime.mtfl import read_annotations

    ann = read_annotations(mtfl_dir / "testing.txt", mtfl_dir)
    image = cv2.imread(str(ann.root / ann.paths[3]))
    model = live_model()
    results = {}
    for passes in (1, 2, 3):
        with FaceAnalyzer.create_from_model_path(model, detector="none", passes=passes) as a:
            results[passes] = a.analyze(image).faces[0]
            policy = a.spec.crop
    one, two, three = results[1], results[2], results[3]
    anchor = size_anchor(one.square, one.landmarks, policy)
    expected = landmark_square(one.landmarks, policy, anchor=anchor)
    assert two.square == expected
    assert two.square.side == pytest.approx(one.square.side)  # the detector's size
    assert three.square == landmark_square(two.landmarks, policy, anchor=anchor)
    assert two.box == one.box  # the detection does not change
    assert not np.allclose(two.landmarks, one.landmarks)
    with pytest.raises(ValueError, match="passes"):
        FaceAnalyzerOptions(passes=4)
