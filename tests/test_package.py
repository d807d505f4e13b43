"""What a user installs: one top-level package in the wheel, a CLI that survives a user's own
`train.py` / `runtime.py` / `convert.py` on the path, and subcommands that say what is
missing instead of vanishing."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from import_blocker import run_blocked
from runtime_models import ROOT

SUBCOMMANDS = {"predict", "calibrate", "demo", "train", "evaluate", "convert", "bench", "data"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "No module named" in r.stderr and "setuptools" in r.stderr:
        pytest.skip("setuptools is not installed in this environment (pip install setuptools wheel)")
    assert r.returncode == 0, r.stderr[-3000:]
    (path,) = out.glob("facemtl-*.whl")
    return path


def test_wheel_holds_one_top_level_package_and_the_packaged_models(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"facemtl"}, sorted(tops)
    assert len(dist_info) == 1
    for needed in ("facemtl/__init__.py", "facemtl/runtime/analyzer.py", "facemtl/runtime/live/tracking.py",
                   "facemtl/train/fit.py", "facemtl/convert/export.py", "facemtl/runtime/models/facemtl_int8.tflite",
                   "facemtl/runtime/models/facemtl_fp32.onnx", "facemtl/runtime/models/NOTICE.md"):
        assert needed in names, needed
    # research scripts and tests stay in the repository
    assert not [n for n in names if "measure_lost" in n or "/tests/" in n or n.startswith("bench/")]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "facemtl = facemtl.runtime.cli:main" in text
    assert "train = facemtl.train.cli:register_train" in text


def _shadow(tmp_path: Path) -> Path:
    """A user's project folder with modules named like the repository's folders."""
    folder = tmp_path / "userproject"
    folder.mkdir()
    for name in ("train", "runtime", "convert"):
        (folder / f"{name}.py").write_text(f"raise RuntimeError('the user\\'s own {name}.py was imported')\n")
    return folder


def _listed(help_text: str) -> set[str]:
    """The subcommands `facemtl --help` lists (argparse indents each by four spaces)."""
    return {m.group(1) for line in help_text.splitlines() if (m := re.match(r"^ {4}([a-z]\w*)", line))}


def test_installed_wheel_works_beside_a_users_train_runtime_convert(wheel, tmp_path):
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    # one importable top-level name (bin/ holds the console script)
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == ["facemtl"]
    shadow = _shadow(tmp_path)
    env = {"PYTHONPATH": f"{shadow}:{target}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    code = "import facemtl, facemtl.runtime.analyzer as a; print(facemtl.__version__); print(a.__file__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=shadow, timeout=120)
    assert r.returncode == 0, r.stderr
    version, where = r.stdout.split()
    assert Path(where).is_relative_to(target) and version[0].isdigit()
    r = subprocess.run([sys.executable, "-m", "facemtl", "--help"], capture_output=True, text=True, env=env,
                       cwd=shadow, timeout=120)
    assert r.returncode == 0, r.stderr
    assert _listed(r.stdout) == SUBCOMMANDS, r.stdout


def test_a_command_that_cannot_load_stays_listed_and_says_why(tmp_path):
    shadow = _shadow(tmp_path)
    code = ("import sys, facemtl.runtime.cli as c\n"
            "sys.exit(c.main(sys.argv[1:]))")
    helped = run_blocked("import sys, facemtl.runtime.cli as c\nc.main(['--help'])", tmp_path,
                         blocked=("tensorflow", "keras", "facemtl.train"), extra_path=(shadow,))
    assert _listed(helped.stdout) == SUBCOMMANDS, helped.stdout + helped.stderr
    assert "unavailable" in helped.stdout
    ran = run_blocked(code.replace("sys.argv[1:]", "['train', '--data', 'x', '--out', 'y']"), tmp_path,
                      blocked=("tensorflow", "keras", "facemtl.train"), extra_path=(shadow,))
    assert ran.returncode == 2
    assert ran.stderr.startswith("facemtl train: error: this command cannot load") and ran.stderr.count("\n") == 1


def test_a_missing_extra_names_the_install_command(tmp_path):
    """TensorFlow absent, facemtl.train present (a Pi with the package but not the extra):
    `facemtl evaluate` fails at its first TensorFlow import with the pip command to run."""
    code = ("import sys, facemtl.runtime.cli as c\n"
            "sys.exit(c.main(['evaluate', 'nothing.keras', '--data', '.']))")
    r = run_blocked(code, tmp_path, blocked=("tensorflow", "keras", "tf2onnx"))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "pip install 'facemtl[train]'" in r.stderr and r.stderr.count("\n") == 1, r.stderr
