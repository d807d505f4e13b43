"""The public API (`import facemtl`) and the one inference core both running modes share."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

import facemtl
from facemtl import FaceAnalyzer, FaceAnalyzerOptions, RunningMode, TrackingOptions
from live_helpers import live_model
from runtime_models import ROOT


def test_public_names_resolve_and_errors_share_one_base():
    for name in facemtl.__all__:
        assert getattr(facemtl, name) is not None, name
    errors = [getattr(facemtl, n) for n in facemtl.__all__ if n.endswith("Error")]
    assert len(errors) >= 8
    assert all(issubclass(e, facemtl.FacemtlError) for e in errors)
    # one ModelFileError: the runtime's, training's and the package's are the same class
    from facemtl.runtime.artifact import ModelFileError as runtime_error
    from facemtl.train.model import ModelFileError as train_error

    assert runtime_error is train_error is facemtl.ModelFileError
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        facemtl.Nope  # noqa: B018


def test_options_are_checked_when_made_and_never_change():
    o = FaceAnalyzerOptions(running_mode="video")
    assert o.running_mode is RunningMode.VIDEO
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.max_faces = 3
    for bad in (dict(running_mode="live"), dict(max_faces=0), dict(min_detection_score=1.5), dict(num_threads=0),
                dict(model_path="m.tflite", model_buffer=b"x")):
        with pytest.raises(ValueError):
            FaceAnalyzerOptions(**bad)


def test_image_mode_detects_again_at_full_size_where_the_small_copy_finds_nothing():
    """IMAGE mode's default (run 51): a face too small for YuNet's 320 copy of a big frame is
    found by the full-size retry; VIDEO mode does not retry; both can be set."""
    image = _face_image()
    frame = np.full((1440, 1920, 3), 127, np.uint8)  # the face 1/8 of its size in a big grey frame
    small = cv2.resize(image, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    frame[700:700 + small.shape[0], 900:900 + small.shape[1]] = small
    assert FaceAnalyzerOptions().detection_retry_full is True
    assert FaceAnalyzerOptions(running_mode="video").detection_retry_full is False
    found = {}
    for retry in (False, True):
        with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(detection_retry_full=retry)) as a:
            found[retry] = a.analyze(frame).faces
    assert found[False] == [] and len(found[True]) == 1
    x, y, w, h = found[True][0].box
    assert 900 <= x + w / 2 <= 900 + small.shape[1] and 700 <= y + h / 2 <= 700 + small.shape[0]


def _face_image():
    """A real MTFL test face, the whole image being the face (detector "none")."""
    from conftest import MTFL

    if not (MTFL / "testing.txt").is_file():
        pytest.skip(f"MTFL data set not found at {MTFL}")
    rel = (MTFL / "testing.txt").read_text().split()[0].replace("\\", "/")
    image = cv2.imread(str(MTFL / rel))
    assert image is not None
    return image


def _image_and_video(model, image, flip: bool):
    """The same face through IMAGE mode and through VIDEO mode's first frame, with nothing
    in VIDEO mode that changes an answer on purpose (no smoothing, no second crop)."""
    common = dict(model_path=model, detector="none", flip_average=flip)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(passes=1, **common)) as a:
        still = a.analyze(image).faces
    tracking = TrackingOptions(refine_new=False, smooth_landmarks=False, smooth_attributes=False)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(running_mode="video", tracking=tracking,
                                                              **common)) as a:
        video = a.analyze_for_video(image, 0.0).faces
    assert len(still) == len(video) == 1
    return still[0], video[0]


@pytest.mark.parametrize("flip", [False, True])
def test_image_and_video_mode_give_the_same_answers_on_the_same_square(flip):
    model, image = live_model(), _face_image()
    still, video = _image_and_video(model, image, flip)
    assert still.square == video.square
    np.testing.assert_allclose(video.landmarks, still.landmarks, atol=1e-6)
    for head, c in still.attributes.items():
        np.testing.assert_allclose(video.attributes[head].probabilities, c.probabilities, atol=1e-6)
        assert video.attributes[head].top.category_name == c.top.category_name
    assert still.box == video.box  # a new face's box is its detection in both modes


def test_flip_averaging_changes_the_answers_in_both_modes():
    model, image = live_model(), _face_image()
    plain = _image_and_video(model, image, flip=False)
    flipped = _image_and_video(model, image, flip=True)
    for p, f in zip(plain, flipped):  # IMAGE, then VIDEO
        assert np.abs(p.landmarks - f.landmarks).max() > 0.01
        assert abs(p.attributes["pose"].top.score - f.attributes["pose"].top.score) > 1e-4


def test_demo_flip_average_changes_the_video_answers(tmp_path):
    pytest.importorskip("skimage", reason="the sample stream needs scikit-image")
    model = live_model()
    outs = []
    for extra in ([], ["--flip-average"]):
        out = tmp_path / f"frames{len(extra)}.jsonl"
        r = subprocess.run([sys.executable, "-m", "facemtl", "demo", "--model", str(model), "--detector", "none",
                            "--source", "sample", "--max-frames", "5", "--json", str(out), "--quiet", *extra],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append([json.loads(line) for line in out.read_text().splitlines()])
    plain, flipped = ([np.array(f["faces"][0]["landmarks"]) for f in o if f["faces"]] for o in outs)
    assert len(plain) == len(flipped) == 5
    assert max(np.abs(a - b).max() for a, b in zip(plain, flipped)) > 0.01


def test_every_class_with_its_score_and_landmark_names():
    model, image = live_model(), _face_image()
    with FaceAnalyzer.create_from_model_path(model, detector="none") as a:
        face = a.analyze(image).faces[0]
        names = a.landmark_names
    assert names == face.landmark_names and len(names) == len(face.landmarks) == 5
    np.testing.assert_array_equal(face.landmark(names[2]), face.landmarks[2])
    pose = face.attributes["pose"]
    assert [c.category_name for c in pose.categories] == list(a.spec.head("pose").labels)
    assert [c.index for c in pose.categories] == list(range(5))
    assert pose.probabilities.sum() == pytest.approx(1.0, abs=1e-4)
    assert pose.top.index == int(np.argmax(pose.probabilities))
    assert pose[pose.top.category_name] == pose.top
    assert face.attributes["smile"]["not_smiling"].display_name == "not smiling"
    record = face.to_dict()
    assert set(record["attributes"]["pose"]["scores"]) == set(a.spec.head("pose").labels)


def test_a_model_loads_from_bytes_as_from_its_path():
    model, image = live_model(), _face_image()
    with FaceAnalyzer.create_from_model_path(model, detector="none") as a:
        by_path = a.analyze(image).faces[0]
    with FaceAnalyzer.create_from_buffer(model.read_bytes(), detector="none") as a:
        by_bytes = a.analyze(image).faces[0]
    np.testing.assert_allclose(by_bytes.landmarks, by_path.landmarks, atol=1e-6)
    with pytest.raises(facemtl.ModelFileError, match="model buffer"):
        FaceAnalyzer.create_from_buffer(b"\0" * 64, detector="none")


def test_a_tracked_face_keeps_its_detector_box_framing():
    """Between detections, `box` is the last detection's box moved and scaled with the square
    the model saw: on the first frame it is the detection itself."""
    from facemtl.runtime.live.tracking import box_in_square
    from facemtl.runtime.preprocess import Square

    box = (100.0, 50.0, 60.0, 72.0)
    sq = Square(128.0, 90.0, 52.0)
    ox, oy, w, h = box_in_square(box, sq)
    np.testing.assert_allclose([sq.cx + ox * sq.side - w * sq.side / 2, sq.cy + oy * sq.side - h * sq.side / 2,
                                w * sq.side, h * sq.side], box)
    model, image = live_model(), _face_image()
    tracking = TrackingOptions(refine_new=False, detect_every=1000)
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=model, detector="none", running_mode="video",
                                                              tracking=tracking)) as a:
        first, second = (a.analyze_for_video(image, t).faces[0] for t in (0.0, 33.0))
    h, w = image.shape[:2]
    np.testing.assert_allclose(first.box, (0, 0, w, h), atol=1e-6)  # detector "none": the whole image
    assert second.square != first.square  # framed by its landmarks now
    ratio = second.square.side / first.square.side
    assert second.box[2] == pytest.approx(first.box[2] * ratio, rel=1e-6)


def test_readme_python_example_runs(tmp_path):
    """The README's first Python example, as written, on the packaged model, in a folder
    holding the photo.jpg it reads."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n") + len("```python\n")
    code = text[start:text.index("```", start)]
    cv2.imwrite(str(tmp_path / "photo.jpg"), _face_image())
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "the example prints what it found"


