"""Shared fixtures: the real MTFL folder (skipped where absent) and a small MTFL-like folder
that the tests make, with the quirks of the real files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MTFL = Path(os.environ.get("FACEMTL_DATA", ROOT.parent / "shared" / "data" / "mtfl"))
YUNET = ROOT.parent / "shared" / "models" / "face_detection_yunet_2026may.onnx"


@pytest.fixture(scope="session")
def mtfl_dir() -> Path:
    if not (MTFL / "training.txt").is_file():
        pytest.skip(f"MTFL data set not found at {MTFL} (set FACEMTL_DATA or place it at ../shared/data/mtfl)")
    return MTFL


@pytest.fixture(scope="session")
def yunet_path() -> Path:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found at {YUNET}")
    return YUNET


# A frontal face template in a 64x64 image: eyes, nose, mouth corners (MTFL order).
TEMPLATE = np.array([[22.0, 26.0], [42.0, 26.0], [32.0, 36.0], [24.0, 45.0], [40.0, 45.0]])


def synthetic_face(rng: np.random.Generator, size: int = 64):
    """A grey image with a drawn face whose landmarks and attributes are known.

    The attributes change what is drawn (glasses: a bar over the eyes; smile: mouth curve;
    gender: hair; pose: the nose offset), so a tiny model can learn something real.
    """
    img = np.full((size, size), 90, np.uint8) + rng.integers(0, 20, (size, size), dtype=np.uint8)
    shift = rng.uniform(-3, 3, 2)
    pose = int(rng.integers(0, 5))
    pts = TEMPLATE.copy() + shift
    pts[2, 0] += (pose - 2) * 3.0
    gender, smile, glasses = (int(v) for v in rng.integers(0, 2, 3))
    cv2.ellipse(img, (int(32 + shift[0]), int(34 + shift[1])), (20, 25), 0, 0, 360, 170, -1)
    if gender == 1:
        cv2.rectangle(img, (8, 4), (56, 14), 40, -1)
    for x, y in pts[:2]:
        cv2.circle(img, (int(round(x)), int(round(y))), 3, 20, -1)
    if glasses == 0:
        cv2.line(img, (int(pts[0, 0]) - 5, int(pts[0, 1])), (int(pts[1, 0]) + 5, int(pts[1, 1])), 0, 1)
    cv2.circle(img, (int(round(pts[2, 0])), int(round(pts[2, 1]))), 2, 60, -1)
    mid_y = int(round(pts[3, 1] + (3 if smile == 0 else -2)))
    cv2.line(img, (int(round(pts[3, 0])), int(round(pts[3, 1]))), (32, mid_y), 30, 2)
    cv2.line(img, (32, mid_y), (int(round(pts[4, 0])), int(round(pts[4, 1]))), 30, 2)
    return img, pts, (gender, smile, glasses, pose)


def write_mtfl(root: Path, n_train: int = 160, n_test: int = 40, seed: int = 0) -> Path:
    """An MTFL-shaped folder: Windows separators in training.txt, leading spaces, CRLF,
    a trailing blank line, JPEG images in lfw_5590/ and AFLW/."""
    rng = np.random.default_rng(seed)
    for sub in ("lfw_5590", "AFLW"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    def line(rel, pts, attrs, sep):
        coords = " ".join(f"{v + 1:.6f}" for v in list(pts[:, 0]) + list(pts[:, 1]))  # 1-based, as MTFL
        return f"{rel.replace('/', sep)} {coords} " + " ".join(str(a + 1) for a in attrs)

    for name, sub, n, sep in (("training.txt", "lfw_5590", n_train, "\\"), ("testing.txt", "AFLW", n_test, "/")):
        lines = []
        for i in range(n):
            img, pts, attrs = synthetic_face(rng)
            rel = f"{sub}/face_{i:04d}.jpg"
            cv2.imwrite(str(root / rel), img)
            lines.append(line(rel, pts, attrs, sep))
        (root / name).write_bytes(("\r\n ".join(lines) + "\r\n\r\n").encode())
    return root


@pytest.fixture(scope="session")
def tiny_mtfl(tmp_path_factory) -> Path:
    return write_mtfl(tmp_path_factory.mktemp("mtfl"))


@pytest.fixture(scope="session")
def pi_python(tmp_path_factory) -> Path:
    """A Python with facemtl (this checkout's wheel) and the Raspberry Pi profile (numpy 1,
    OpenCV 4.x, tflite-runtime; no TensorFlow), built once per session."""
    from venvs import PI_PROFILE, build_wheel, make_venv

    work = tmp_path_factory.mktemp("pi-profile")
    return make_venv(work / "venv", [str(build_wheel(work)), *PI_PROFILE], "the Pi profile")

