"""The repository's promises about itself: CI runs the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("# The tests"))
    return lines[i + 1].strip()


def test_ci_runs_the_readme_test_command():
    cmd = _readme_test_command()
    assert "pytest" in cmd and "pip install" in cmd
    assert cmd in (ROOT / ".ci" / "run").read_text()


def test_packaged_default_model_is_in_the_package_data():
    models = ROOT / "runtime" / "models"
    assert (models / "facemtl_int8.tflite").stat().st_size > 100_000
    assert (models / "facemtl_fp32.onnx").stat().st_size > 100_000
    assert '"models/*.tflite", "models/*.onnx"' in (ROOT / "pyproject.toml").read_text()
