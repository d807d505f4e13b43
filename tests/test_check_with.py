"""`facemtl convert --check-with`: a .tflite file checked per head in each interpreter named,
LiteRT here and tflite-runtime in a Pi-profile environment of its own (numpy 1, which
TensorFlow's environment cannot import it next to), each listed in the report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from convert_fixtures import tiny_model_path
from facemtl.convert.interpreters import CheckWith, parse_check_with
from facemtl.runtime.cli import main


def test_parse_check_with():
    assert parse_check_with(None) == ()
    assert parse_check_with(["litert,tflite-runtime=/v/bin/python"]) == (
        CheckWith("litert"), CheckWith("tflite-runtime", Path("/v/bin/python")))
    assert parse_check_with(["litert", "tflite-runtime"]) == (CheckWith("litert"), CheckWith("tflite-runtime"))
    for bad, message in (("tensorflow", "unknown interpreter"), ("litert,litert", "twice"),
                         ("tflite-runtime=", "give the Python")):
        with pytest.raises(ValueError, match=message):
            parse_check_with([bad])


def _convert(capsys, *args) -> tuple[int, str, str]:
    code = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_convert_checks_every_head_in_each_interpreter(tmp_path, tiny_mtfl, capsys, pi_python):
    out = tmp_path / "out"
    code, stdout, err = _convert(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", out, "--formats",
                                 "tflite-fp32,onnx-fp32", "--latency-runs", "5",
                                 "--check-with", f"litert,tflite-runtime={pi_python}")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["check_with"] == ["litert", f"tflite-runtime={pi_python}"]
    tfl, onnx = report["formats"]
    assert tfl["status"] == "passed" and (out / "model_fp32.tflite").is_file()
    ran = {i["interpreter"]: i for i in tfl["interpreters"]}
    assert list(ran) == ["litert", "tflite-runtime"]
    assert ran["tflite-runtime"]["version"].startswith("2.14") and ran["tflite-runtime"]["python"] == str(pi_python)
    assert ran["litert"]["python"] == sys.executable
    assert all(0 < i["latency_ms"]["median"] for i in ran.values())
    heads = [(h["interpreter"], h["head"]) for h in tfl["heads"]]
    names = [h["head"] for h in tfl["heads"][:5]]
    assert heads == [(i, n) for i in ("litert", "tflite-runtime") for n in names] and len(names) == 5
    # an fp32 file matches Keras to 1e-4 in both: each interpreter really ran it
    assert all(h["passed"] and h["max_abs_diff"] <= 1e-4 for h in tfl["heads"])
    # ONNX files run in onnxruntime whatever --check-with says
    assert [i["interpreter"] for i in onnx["interpreters"]] == ["onnxruntime"] and len(onnx["heads"]) == 5
    md = (out / "report.md").read_text()
    for name in ("litert", "tflite-runtime 2.14"):
        assert md.count(f"| tflite-fp32 | passed | landmarks | passed | {name}") == 1, md


@pytest.mark.slow
def test_an_interpreter_that_is_not_here_fails_the_check(tmp_path, tiny_mtfl, capsys):
    if importlib.util.find_spec("tflite_runtime") is not None:
        pytest.skip("tflite_runtime is importable in this environment")
    out = tmp_path / "out"
    code, _, err = _convert(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", out, "--formats", "tflite-fp32",
                            "--latency-runs", "0", "--check-with", "litert,tflite-runtime")
    assert code == 1
    (fmt,) = json.loads((out / "report.json").read_text())["formats"]
    assert fmt["status"] == "check failed" and not (out / "model_fp32.tflite").exists()
    assert "tflite-runtime" in fmt["error"] and "tflite-runtime=PYTHON" in fmt["error"], fmt["error"]
    assert [i["interpreter"] for i in fmt["interpreters"]] == ["litert"]  # the one that ran is still reported
    code, _, err = _convert(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", out, "--check-with",
                            "tflite-runtime=/nonexistent/python")
    assert code == 2 and "no such Python /nonexistent/python" in err
