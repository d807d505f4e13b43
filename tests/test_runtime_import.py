"""runtime/ must import and build its commands with TensorFlow and Keras unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = ("tensorflow", "keras", "tf_keras", "tf2onnx", "jax", "torch", "train", "convert")

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, Block())
    """
)


def run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    (tmp_path / "sitecustomize.py").write_text(BLOCK)
    env = {"PYTHONPATH": f"{tmp_path}{':'}{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_blocker_really_blocks(tmp_path):
    r = run_blocked("import tensorflow", tmp_path)
    assert r.returncode != 0 and "blocked for this test" in r.stderr


def test_runtime_imports_without_tensorflow(tmp_path):
    code = textwrap.dedent(
        """
        import sys
        import runtime, runtime.analyzer, runtime.detectors, runtime.commands, runtime.calibration
        import runtime.cli, runtime.results, runtime.preprocess, runtime.spec
        parser = runtime.cli.build_parser()
        names = set(parser._subparsers._group_actions[0].choices)
        assert {"predict", "calibrate", "demo"} <= names, names
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "train", "convert"))
        assert not bad, bad
        print("ok")
        """
    )
    r = run_blocked(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_predict_help_runs_without_tensorflow(tmp_path):
    r = run_blocked("import sys, runtime.cli; sys.exit(runtime.cli.main(['predict', '--help']))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "--detector" in r.stdout and "yunet:PATH" in r.stdout
