"""convert/ on the real MTFL data (skipped where ../shared/data/mtfl is absent)."""

from __future__ import annotations

import json

import pytest

from convert_fixtures import tiny_model_path
from facemtl.runtime.cli import main
from facemtl.runtime.spec import default_spec

pytestmark = [pytest.mark.slow, pytest.mark.data]


def test_checked_faces_are_held_out_from_calibration(mtfl_dir):
    from facemtl.convert.data import calibration, held_out
    from facemtl.train.mtfl import load_split, split_train_val

    spec = default_spec()
    val = held_out(mtfl_dir, spec, "validation", limit=40)
    cal = calibration(mtfl_dir, spec, 200)
    assert len(val) == 40 and len(cal) == 200 and val.x.shape[1:] == (40, 40, 1)
    _, val_ann = split_train_val(load_split(mtfl_dir, "training"), 0.1)
    assert not set(cal.paths) & set(val_ann.paths)  # calibration never sees a checked face
    assert set(val.paths) <= set(val_ann.paths)
    test = held_out(mtfl_dir, spec, "testing", limit=20)
    assert all(p.startswith("AFLW/") for p in test.paths)


def test_convert_int8_on_mtfl(mtfl_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["convert", str(tiny_model_path()), "--data", str(mtfl_dir), "--out", str(out), "--formats",
                 "tflite-int8", "--limit", "40", "--calibration", "200", "--split", "testing", "--latency-runs", "3"])
    _, err = capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["check"]["faces"] == 40 and report["check"]["split"] == "testing"
    assert report["calibration"]["faces"] == 200 and "warning" not in err
    (fmt,) = report["formats"]
    assert code == (0 if fmt["status"] == "passed" else 1)
    accepted = (out / "model_int8.tflite").exists()
    assert accepted == (fmt["status"] == "passed")
    assert (out / "rejected" / "model_int8.tflite").exists() == (not accepted)
    assert all(h["converted"] is not None for h in fmt["heads"])
