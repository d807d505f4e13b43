"""FaceAnalyzer: options, factories, running modes, images of every kind, one batch per
frame, faces cut by the border, model resolution, and landmarks on real MTFL faces."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from facemtl.runtime import analyzer as A
from facemtl.runtime.analyzer import FaceAnalyzer, FaceAnalyzerOptions, RunningMode

# one model pass, no mirror: the exact geometry of detection -> square -> crop -> pixels
SINGLE = FaceAnalyzerOptions(passes=1, flip_average=False)
from facemtl.runtime.artifact import ModelFileError
from facemtl.runtime.backends import load_backend
from facemtl.runtime.detectors import Detection, Detector, WholeImage, calibrated_square
from facemtl.runtime.preprocess import ImageError, crop_matrix, to_image
from facemtl.runtime.results import FrameResult
from facemtl.runtime.spec import BoxCalibration, SpecError
from runtime_models import CALIBRATIONS, MEAN_SHAPE, calibrated_spec, trained_model, write_constant_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_constant_onnx(tmp_path_factory.mktemp("model") / "model_fp32.onnx")


class Boxes(Detector):
    """Hands back given boxes: the analyzer's part after detection, tested exactly."""

    name = "haar"

    def __init__(self, boxes, source="haar"):
        super().__init__(None)
        self.boxes, self.source = boxes, source

    def _detect(self, image):
        return [Detection(tuple(map(float, b)), 0.9 - 0.1 * i, self.source) for i, b in enumerate(self.boxes)]


class CountingBackend:
    """The real backend, counting its calls and batch sizes."""

    def __init__(self, backend):
        self.inner, self.calls = backend, []
        self.spec, self.path = backend.spec, backend.path

    def run(self, batch):
        self.calls.append(len(batch))
        return self.inner.run(batch)

    def close(self):
        self.inner.close()


def expected_landmarks(box, cal: BoxCalibration, policy=calibrated_spec().crop):
    sq = calibrated_square(Detection(tuple(map(float, box)), 1.0, "haar"), cal, policy)
    return to_image(MEAN_SHAPE.astype(np.float64), crop_matrix(sq))


# --- options and factories -------------------------------------------------------------------
def test_options_have_real_defaults():
    o = FaceAnalyzerOptions()
    assert o.detector == "yunet" and o.passes == 2 and o.flip_average is True and o.running_mode == RunningMode.IMAGE and o.num_threads == 1
    assert o.model_path is None and o.max_faces is None and o.detection_max_side == "auto"


def test_create_from_model_path_and_context_manager(model):
    with FaceAnalyzer.create_from_model_path(model, detector="none", passes=1, flip_average=False) as fa:
        r = fa.analyze(np.full((60, 60, 3), 100, np.uint8))
        assert isinstance(r, FrameResult) and len(r.faces) == 1
        face = r.faces[0]
        assert face.landmarks.shape == (5, 2)
        assert set(face.attributes) == {"gender", "smile", "glasses", "pose"}
        # the constant model's last class wins: female, not_smiling, no_glasses, right_profile
        assert face.attributes["pose"].top.category_name == "right_profile" and face.attributes["pose"].top.index == 4
        p = np.exp(np.linspace(0, 1, 5)) / np.exp(np.linspace(0, 1, 5)).sum()
        assert face.attributes["pose"].top.score == pytest.approx(p[-1], rel=1e-5)
        np.testing.assert_allclose(face.attributes["pose"].probabilities, p, rtol=1e-5)
        assert set(r.stages_ms) >= {"detect", "crop", "infer"} and r.latency_ms > 0
    with pytest.raises(ValueError, match="closed"):
        fa.analyze(np.zeros((60, 60), np.uint8))


@pytest.mark.parametrize("field, value, match", [
    ("max_faces", 0, "max_faces"), ("min_detection_score", 1.5, "min_detection_score"),
    ("num_threads", 0, "num_threads"), ("running_mode", "live", "running_mode"),
])
def test_bad_options(model, field, value, match):
    with pytest.raises(ValueError, match=match):
        FaceAnalyzer.create_from_options(FaceAnalyzerOptions(model_path=model, **{field: value}))


def test_a_detector_the_spec_has_no_calibration_for(tmp_path):
    spec = calibrated_spec()
    spec = spec.replace(crop=dataclasses.replace(spec.crop, calibrations={"none": CALIBRATIONS["none"]}))
    path = write_constant_onnx(tmp_path / "m.onnx", spec)
    with pytest.raises(SpecError, match="no crop calibration for detector 'haar'.*facemtl calibrate"):
        FaceAnalyzer.create_from_model_path(path, detector="haar")
    FaceAnalyzer.create_from_model_path(path, detector="none").close()


