"""convert/: the format table, exporters, per-head checks, the convert and bench commands."""

from __future__ import annotations

import importlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from convert_fixtures import converted, crops, tiny_model, tiny_model_path
from facemtl.runtime.artifact import ModelFileError, TFLiteFile, read_spec
from facemtl.runtime.backends import load_backend
from facemtl.runtime.cli import main
from facemtl.runtime.formats import FORMAT_NAMES, FORMATS, backend_for, get_format
from facemtl.runtime.spec import default_spec

# --- the format table ---------------------------------------------------------------------------


def test_format_table_is_the_single_source():
    assert FORMAT_NAMES == ("tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "tflite-int8-float",
                            "onnx-fp32", "onnx-int8")
    for f in FORMATS:
        module, func = f.exporter.split(":")
        assert callable(getattr(importlib.import_module(module), func)), f.exporter
        assert backend_for(f.file_name()) == f.backend
        assert f.file_name().endswith(f.suffix)
    assert len({f.file_name() for f in FORMATS}) == len(FORMATS)
    assert get_format("onnx-int8").options == ("opset", "calibration", "per_channel", "equalize")
    assert get_format("tflite-int8").integer_io and "calibration" in get_format("tflite-int8").options
    with pytest.raises(ValueError, match="choose from tflite-fp32"):
        get_format("coreml")
    assert backend_for("model.keras") is None


# --- exporters ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_tflite_files_use_builtin_ops_only():
    files = converted()
    for name in FORMAT_NAMES:
        if name.startswith("tflite"):
            tfl = TFLiteFile.read(files[name])
            assert tfl.custom_ops == [], (name, tfl.custom_ops)
            assert len(tfl.operator_codes) >= 3


@pytest.mark.slow
def test_flex_op_detector_sees_a_flex_op(tmp_path):
    """The no-Flex check itself can fail: a file with a Flex op code is seen as one."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(converted()["tflite-fp32"].read_bytes()))
    model.operatorCodes[0].builtinCode = 32  # CUSTOM
    model.operatorCodes[0].deprecatedBuiltinCode = 32
    model.operatorCodes[0].customCode = "FlexBincount"
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    assert TFLiteFile(data).custom_ops == ["FlexBincount"]


@pytest.mark.slow
def test_spec_travels_inside_every_file():
    files = converted()
    spec = tiny_model().model_spec
    for name, path in files.items():
        got = read_spec(path)
        assert got.heads == spec.heads and got.input == spec.input and got.crop == spec.crop
        if get_format(name).integer_io:
            assert set(got.quantization) == {"input", *spec.head_names}
            assert all(q.dtype == "int8" and q.scale > 0 for q in got.quantization.values())
        else:
            assert got.quantization == {}


@pytest.mark.slow
def test_int8_file_is_much_smaller_than_fp32():
    files = converted()
    assert files["tflite-int8"].stat().st_size * 3 < files["tflite-fp32"].stat().st_size
    assert files["tflite-int8-float"].stat().st_size * 3 < files["tflite-fp32"].stat().st_size
    assert files["onnx-int8"].stat().st_size * 2.5 < files["onnx-fp32"].stat().st_size  # QDQ scales weigh on a tiny model


# --- the per-head check -------------------------------------------------------------------------

def _check_data(n: int = 48):
    x = crops(n, seed=11)
    ref = {k: np.asarray(v) for k, v in tiny_model()(x, training=False).items()}
    labels = {h: ref[h].argmax(1) for h in ("gender", "smile", "glasses", "pose")}
    truth = ref["landmarks"] + np.random.default_rng(3).normal(0, 0.05, ref["landmarks"].shape).astype(np.float32)
    return x, ref, truth, labels


def _perturbed_tflite(src: Path, dst: Path, head: str) -> Path:
    """Negate one head's weights inside a converted file (same size: the flatbuffer stays valid)."""
    tfl = TFLiteFile.read(src)
    (t,) = [t for t in tfl.tensors if head in t.name and "MatMul" in t.name and t.type == "float32"]
    start, size = tfl.buffer_span(t.buffer)
    data = bytearray(tfl.data)
    w = np.frombuffer(bytes(data[start:start + size]), np.float32)
    data[start:start + size] = (-w).astype(np.float32).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _perturbed_onnx(src: Path, dst: Path, head: str) -> Path:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    (init,) = [i for i in proto.graph.initializer if f"/{head}_" in i.name and len(i.dims) == 2]
    init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    onnx.save(proto, str(dst))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tflite-fp32", "onnx-fp32"])