def test_a_second_thread_inside_one_analyzer_is_refused():
    """While one thread is inside `analyze` (held here in its detector), a second call from
    another thread is a ConcurrentUseError, not a silently mixed answer."""
    import threading

    from facemtl.runtime.detectors import Detection, Detector

    inside, release = threading.Event(), threading.Event()

    class Held(Detector):
        name = "none"

        def _detect(self, image):
            inside.set()
            release.wait(10)
            h, w = image.shape[:2]
            return [Detection((0.0, 0.0, float(w), float(h)), 1.0, "none")]

    image = _face_image()
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=live_model(), detector=Held())) as a:
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", a.analyze(image)))
        t.start()
        assert inside.wait(10)
        with pytest.raises(facemtl.ConcurrentUseError, match="another thread"):
            a.analyze(image)
        release.set()
        t.join(10)
        assert len(first["r"].faces) == 1
        assert len(a.analyze(image).faces) == 1  # free again once the first call returned


def test_threads_hammering_one_analyzer_never_get_a_wrong_answer():
    """Four threads on one analyzer: every call either returns exactly the single-thread
    answer for its image or is refused; with one analyzer per thread, all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    image = _face_image()
    images = [image, cv2.flip(image, 1), cv2.resize(image, None, fx=1.3, fy=1.3), image[::-1].copy()]
    with FaceAnalyzer.create_from_model_path(live_model(), detector="none") as a:
        truth = [a.analyze(im).faces[0].landmarks for im in images]

        def call(i):
            try:
                return i, a.analyze(images[i % 4]).faces[0].landmarks
            except facemtl.ConcurrentUseError:
                return i, None

        with ThreadPoolExecutor(4) as ex:
            results = list(ex.map(call, range(200)))
    answered = [(i, r) for i, r in results if r is not None]
    assert answered
    for i, r in answered:
        np.testing.assert_allclose(r, truth[i % 4], atol=1e-6)
