"""`facemtl predict`: JSON lines per image, folders, unreadable files, wrong models, exit codes,
and multi-face frames of real MTFL faces."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from facemtl.runtime.calibration import read_landmark_file
from facemtl.runtime.cli import main
from facemtl.runtime.preprocess import canonical_square
from facemtl.runtime.spec import CropPolicy
from runtime_models import ROOT, write_constant_onnx


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_constant_onnx(tmp_path_factory.mktemp("model") / "model_fp32.onnx")


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a_colour.jpg"), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "b_grey.png"), rng.integers(0, 256, (50, 50), dtype=np.uint8))
    cv2.imwrite(str(d / "sub" / "c_bgra.png"), rng.integers(0, 256, (40, 30, 4), dtype=np.uint8))
    cv2.imwrite(str(d / "sub" / "d_16bit.png"), rng.integers(0, 65535, (30, 30), dtype=np.uint16))
    (d / "notes.txt").write_text("not an image, and not named like one: skipped in a folder")
    return d


def read_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def check_face(face: dict):
    assert set(face) == {"box", "score", "square", "landmarks", "attributes"}
    assert len(face["box"]) == 4 and 0 <= face["score"] <= 1
    assert np.array(face["landmarks"]).shape == (5, 2)
    assert set(face["attributes"]) == {"gender", "smile", "glasses", "pose"}
    for a in face["attributes"].values():
        assert set(a) == {"label", "score", "scores"} and isinstance(a["label"], str) and 0 < a["score"] <= 1
        assert a["scores"][a["label"]] == a["score"] == max(a["scores"].values())


def test_predict_folder_to_stdout(model, images, capsys):
    rc = main(["predict", "--model", str(model), "--detector", "none", str(images)])
    out = read_lines(capsys.readouterr().out)
    assert rc == 0
    names = [r["image"].split("/")[-1] for r in out]
    assert names == ["a_colour.jpg", "b_grey.png", "c_bgra.png", "d_16bit.png"]
    for r, (h, w) in zip(out, [(60, 80), (50, 50), (40, 30), (30, 30)]):
        assert set(r) == {"image", "faces"} and len(r["faces"]) == 1
        check_face(r["faces"][0])
        assert r["faces"][0]["box"] == [0.0, 0.0, float(w), float(h)]  # pixels of the input image
        assert r["faces"][0]["attributes"]["gender"]["label"] == "female"


def test_flip_average_option(model, images, capsys):
    """Flip averaging (on by default, --no-flip-average off) reaches the analyzer: the
    constant model's pose logits 0..4 average with their mirror image to a five-way tie."""
    for flag, score in ((["--no-flip-average"], None), (["--flip-average"], 0.2), ([], 0.2)):
        assert main(["predict", "--model", str(model), "--detector", "none", *flag, str(images / "b_grey.png")]) == 0
        pose = read_lines(capsys.readouterr().out)[0]["faces"][0]["attributes"]["pose"]
        if score is None:
            assert pose["label"] == "right_profile" and pose["score"] > 0.3
        else:
            assert pose["score"] == pytest.approx(score, abs=1e-3)


