"""OpenCV 5: a fresh virtual environment with opencv-python-headless 5.x (no Haar cascades),
the wheel built from this checkout and LiteRT, running `facemtl predict` with the default
detector (the packaged YuNet) on real MTFL images and the sample demo. Slow: it installs
packages from the index (pip's cache makes reruns quicker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from venvs import build_wheel, make_venv

pytestmark = pytest.mark.slow


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def test_opencv5_runs_predict_and_the_sample_demo(tmp_path, mtfl_dir):
    wheel = build_wheel(tmp_path / "wheels")
    py = make_venv(tmp_path / "cv5", [f"{wheel}[litert,sample]", "opencv-python-headless>=5"], "facemtl with OpenCV 5")
    env_dir = py.parent.parent
    probe = run([py, "-c", "import cv2, json; print(json.dumps({'cv2': cv2.__version__}))"], cwd=tmp_path, timeout=120)
    assert json.loads(probe.stdout)["cv2"].startswith("5."), probe.stdout + probe.stderr

    lines = [ln.split() for ln in (mtfl_dir / "testing.txt").read_text().splitlines() if ln.strip()][:20]
    images = [mtfl_dir / ln[0].replace("\\", "/") for ln in lines]
    out = tmp_path / "faces.jsonl"
    r = run([env_dir / "bin" / "facemtl", "predict", "--out", out, *images], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [Path(x["image"]) for x in records] == images
    assert sum(bool(x["faces"]) for x in records) >= 19  # tight AFLW crops, found by the packaged YuNet

    r = run([env_dir / "bin" / "facemtl", "demo", "--source", "sample", "--max-frames", "30", "--json",
             tmp_path / "demo.jsonl"], cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    frames = [json.loads(x) for x in (tmp_path / "demo.jsonl").read_text().splitlines()]
    assert len(frames) == 30 and sum(len(f["faces"]) == 1 for f in frames) >= 28

    # Haar is the one detector 5.x lacks: a clear error, exit 2
    r = run([env_dir / "bin" / "facemtl", "predict", "--detector", "haar", images[0]], cwd=tmp_path, timeout=300)
    assert r.returncode == 2 and "has no Haar cascade files" in r.stderr and r.stderr.count("\n") == 1, r.stderr
