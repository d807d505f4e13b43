"""Run Python code in a subprocess where some top-level packages cannot be imported (a
`sitecustomize` meta-path finder raises ImportError for them): how the tests show that the
runtime path works on a machine without TensorFlow."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what a Raspberry Pi install lacks; facemtl.train and facemtl.convert are the packages that need them
NO_TENSORFLOW = ("tensorflow", "keras", "tf_keras", "tf2onnx", "jax", "torch", "facemtl.train", "facemtl.convert")


def blocker(blocked: tuple[str, ...]) -> str:
    """The sitecustomize.py source that makes `blocked` unimportable."""
    return textwrap.dedent(
        f"""
        import importlib.abc, sys

        BLOCKED = {tuple(blocked)!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked for this test)", name=name)
                return None

        sys.meta_path.insert(0, Block())
        """
    )


def run_blocked(code: str, tmp_path: Path, blocked: tuple[str, ...] = NO_TENSORFLOW, extra_path: tuple = (),
                timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -c code` from the repository root with `blocked` unimportable; the blocker is
    written to `tmp_path`, which goes first on PYTHONPATH, then the root and `extra_path`."""
    (tmp_path / "sitecustomize.py").write_text(blocker(blocked))
    path = ":".join(str(p) for p in (tmp_path, ROOT, *extra_path))
    env = {"PYTHONPATH": path, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)
