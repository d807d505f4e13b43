"""Fresh virtual environments with this checkout's wheel, for the tests that run facemtl as a
user installs it elsewhere (the Pi profile, OpenCV 5, a second interpreter). Slow: they
install from the package index; a machine that cannot reach it skips, saying so."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from runtime_models import ROOT

UNREACHABLE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
               "Connection refused", "ConnectTimeoutError", "ReadTimeoutError", "Failed to establish a new connection",
               "No route to host", "Max retries exceeded")

# The Raspberry Pi profile as docs/live.md installs it: numpy 1 (tflite-runtime's), OpenCV 4.x
# below 4.12 (later 4.x wheels need numpy 2), tflite-runtime 2.14
PI_PROFILE = ("numpy<2", "opencv-python-headless<4.12", "tflite-runtime==2.14.*")


def build_wheel(out: Path) -> Path:
    """This checkout's wheel, built into `out`."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("facemtl-*.whl")
    return wheel


def make_venv(env_dir: Path, packages: list[str], what: str) -> Path:
    """A fresh environment at `env_dir` with `packages` installed; its Python. Skips where the
    index is unreachable or tflite-runtime has no wheel for this Python; else a failed install
    fails the test, naming `what`."""
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--progress-bar", "off",
                        *packages], capture_output=True, text=True, timeout=1500)
    if r.returncode != 0:
        text = r.stdout + r.stderr
        if any(s in text for s in UNREACHABLE):
            pytest.skip("the package index is unreachable: " + text.strip().splitlines()[-1])
        if "No matching distribution found for tflite-runtime" in text:
            pytest.skip(f"tflite-runtime 2.14 has no wheel for Python {sys.version_info.major}."
                        f"{sys.version_info.minor} on this platform (Raspberry Pi OS bookworm has Python 3.11)")
        pytest.fail(f"installing {what} failed:\n" + text[-3000:])
    return py