def test_unreadable_images_are_reported_and_the_run_goes_on(model, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (images / "empty.png").write_bytes(b"")
    out_file = tmp_path / "out.jsonl"
    rc = main(["predict", "-m", str(model), "-d", "none", "--out", str(out_file),
               str(images / "broken.jpg"), str(tmp_path / "missing.jpg"), str(images / "notes.txt"), str(images)])
    assert rc == 1
    assert capsys.readouterr().out == ""
    out = read_lines(out_file.read_text())
    by_name = {}
    for r in out:
        by_name.setdefault(r["image"].split("/")[-1], []).append(r)
    assert "cannot decode" in by_name["broken.jpg"][0]["error"] and set(by_name["broken.jpg"][0]) == {"image", "error"}
    assert "no such file" in by_name["missing.jpg"][0]["error"]
    assert "cannot decode" in by_name["notes.txt"][0]["error"]  # named explicitly: tried, fails
    assert "empty file" in by_name["empty.png"][0]["error"]
    assert len(by_name["a_colour.jpg"][0]["faces"]) == 1  # the images after the bad ones still ran


class _SlowFirst:
    """A detector whose first images take longest: parallel workers finish out of order."""

    def __init__(self, inner):
        import threading

        self.inner, self.lock, self.n = inner, threading.Lock(), 0

    def __call__(self, *a, **k):
        import time

        with self.lock:
            self.n += 1
            delay = max(0.0, 0.05 * (6 - self.n))
        time.sleep(delay)
        return self.inner(*a, **k)


def test_parallel_workers_keep_input_order_and_errors(model, tmp_path, capsys, monkeypatch):
    """Several workers: one line per image, in input order, errors in their place, exit 1,
    and the same lines as one worker (the first images are made slowest, so they finish last)."""
    from facemtl.runtime import commands

    rng = np.random.default_rng(1)
    d = tmp_path / "many"
    d.mkdir()
    for i in range(14):
        h, w = 40 + 3 * i, 50 + 2 * i
        cv2.imwrite(str(d / f"img_{i:02d}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (d / "img_05.png").write_bytes(b"\x89PNG broken")
    (d / "img_09.png").write_bytes(b"")
    runs = {}
    for workers in ("1", "3"):
        monkeypatch.setattr(commands, "read_image", _SlowFirst(commands.read_image))
        rc = main(["predict", "-m", str(model), "-d", "none", "--workers", workers, str(d)])
        assert rc == 1
        captured = capsys.readouterr()
        runs[workers] = read_lines(captured.out)
        assert f"{workers} worker(s)" in captured.err and "14 image(s), 12 face(s), 2 failed" in captured.err
    out = runs["3"]
    assert [r["image"].split("/")[-1] for r in out] == [f"img_{i:02d}.png" for i in range(14)]
    assert "error" in out[5] and "error" in out[9]
    for i, r in enumerate(out):
        if i not in (5, 9):
            h, w = 40 + 3 * i, 50 + 2 * i
            assert r["faces"][0]["box"] == [0.0, 0.0, float(w), float(h)]
    assert out == runs["1"]


def test_bad_worker_count(model, images, capsys):
    assert main(["predict", "-m", str(model), "-d", "none", "--workers", "0", str(images)]) == 2
    assert "--workers" in capsys.readouterr().err


def test_empty_folder_is_an_error_line(model, tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["predict", "-m", str(model), "-d", "none", str(tmp_path / "nothing")]) == 1
    (r,) = read_lines(capsys.readouterr().out)
    assert "no image files" in r["error"]


@pytest.mark.parametrize("args, match", [
    (["--model", "/nonexistent/m.tflite"], "no such file"),
    (["--detector", "sift"], "unknown detector"),
    (["--detector", "yunet:/nonexistent.onnx"], "does not exist"),
    (["--threads", "0"], "threads"),
])
def test_user_errors_exit_2_with_one_line(model, images, capsys, args, match):
    argv = ["predict", str(images)] + (args if "--model" in args else ["--model", str(model)] + args)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.startswith("facemtl predict: error:") and err.count("\n") == 1


def test_wrong_model_files(tmp_path, images, capsys):
    keras_dir = tmp_path / "run"
    keras_dir.mkdir()
    (keras_dir / "model.keras").write_bytes(b"PK\x03\x04")
    assert main(["predict", "--model", str(keras_dir), str(images)]) == 2
    assert "facemtl convert" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00" * 100)
    assert main(["predict", "--model", str(junk), str(images)]) == 2
    assert "junk.onnx" in capsys.readouterr().err


def test_predict_as_a_subprocess(model, images):
    r = subprocess.run([sys.executable, "-m", "facemtl", "predict", "--model", str(model), "--detector", "none",
                        str(images / "a_colour.jpg")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    (line,) = read_lines(r.stdout)
    assert line["image"].endswith("a_colour.jpg") and len(line["faces"]) == 1
    assert "1 image(s), 1 face(s), 0 failed" in r.stderr


# --- real faces -------------------------------------------------------------------------------
def multi_face_frame(mtfl_dir, indices, places):
    """LFW faces pasted side by side (face square ~110 px) into a 640x480 frame; one face is
    cut by the left border."""
    paths, pts = read_landmark_file(mtfl_dir / "training.txt", mtfl_dir)
    frame = np.full((480, 640, 3), 70, np.uint8)
    truths = []
    for i, (x, y) in zip(indices, places):
        img = cv2.imread(str(paths[i]))
        sq = canonical_square(pts[i], CropPolicy())
        k = 110 / sq.side
        img = cv2.resize(img, None, fx=k, fy=k)
        p = (pts[i] + 0.5) * k - 0.5
        half = int(0.75 * 110)
        cx, cy = int(round((sq.cx + 0.5) * k - 0.5)), int(round((sq.cy + 0.5) * k - 0.5))
        patch = img[cy - half:cy + half, cx - half:cx + half]
        x0, y0 = x - half, y - half
        sx0, sy0 = max(0, -x0), max(0, -y0)
        frame[y0 + sy0:y0 + patch.shape[0], x0 + sx0:x0 + patch.shape[1]] = patch[sy0:, sx0:]
        truths.append(p - [cx, cy] + [x, y])
    return frame, truths


@pytest.mark.data
@pytest.mark.parametrize("detector", ["haar", "yunet"])
def test_multi_face_frame_with_a_face_cut_by_the_border(mtfl_dir, yunet_path, model, tmp_path, capsys, detector):
    frame, truths = multi_face_frame(mtfl_dir, [0, 2, 10], [(150, 150), (420, 300), (40, 360)])
    cv2.imwrite(str(tmp_path / "group.png"), frame)
    det = f"yunet:{yunet_path}" if detector == "yunet" else "haar"
    assert main(["predict", "-m", str(model), "-d", det, str(tmp_path / "group.png")]) == 0
    (r,) = read_lines(capsys.readouterr().out)
    boxes = np.array([f["box"] for f in r["faces"]])
    # a sliding-window cascade cannot see a face whose box leaves the frame; YuNet can
    for t in truths if detector == "yunet" else truths[:2]:
        c = t.mean(axis=0)
        inside = (boxes[:, 0] < c[0]) & (c[0] < boxes[:, 0] + boxes[:, 2]) & (boxes[:, 1] < c[1]) & (c[1] < boxes[:, 1] + boxes[:, 3])
        assert inside.any(), f"no face found around {c}"
    if detector == "yunet":
        # the face cut by the border (its square starts at x = -15) is analysed, not dropped
        assert any(f["box"][0] < 5 for f in r["faces"])