def test_check_fails_a_broken_head_and_only_that_head(tmp_path, name):
    from facemtl.convert.check import check_outputs
    from facemtl.convert.report import FormatResult, convert_markdown

    x, ref, truth, labels = _check_data()
    spec = tiny_model().model_spec
    src = converted()[name]
    atol = get_format(name).atol
    good = check_outputs(spec, ref, load_backend(src).run(x), truth, labels, atol=atol)
    assert all(h.passed for h in good), [h.reasons for h in good]

    perturb = _perturbed_tflite if name.startswith("tflite") else _perturbed_onnx
    broken = perturb(src, tmp_path / src.name, "smile")
    checks = check_outputs(spec, ref, load_backend(broken).run(x), truth, labels, atol=atol)
    verdict = {h.head: h.passed for h in checks}
    assert verdict == {"landmarks": True, "gender": True, "smile": False, "glasses": True, "pose": True}
    smile = next(h for h in checks if h.head == "smile")
    assert smile.agreement < 0.9 and smile.delta < -10
    md = convert_markdown([FormatResult(name, "check failed", heads=checks)])
    assert sum("FAILED" in line for line in md.splitlines()) == 1
    assert "| smile | FAILED: accuracy down" in md


def test_check_limits_default_from_spec_and_override():
    from facemtl.convert.check import Limits, check_head

    spec = default_spec()
    assert Limits.for_head(spec.head("landmarks")) == Limits(0.15, None)
    assert Limits.for_head(spec.head("pose")) == Limits(0.5, 0.98)
    assert Limits.for_head(spec.head("pose"), {"pose": 2.0}, {"pose": 0.9}) == Limits(2.0, 0.9)

    rng = np.random.default_rng(0)
    truth = np.tile(np.array([0.3, 0.4, 0.7, 0.4, 0.5, 0.6, 0.35, 0.75, 0.65, 0.75], np.float32), (100, 1))
    keras_pts = truth + rng.normal(0, 0.01, truth.shape).astype(np.float32)
    worse = keras_pts + 0.004  # ~1.2 NME points at an inter-ocular distance of 0.4
    lm = spec.head("landmarks")
    assert not check_head(lm, keras_pts, worse, truth, {}, Limits.for_head(lm)).passed
    assert check_head(lm, keras_pts, worse, truth, {}, Limits(5.0, None)).passed
    assert check_head(lm, keras_pts, keras_pts.copy(), truth, {}, Limits.for_head(lm), atol=1e-4).passed
    off = check_head(lm, keras_pts, keras_pts + 2e-4, truth, {}, Limits(5.0, None), atol=1e-4)
    assert not off.passed and "max |diff|" in off.reasons[0]


# --- data: the runtime's crops, as training cuts them ---------------------------------------------

@pytest.mark.slow
def test_crops_equal_the_training_pipeline(tiny_mtfl):
    from facemtl.convert.data import cut
    from facemtl.train.mtfl import load_images, load_split
    from facemtl.train.pipeline import make_example

    spec = default_spec()
    images = load_images(load_split(tiny_mtfl, "training").subset(np.arange(6)))
    x, y = cut(images.images, images.annotations.points, spec)
    for i, grey in enumerate(images.images):
        a = np.zeros(4, np.int32)
        xi, yi, _ = make_example(grey, images.annotations.points[i], a, spec, None, None)
        np.testing.assert_array_equal(x[i, :, :, 0], xi)
        np.testing.assert_allclose(y[i], yi, atol=1e-6)