def test_calibrations_from_spec_json_beside_the_model(tmp_path):
    spec = calibrated_spec()
    bare = spec.replace(crop=dataclasses.replace(spec.crop, calibrations={}))
    path = write_constant_onnx(tmp_path / "model_fp32.onnx", bare)
    with pytest.raises(SpecError):
        FaceAnalyzer.create_from_model_path(path, detector="none")
    spec.save(tmp_path / "spec.json")  # what `facemtl calibrate MODEL_DIR` writes
    with FaceAnalyzer.create_from_model_path(tmp_path, detector="none") as fa:
        assert fa.spec.crop.calibrations["none"] == CALIBRATIONS["none"]
    # a spec.json of a different model is ignored
    other = spec.replace(heads=spec.heads[:2])
    other.save(tmp_path / "spec.json")
    with pytest.raises(SpecError):
        FaceAnalyzer.create_from_model_path(path, detector="none")


# --- running modes ---------------------------------------------------------------------------
def test_running_modes_refuse_the_wrong_method(model):
    img = np.zeros((50, 50), np.uint8)
    with FaceAnalyzer.create_from_model_path(model, detector="none") as fa:
        with pytest.raises(ValueError, match="running_mode=IMAGE.*analyze\\(image\\)"):
            fa.analyze_for_video(img, 0)
    with FaceAnalyzer.create_from_model_path(model, detector="none", running_mode=RunningMode.VIDEO) as fa:
        with pytest.raises(ValueError, match="running_mode=VIDEO.*analyze_for_video"):
            fa.analyze(img)
        assert fa.analyze_for_video(img, 0).timestamp_ms == 0
        assert fa.analyze_for_video(img, 33.3).timestamp_ms == 33.3
        with pytest.raises(ValueError, match="increase"):
            fa.analyze_for_video(img, 33.3)


def test_plain_haar_is_the_running_modes_setting(model):
    """IMAGE mode: the thorough Haar setting; VIDEO mode: the upright frontal cascade alone,
    since tracking follows faces between detections. A named setting is kept in either mode."""
    with FaceAnalyzer.create_from_model_path(model, detector="haar") as fa:
        assert fa._detector.profile and fa._detector.rotations and fa._detector.max_side == 288
    with FaceAnalyzer.create_from_model_path(model, detector="haar", running_mode=RunningMode.VIDEO) as fa:
        assert not fa._detector.profile and not fa._detector.rotations and fa._detector.max_side == 240
    with FaceAnalyzer.create_from_model_path(model, detector="haar:all", running_mode=RunningMode.VIDEO) as fa:
        assert fa._detector.profile and not fa._detector.fallback
    with FaceAnalyzer.create_from_model_path(model, running_mode=RunningMode.VIDEO, detection_max_side=320) as fa:
        assert fa._detector.max_side == 320


# --- images ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def constant(model):
    fa = FaceAnalyzer(load_backend(model), WholeImage(), SINGLE)
    yield fa
    fa.close()


@pytest.mark.parametrize("shape", [(48, 64), (48, 64, 1), (48, 64, 3), (48, 64, 4), (2, 2), (3, 500)])
def test_grey_bgr_bgra_and_tiny_images(constant, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, shape, dtype=np.uint8)
    faces = constant.analyze(img).faces
    assert len(faces) == 1 and np.isfinite(faces[0].landmarks).all()
    h, w = shape[:2]
    np.testing.assert_allclose(faces[0].landmarks, expected_landmarks((0, 0, w, h), CALIBRATIONS["none"]), atol=1e-3)


def test_bgra_alpha_is_ignored(constant):
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    bgra = np.dstack([bgr, np.zeros((40, 40), np.uint8)])
    a, b = constant.analyze(bgr).faces[0], constant.analyze(bgra).faces[0]
    np.testing.assert_allclose(a.landmarks, b.landmarks)


@pytest.mark.parametrize("junk, match", [
    (np.zeros((1, 40), np.uint8), "too small"), (np.zeros((40, 40), np.float32), "uint8"),
    (np.zeros((40, 40, 2), np.uint8), "shape"), ([[0, 1], [2, 3]], "numpy array"),
    (np.zeros((0, 0, 3), np.uint8), "too small|shape"), (None, "numpy array"),
])
def test_junk_images_are_clear_errors(constant, junk, match):
    with pytest.raises(ImageError, match=match):
        constant.analyze(junk)


# --- frames with several faces, faces at the border, no face --------------------------------------
def test_all_faces_of_a_frame_in_one_batch_in_detection_order(model):
    boxes = [(10, 10, 60, 60), (200, 40, 90, 90), (400, 300, 120, 120)]
    backend = CountingBackend(load_backend(model))
    with FaceAnalyzer(backend, Boxes(boxes), SINGLE) as fa:
        result = fa.analyze(np.full((480, 640, 3), 90, np.uint8))
    assert backend.calls == [3]
    assert [f.box for f in result.faces] == [tuple(map(float, b)) for b in boxes]
    assert [f.score for f in result.faces] == pytest.approx([0.9, 0.8, 0.7])
    for face, box in zip(result.faces, boxes):
        np.testing.assert_allclose(face.landmarks, expected_landmarks(box, CALIBRATIONS["haar"]), atol=1e-3)


def test_no_face_is_an_empty_list_and_no_model_call(model):
    backend = CountingBackend(load_backend(model))
    with FaceAnalyzer(backend, Boxes([]), SINGLE) as fa:
        result = fa.analyze(np.zeros((100, 100), np.uint8))
    assert result.faces == [] and backend.calls == [] and result.to_dict() == {"faces": []}


def test_faces_cut_by_the_border_are_padded_not_dropped(model):
    boxes = [(-40, 100, 100, 100), (580, -30, 100, 100), (-10, -10, 700, 500)]
    with FaceAnalyzer(load_backend(model), Boxes(boxes), SINGLE) as fa:
        faces = fa.analyze(np.full((480, 640), 120, np.uint8)).faces
    assert len(faces) == 3
    for face, box in zip(faces, boxes):
        np.testing.assert_allclose(face.landmarks, expected_landmarks(box, CALIBRATIONS["haar"]), atol=1e-3)
    assert faces[0].landmarks[:, 0].min() < 0  # a point outside the frame is reported, not clipped


def test_max_faces_and_min_score(model):
    boxes = [(0, 0, 50, 50), (100, 0, 50, 50), (200, 0, 50, 50)]
    opts = FaceAnalyzerOptions(max_faces=2, passes=1, flip_average=False)
    with FaceAnalyzer(load_backend(model), Boxes(boxes), opts) as fa:
        assert len(fa.analyze(np.zeros((100, 300), np.uint8)).faces) == 2
    opts = FaceAnalyzerOptions(min_detection_score=0.75, passes=1, flip_average=False)
    with FaceAnalyzer(load_backend(model), Boxes(boxes), opts) as fa:
        assert [f.score for f in fa.analyze(np.zeros((100, 300), np.uint8)).faces] == pytest.approx([0.9, 0.8])


# --- model resolution ----------------------------------------------------------------------------
def test_model_folder_resolution(tmp_path, model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="holds no .tflite or .onnx"):
        A.default_model_path(tmp_path / "empty")
    (tmp_path / "keras").mkdir()
    (tmp_path / "keras" / "model.keras").write_bytes(b"PK")
    with pytest.raises(SpecError, match="facemtl convert"):
        A.default_model_path(tmp_path / "keras")
    d = tmp_path / "conv"
    d.mkdir()
    (d / "model_fp32.onnx").write_bytes(model.read_bytes())
    assert A.default_model_path(d) == d / "model_fp32.onnx"


def test_packaged_default_model(monkeypatch, tmp_path, model):
    monkeypatch.setattr(A, "PACKAGED_MODELS", tmp_path)
    with pytest.raises(SpecError, match="no packaged model.*--model"):
        A.default_model_path()
    (tmp_path / "facemtl_fp32.onnx").write_bytes(model.read_bytes())
    assert A.default_model_path() == tmp_path / "facemtl_fp32.onnx"
    with FaceAnalyzer.create_from_options(FaceAnalyzerOptions(detector="none")) as fa:
        assert fa._backend.path == tmp_path / "facemtl_fp32.onnx"
    # the int8 TFLite file comes first where a TFLite interpreter is installed
    (tmp_path / "facemtl_int8.tflite").write_bytes(b"x")
    want = "facemtl_int8.tflite" if A._interpreter_installed(".tflite") else "facemtl_fp32.onnx"
    assert A.default_model_path().name == want


@pytest.mark.parametrize("content, name", [(b"", "empty.onnx"), (b"garbage" * 10, "junk.tflite"),
                                           (b"garbage", "junk.onnx"), (b"x", "model.pt")])
def test_wrong_model_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=name):
        FaceAnalyzer.create_from_model_path(path, detector="none")


def test_onnx_without_a_spec_is_refused(tmp_path):
    import onnx

    path = write_constant_onnx(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    del m.metadata_props[:]
    onnx.save(m, str(path))
    with pytest.raises(ModelFileError, match="no embedded facemtl spec"):
        FaceAnalyzer.create_from_model_path(path, detector="none")


# --- the trained model on real MTFL faces ----------------------------------------------------------
@pytest.mark.data
def test_trained_landmarks_land_on_the_true_features(mtfl_dir, yunet_path):
    """On real MTFL test images, the landmarks mapped back to image pixels lie on the
    annotated eyes, nose and mouth corners."""
    path = trained_model()
    if path is None:
        pytest.skip("no trained model yet (runtime/models/facemtl_int8.tflite or models/default/*.tflite|onnx)")
    from facemtl.runtime.calibration import read_landmark_file, spread_subset

    paths, pts = read_landmark_file(mtfl_dir / "testing.txt", mtfl_dir)
    keep = spread_subset(len(paths), 60)
    try:
        fa = FaceAnalyzer.create_from_model_path(path, detector=f"yunet:{yunet_path}")
    except SpecError as e:
        pytest.skip(f"{path}: {e}")
    with fa:
        nmes = []
        for i in keep:
            faces = fa.analyze(cv2.imread(str(paths[i]))).faces
            truth = pts[i]
            iod = np.linalg.norm(truth[1] - truth[0])
            best = min((np.linalg.norm(f.landmarks - truth, axis=1).mean() / iod for f in faces), default=np.inf)
            nmes.append(100 * best)
    nmes = np.array(nmes)
    assert np.isfinite(nmes).mean() > 0.95
    assert np.median(nmes[np.isfinite(nmes)]) < 9.0