@pytest.mark.slow
def test_calibration_and_checked_faces_do_not_overlap(tiny_mtfl):
    from facemtl.convert.data import calibration, held_out

    spec = default_spec()
    val = held_out(tiny_mtfl, spec, "validation")
    cal = calibration(tiny_mtfl, spec, 1000)
    assert len(val) > 0 and len(cal) > 0
    assert len(val) + len(cal) == 160  # every training face in exactly one of the two
    flat = {v.tobytes() for v in val.x}
    assert not any(c.tobytes() in flat for c in cal.x)
    assert len(held_out(tiny_mtfl, spec, "testing")) == 40


# --- facemtl convert ----------------------------------------------------------------------------

def _convert(capsys, *args) -> tuple[int, str, str]:
    code = main(["convert", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _report(out_dir: Path) -> dict:
    return {f["format"]: f for f in json.loads((out_dir / "report.json").read_text())["formats"]}


@pytest.mark.slow
def test_failed_check_leaves_no_accepted_file(tmp_path, tiny_mtfl, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model_int8.tflite").write_bytes(b"stale file from an earlier run")
    # calibrated on a single crop, every other face saturates the int8 ranges: a real check failure
    code, _, err = _convert(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", out, "--formats", "tflite-int8",
                            "--calibration", "1", "--no-equalize", "--latency-runs", "0")
    assert code == 1
    assert "warning: 1 calibration crops" in err
    assert not (out / "model_int8.tflite").exists()
    assert (out / "rejected" / "model_int8.tflite").is_file()
    rep = _report(out)["tflite-int8"]
    assert rep["status"] == "check failed" and rep["file"] == "rejected/model_int8.tflite"
    failed = [h["head"] for h in rep["heads"] if not h["passed"]]
    assert failed and rep["error"] == f"heads failed: {', '.join(failed)}"
    # the rejected file is a complete, loadable file: the check failed, not the write
    assert load_backend(out / "rejected" / "model_int8.tflite").format == "tflite-int8"
    # and `facemtl bench` says so when asked to time it
    assert main(["bench", str(out / "rejected"), "--data", str(tiny_mtfl), "--runs", "2", "--warmup", "0",
                 "--json", str(tmp_path / "b.json")]) == 0
    (row,) = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert row["status"] == "rejected" and row["format"] == "tflite-int8"


@pytest.mark.slow
def test_export_failure_does_not_stop_other_formats(tmp_path, tiny_mtfl, capsys):
    out = tmp_path / "out"
    code, _, err = _convert(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", out,
                            "--formats", "onnx-fp32", "tflite-fp32", "--opset", "1", "--latency-runs", "0")
    assert code == 1
    rep = _report(out)
    assert rep["onnx-fp32"]["status"] == "export failed" and "opset 1" in rep["onnx-fp32"]["error"]
    assert rep["tflite-fp32"]["status"] == "passed"
    assert (out / "model_fp32.tflite").is_file() and not list(out.rglob("*.onnx"))
    assert "onnx-fp32: export failed" in err
    md = (out / "report.md").read_text()
    assert "| onnx-fp32 | export failed | - |" in md and md.count("| tflite-fp32 | passed |") == 5
    assert all(h["max_abs_diff"] <= 1e-4 for h in rep["tflite-fp32"]["heads"])


@pytest.mark.slow
def test_convert_passes_with_the_spec_beside_the_model(tmp_path, tiny_mtfl, capsys):
    import dataclasses
    import shutil

    from facemtl.runtime.spec import BoxCalibration

    model = tmp_path / "m" / "model.keras"
    model.parent.mkdir()
    shutil.copy(tiny_model_path(), model)
    spec = default_spec()
    spec = spec.replace(crop=dataclasses.replace(spec.crop, calibrations={"yunet": BoxCalibration(0.01, 0.02, 1.1, 50)}))
    spec.save(model.with_name("spec.json"))
    model.with_name("config.json").write_text(json.dumps({"val_fraction": 0.25}))  # the run's own held-out part
    code, stdout, err = _convert(capsys, model, "--data", tiny_mtfl, "--formats", "onnx-fp32", "--latency-runs", "5")
    assert code == 0, err
    out = model.parent / "converted"  # the default --out
    check = json.loads((out / "report.json").read_text())["check"]
    assert "25%" in check["source"] and 20 < check["faces"] < 60
    r = _report(out)["onnx-fp32"]
    assert r["status"] == "passed" and r["file"] == "model_fp32.onnx"
    assert [h["head"] for h in r["heads"]] == list(default_spec().head_names)
    assert all(h["passed"] and h["max_abs_diff"] <= 1e-4 for h in r["heads"])
    assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p95"]
    assert (out / "report.md").read_text().count("| onnx-fp32 | passed |") == 5
    assert "| onnx-fp32 | passed | landmarks | passed |" in stdout
    assert not (out / "rejected").exists() and not (out / ".staging").exists()
    # the spec beside the model, with its detector calibration, is the one embedded
    assert read_spec(out / "model_fp32.onnx").crop.calibrations["yunet"].scale == 1.1

    spec.select(["landmarks", "pose"]).save(model.with_name("spec.json"))
    code, _, err = _convert(capsys, model, "--data", tiny_mtfl, "--out", tmp_path / "o2")
    assert code == 2 and "do not match the model's outputs" in err


def _error(capsys, *args) -> str:
    code, out, err = _convert(capsys, *args)
    assert code == 2, (out, err)
    lines = [line for line in err.splitlines() if line.startswith("facemtl convert: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_convert_bad_inputs_are_one_clear_line(tmp_path, tiny_mtfl, capsys):
    import keras

    assert "no such model file" in _error(capsys, tmp_path / "missing.keras", "--data", tiny_mtfl)
    text = tmp_path / "notes.keras"
    text.write_text("not a model")
    assert "not a loadable Keras model" in _error(capsys, text, "--data", tiny_mtfl, "--out", tmp_path / "o")
    inp = keras.Input((40, 40, 1))
    plain = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(inp)))
    plain.save(tmp_path / "plain.keras")
    assert "not a facemtl model" in _error(capsys, tmp_path / "plain.keras", "--data", tiny_mtfl, "--out", tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no training.txt" in _error(capsys, tiny_model_path(), "--data", empty, "--out", tmp_path / "o")
    assert "no MTFL data folder" in _error(capsys, tiny_model_path(), "--data", tmp_path / "nowhere")
    assert "unknown format(s) coreml" in _error(capsys, tiny_model_path(), "--data", tiny_mtfl, "--formats", "coreml")
    assert "HEAD=VALUE" in _error(capsys, tiny_model_path(), "--data", tiny_mtfl, "--tolerance", "0.3")
    assert ">= 0" in _error(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", tmp_path / "o", "--tolerance", "pose=-1")
    assert "unknown heads ['beard']" in _error(capsys, tiny_model_path(), "--data", tiny_mtfl, "--out", tmp_path / "o",
                                               "--tolerance", "beard=1")
    assert not list((tmp_path / "o").glob("*.tflite")) if (tmp_path / "o").exists() else True


# --- facemtl bench ------------------------------------------------------------------------------

@pytest.mark.slow
def test_bench_table_and_json(tmp_path, tiny_mtfl, capsys):
    files = converted()
    folder = next(iter(files.values())).parent
    out_json = tmp_path / "bench.json"
    code = main(["bench", str(folder), "--data", str(tiny_mtfl), "--runs", "5", "--warmup", "1", "--json", str(out_json)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    rows = json.loads(out_json.read_text())["rows"]
    assert [r["format"] for r in rows] == list(FORMAT_NAMES)
    for r in rows:
        assert r["status"] == "ok" and r["size_bytes"] > 0
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p95"]
        assert set(r["metrics"]) == {"landmarks/nme", "gender/accuracy", "smile/accuracy", "glasses/accuracy",
                                     "pose/accuracy"}
    header = stdout.splitlines()[0].split()
    assert header[:6] == ["format", "status", "size", "MB", "ms", "median"]
    assert sum(line.startswith(("tflite-", "onnx-")) for line in stdout.splitlines()) == len(FORMAT_NAMES)


def test_bench_times_files_interleaved_in_rounds():
    from facemtl.convert.bench import interleaved_latency_ms

    calls = []

    class Recorder:  # records the order of calls; the interleaving is what is under test
        def __init__(self, name):
            self.name = name

        def run(self, x):
            calls.append((self.name, int(x[0, 0])))

    crops = np.arange(7, dtype=np.float32).reshape(7, 1)
    lats = interleaved_latency_ms([Recorder("a"), Recorder("b")], [crops, crops], runs=25, warmup=3, rounds=4)
    assert [lat["runs"] for lat in lats] == [25, 25]
    timed = calls[6:]  # after 3 warmup calls each
    blocks = [(name, sum(1 for _ in group)) for name, group in itertools.groupby(n for n, _ in timed)]
    assert blocks == [("a", 7), ("b", 7), ("a", 6), ("b", 6), ("a", 6), ("b", 6), ("a", 6), ("b", 6)]
    assert [i for n, i in calls if n == "a"] == [i % 7 for i in range(28)]  # cycles through the crops


def test_bench_live_hook(capsys):
    import importlib.util

    if importlib.util.find_spec("facemtl.runtime.live_bench") is None:
        assert main(["bench", "--live"]) == 2
        assert "not available yet" in capsys.readouterr().err
    else:  # the live benchmark is installed: its options join `facemtl bench`
        with pytest.raises(SystemExit):
            main(["bench", "--help"])
        assert "--live" in capsys.readouterr().out


def test_bench_errors(tmp_path, capsys):
    assert main(["bench", str(tmp_path)]) == 2
    assert "no .tflite or .onnx files" in capsys.readouterr().err
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"junk" * 10)
    assert main(["bench", str(junk)]) == 2
    assert "not a TFLite model" in capsys.readouterr().err


def test_model_file_error_is_a_value_error():
    assert issubclass(ModelFileError, ValueError)


# --- int8 preparation: range equalization and Dense folding ----------------------------------------

@pytest.mark.slow
def test_equalization_is_exact_and_evens_channel_ranges():
    import keras

    from facemtl.convert.equalize import equalize

    # ReLU6 clips at 6, so dividing a channel by s before it is not undone after it: the
    # default trunk has nothing equalize() may touch, and it must leave it alone
    assert equalize(tiny_model(), crops(64, seed=21))[1] == 0
    model = tiny_model("relu")
    cal = crops(64, seed=21)
    eq, pairs = equalize(model, cal)
    assert pairs == 12  # stem, 5 x (dw, pw), features: every BatchNorm+ReLU of the mtfl trunk
    x = crops(16, seed=22)
    a = model(x, training=False)
    b = eq(x, training=False)
    for k in a:
        np.testing.assert_allclose(np.asarray(b[k]), np.asarray(a[k]), rtol=1e-4, atol=1e-4)
    balanced, _ = equalize(model, cal, per_channel_weights=False)  # the rule for per-tensor weights
    c = balanced(x, training=False)
    for k in a:
        np.testing.assert_allclose(np.asarray(c[k]), np.asarray(a[k]), rtol=1e-4, atol=1e-4)

    def spread(m, name):  # largest channel range over the median one, on the calibration crops
        act = np.asarray(keras.Model(m.input, m.get_layer(name).output)(cal, training=False))
        r = np.percentile(act.reshape(-1, act.shape[-1]), 99.99, axis=0)  # the ranges equalize() uses
        return r.max() / np.median(r)

    # depthwise convolutions read these (the last block's output goes to the Flatten and the
    # Dense instead): their input channels are equalized fully
    dw_inputs = ["stem_relu"] + [f"block{i}_pw_relu" for i in range(1, 5)]
    assert max(spread(eq, n) for n in dw_inputs) < 1.02
    assert np.mean([spread(model, n) for n in dw_inputs]) > 1.2
    assert model.get_layer("stem_bn").get_weights()[0] is not None  # the original is untouched
    np.testing.assert_array_equal(model.get_layer("stem_bn").get_weights()[0],
                                  tiny_model("relu").get_layer("stem_bn").get_weights()[0])


@pytest.mark.slow
def test_fold_dense_makes_one_gemm_per_dense_layer(tmp_path):
    import onnx

    from facemtl.convert.export import fold_dense

    src = converted()["onnx-fp32"]
    proto = onnx.load(str(src))
    before = [n.op_type for n in proto.graph.node]
    assert before.count("MatMul") == 6 and "Gemm" not in before
    assert fold_dense(proto) == 6  # features (MatMul, batch-norm Mul, Add) and five heads (MatMul, Add)
    after = [n.op_type for n in proto.graph.node]
    assert after.count("Gemm") == 6 and "MatMul" not in after
    onnx.checker.check_model(proto)
    out = tmp_path / "folded.onnx"
    onnx.save(proto, str(out))
    x = crops(8, seed=23)
    a, b = load_backend(src).run(x), load_backend(out).run(x)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5)


# --- --float-heads: the heads' output layers stay float in the int8 files ----------------------

def _tflite_weight_dtypes(path: Path) -> dict[tuple, list[str]]:
    """Shape -> dtypes of the 2-D constant tensors (Dense weights) of a TFLite file."""
    from ai_edge_litert.interpreter import Interpreter

    found: dict[tuple, list[str]] = {}
    for d in Interpreter(model_path=str(path)).get_tensor_details():
        if len(d["shape"]) == 2 and d["shape"][1] == 256 and 1 < d["shape"][0] < 256:  # not the (1, 256) features
            found.setdefault(tuple(d["shape"]), []).append(np.dtype(d["dtype"]).name)
    return found


def _onnx_head_weights_quantized(path: Path) -> dict[str, bool]:
    """Output name -> whether the Gemm that makes it reads its weights through DequantizeLinear."""
    import onnx

    proto = onnx.load(str(path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for o in proto.graph.output:
        node = producer[o.name]
        while node.op_type != "Gemm":
            node = producer[node.input[0]]
        w = producer.get(node.input[1])
        out[o.name] = w is not None and w.op_type == "DequantizeLinear"
    return out


def _export_without_and_with(model, tmp_path: Path, names: tuple[str, ...], option: str, **fixed) -> dict:
    """(format name, option value) -> file: each format exported with the ExportContext option
    `option` off and on, the other options as in `fixed`."""
    from facemtl.convert.export import ExportContext, export

    files = {}
    for on in (False, True):
        with ExportContext(model, model.model_spec, crops(64, seed=2), **fixed, **{option: on}) as ctx:
            for name in names:
                fmt = get_format(name)
                files[name, on] = tmp_path / f"{on}-{fmt.file_name()}"
                export(fmt, ctx, files[name, on])
    return files


def _assert_no_further_from_keras(model, files: dict) -> None:
    """With the option on, each float-I/O int8 file's answers are no further from Keras's than
    with it off (mean relative error over the heads, 1% slack)."""
    x = crops(64, seed=5)
    ref = {k: np.asarray(v) for k, v in model.predict(x, verbose=0).items()}
    for name in ("tflite-int8-float", "onnx-int8"):
        err = {}
        for on in (False, True):
            with load_backend(files[name, on]) as b:
                got = b.run(x)
            err[on] = np.mean([np.abs(got[h] - ref[h]).mean() / np.abs(ref[h]).mean() for h in ref])
        assert err[True] <= 1.01 * err[False], (name, err)


@pytest.mark.slow
def test_float_heads_keep_every_head_layer_float_and_the_trunk_int8(tmp_path):
    model = tiny_model()
    units = sorted(h.units for h in model.model_spec.heads)
    files = _export_without_and_with(model, tmp_path, ("tflite-int8-float", "onnx-int8", "tflite-int8"), "float_heads")
    plain, heads = (_tflite_weight_dtypes(files["tflite-int8-float", f]) for f in (False, True))
    assert sorted(s[0] for s, dts in plain.items() for _ in dts) == units
    assert all(dt == "int8" for dts in plain.values() for dt in dts)
    assert all(dt == "float32" for dts in heads.values() for dt in dts) and heads.keys() == plain.keys()
    # the trunk stays integer: the feature layer's 256 x flatten weights are int8 in both
    from ai_edge_litert.interpreter import Interpreter

    trunk = [np.dtype(d["dtype"]).name for d in Interpreter(model_path=str(files["tflite-int8-float", True])).get_tensor_details()
             if len(d["shape"]) == 2 and d["shape"][0] == 256]
    assert trunk == ["int8"]
    assert all(_onnx_head_weights_quantized(files["onnx-int8", False]).values())
    assert not any(_onnx_head_weights_quantized(files["onnx-int8", True]).values())
    # tflite-int8 answers in int8 by definition: the option leaves it as it was
    assert _tflite_weight_dtypes(files["tflite-int8", True]) == _tflite_weight_dtypes(files["tflite-int8", False])
    # the float-head files run in the runtime, spec and all; their answers are no further from
    # Keras's than the all-int8 files' (the head layers' rounding is gone; on this random tiny
    # model the trunk's rounding dominates, so "no further" is all that can be asked)
    _assert_no_further_from_keras(model, files)


def _stem_weight_dtypes(tflite: Path, onnx_path: Path) -> tuple[str, str, bool]:
    """(dtype of the first convolution's kernel in the TFLite file, dtype of another conv's
    kernel there, whether the ONNX file's first Conv reads its weights through DequantizeLinear)."""
    import onnx
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tflite))
    dtypes = {d["index"]: np.dtype(d["dtype"]).name for d in it.get_tensor_details()}
    convs = [op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"]
    first, later = (dtypes[op["inputs"][1]] for op in (convs[0], convs[1]))
    proto = onnx.load(str(onnx_path))
    producer = {o: n for n in proto.graph.node for o in n.output}
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    w = producer.get(conv.input[1])
    return first, later, w is not None and w.op_type == "DequantizeLinear"


@pytest.mark.slow
def test_float_stem_keeps_the_first_convolution_float_and_the_rest_int8(tmp_path):
    model = tiny_model()
    files = _export_without_and_with(model, tmp_path, ("tflite-int8-float", "onnx-int8"), "float_stem", float_heads=True)
    assert _stem_weight_dtypes(files["tflite-int8-float", False], files["onnx-int8", False]) == ("int8", "int8", True)
    assert _stem_weight_dtypes(files["tflite-int8-float", True], files["onnx-int8", True]) == ("float32", "int8", False)
    # the head layers stay float alongside (the two options add up)
    assert all(dt == "float32" for dts in _tflite_weight_dtypes(files["tflite-int8-float", True]).values() for dt in dts)
    _assert_no_further_from_keras(model, files)


def _relu_only_onnx():
    """An ONNX graph with neither a convolution nor a Dense layer: x -> Relu -> pose."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("pose", TensorProto.FLOAT, [1, 4])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["pose"], name="relu")], "g", [x], [y]))


def test_onnx_stem_nodes_refuses_a_graph_without_a_convolution():
    from facemtl.convert.export import ExportError, onnx_stem_nodes

    with pytest.raises(ExportError, match="first convolution"):
        onnx_stem_nodes(_relu_only_onnx())


def test_onnx_head_nodes_refuses_an_output_without_a_dense_layer():
    from facemtl.convert.export import ExportError, onnx_head_nodes

    with pytest.raises(ExportError, match="Dense layer of output 'pose'"):
        onnx_head_nodes(_relu_only_onnx())
