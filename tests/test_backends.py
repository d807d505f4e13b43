"""facemtl.runtime.backends / facemtl.runtime.artifact on real converted files in their real interpreters."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from convert_fixtures import converted, crops, raw_tflite_fp32, tiny_model
from import_blocker import run_blocked
from facemtl.runtime.artifact import ModelFileError, TFLiteFile, read_metadata, read_spec
from facemtl.runtime.backends import MAX_BATCH, load_backend
from facemtl.runtime.formats import FORMAT_KEY, FORMAT_NAMES, SPEC_KEY
from facemtl.runtime.spec import default_spec

pytestmark = pytest.mark.slow  # the session converts a model once (~20 s)


@pytest.fixture(scope="module")
def files():
    return converted()


@pytest.fixture(scope="module")
def batch():
    return crops(9, seed=5)


@pytest.fixture(scope="module")
def reference(batch):
    return {k: np.asarray(v) for k, v in tiny_model()(batch, training=False).items()}


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_format_runs_with_outputs_by_head_name(files, batch, reference, name):
    b = load_backend(files[name])
    spec = default_spec()
    assert b.format == name
    assert b.path == files[name]
    assert b.spec.head_names == spec.head_names
    out = b.run(batch)
    assert list(out) == list(spec.head_names)
    for h in spec.heads:
        assert out[h.name].shape == (len(batch), h.units) and out[h.name].dtype == np.float32
        ref = reference[h.name]
        assert np.abs(ref).max() > 1e-2, "the fixture model must carry signal"
        # each head is nearest its own Keras output among the heads of its shape, so a
        # positional mix-up (gender/smile/glasses are all 2 units) cannot pass
        same_shape = [g.name for g in spec.heads if g.units == h.units]
        dist = {g: float(np.abs(out[h.name] - reference[g]).mean()) for g in same_shape}
        assert min(dist, key=dist.get) == h.name, dist
        limit = {"tflite-fp32": 1e-4, "onnx-fp32": 1e-4, "tflite-fp16": 0.02}.get(name)
        if limit is not None:
            assert np.abs(out[h.name] - ref).max() <= limit * max(1.0, np.abs(ref).max())


def test_fp32_outputs_are_not_positional(files, batch, reference):
    """The TFLite converter orders outputs alphabetically (gender first); the spec starts with
    landmarks. Binding by signature name still puts each head's values under its name."""
    tfl = TFLiteFile.read(files["tflite-fp32"])
    assert tfl.tensors  # parsed
    out = load_backend(files["tflite-fp32"]).run(batch)
    for name in ("landmarks", "pose", "gender"):
        np.testing.assert_allclose(out[name], reference[name], atol=1e-4)


def test_onnx_outputs_bound_by_name_when_graph_order_changes(files, batch, reference, tmp_path):
    import onnx

    proto = onnx.load(str(files["onnx-fp32"]))
    outputs = list(proto.graph.output)
    del proto.graph.output[:]
    proto.graph.output.extend(reversed(outputs))
    path = tmp_path / "reordered.onnx"
    onnx.save(proto, str(path))
    out = load_backend(path).run(batch)
    for name, ref in reference.items():
        np.testing.assert_allclose(out[name], ref, atol=1e-4)


@pytest.mark.parametrize("name", ["tflite-fp32", "tflite-int8", "onnx-fp32"])
def test_any_batch_size(files, name):
    x = crops(MAX_BATCH + 7, seed=9)
    b = load_backend(files[name])
    whole = b.run(x)
    one = b.run(x[3:4])
    empty = b.run(x[:0])
    for h in b.spec.heads:
        assert whole[h.name].shape == (len(x), h.units)
        assert empty[h.name].shape == (0, h.units)
        np.testing.assert_allclose(one[h.name][0], whole[h.name][3], atol=1e-5)


def test_threads_option(files, batch):
    a = load_backend(files["tflite-int8"], threads=1).run(batch)
    b = load_backend(files["tflite-int8"], threads=2).run(batch)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)
    with pytest.raises(ValueError):
        load_backend(files["onnx-fp32"], threads=0)


def test_int8_io_quantised_with_the_files_own_parameters(files, batch):
    """Input quantised and each output dequantised with its own scale/zero point, which the
    embedded spec records too."""
    from ai_edge_litert.interpreter import Interpreter

    path = files["tflite-int8"]
    spec = read_spec(path)
    assert set(spec.quantization) == {"input", *spec.head_names}
    assert len({q.scale for k, q in spec.quantization.items() if k != "input"}) > 1, "one scale per output"
    b = load_backend(path)
    assert b.quantization == dict(spec.quantization)

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    (inp,) = runner.get_input_details().values()
    assert np.dtype(inp["dtype"]) == np.int8
    s, z = inp["quantization"]
    x = batch[:1]
    raw = runner(image=np.clip(np.round(x / s) + z, -128, 127).astype(np.int8))
    out = b.run(x)
    for name, details in runner.get_output_details().items():
        assert np.dtype(details["dtype"]) == np.int8
        s, z = details["quantization"]
        np.testing.assert_allclose(out[name], (raw[name].astype(np.float32) - z) * s, atol=1e-6)


def test_int8_with_float_io_is_the_int8_graph_with_quantization_inside(files, batch):
    """tflite-int8-float takes and gives float32, and its QUANTIZE/DEQUANTIZE ops compute what
    the backend's numpy does around the int8-I/O file: same calibration, same integer graph."""
    from ai_edge_litert.interpreter import Interpreter

    path = files["tflite-int8-float"]
    runner = Interpreter(model_path=str(path)).get_signature_runner()
    assert all(np.dtype(d["dtype"]) == np.float32 for d in
               [*runner.get_input_details().values(), *runner.get_output_details().values()])
    assert read_spec(path).quantization == {}
    ours, ref = load_backend(path), load_backend(files["tflite-int8"])
    a, b = ours.run(batch), ref.run(batch)
    for name, q in ref.quantization.items():
        if name != "input":
            # at most one quantization step apart (rounding of the input may differ by one code)
            np.testing.assert_allclose(a[name], b[name], atol=1.01 * q.scale, err_msg=name)


def test_a_tflite_file_that_answers_nan_is_refused_naming_the_head(files, batch, tmp_path):
    """The TFLite backend checks finiteness once over all heads' answers (one buffer); the
    error must still name the head that broke. The landmarks layer's bias is set to NaN."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(files["tflite-fp32"].read_bytes()))
    g = model.subgraphs[0]
    (landmarks,) = [o.tensorIndex for o in model.signatureDefs[0].outputs if o.name.decode() == "landmarks"]
    (op,) = [op for op in g.operators if landmarks in list(op.outputs)]
    bias = g.tensors[op.inputs[2]]
    units = len(model.buffers[bias.buffer].data) // 4
    model.buffers[bias.buffer].data = np.full(units, np.nan, np.float32).tobytes()
    p = tmp_path / "nan.tflite"
    p.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    b = load_backend(p)
    with pytest.raises(ModelFileError, match=r"nan.tflite: output 'landmarks' is not finite"):
        b.run(batch)
    ok = load_backend(files["tflite-fp32"]).run(batch)  # the same file unbroken answers
    assert all(np.isfinite(v).all() for v in ok.values())


def test_wrong_input_shape_is_a_clear_error(files):
    b = load_backend(files["onnx-fp32"])
    with pytest.raises(ValueError, match=r"expected a batch of shape \(N, 40, 40, 1\)"):
        b.run(np.zeros((2, 40, 40), np.float32))


def test_metadata_and_format_embedded(files):
    for name, path in files.items():
        meta = read_metadata(path)
        assert meta[FORMAT_KEY] == name
        assert read_spec(path).heads == default_spec().heads


# --- refusals ----------------------------------------------------------------------------------

def _refused(path, match):
    with pytest.raises(ModelFileError) as e:
        load_backend(path)
    assert str(path) in str(e.value)
    assert match in str(e.value), str(e.value)
    return str(e.value)


def test_refuses_missing_and_unknown_files(tmp_path):
    _refused(tmp_path / "nope.tflite", "no such file")
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"PK\x03\x04")
    _refused(keras_file, "unknown model file type")
    _refused(tmp_path, "not a file")


def test_refuses_corrupt_files(files, tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"this is not a model at all" * 10)
    _refused(junk, "not a TFLite model")
    data = files["tflite-fp32"].read_bytes()
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(data[: len(data) // 50])
    with pytest.raises(ModelFileError) as e:
        load_backend(cut)
    assert str(cut) in str(e.value)
    bad_onnx = tmp_path / "junk.onnx"
    bad_onnx.write_bytes(b"\x08\x07garbage" * 30)
    _refused(bad_onnx, "not a loadable ONNX model")
    onnx_as_tflite = tmp_path / "swapped.tflite"
    onnx_as_tflite.write_bytes(files["onnx-fp32"].read_bytes())
    _refused(onnx_as_tflite, "not a TFLite model")


def test_refuses_files_without_a_spec(files, tmp_path):
    import onnx

    path = tmp_path / "bare.tflite"
    path.write_bytes(raw_tflite_fp32())
    _refused(path, "no embedded facemtl spec")
    with pytest.raises(ModelFileError, match="no embedded facemtl spec"):
        read_spec(path)
    proto = onnx.load(str(files["onnx-fp32"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    _refused(bare, "no embedded facemtl spec")


def test_refuses_a_spec_that_does_not_match_the_outputs(files, tmp_path):
    import dataclasses

    import onnx

    from facemtl.convert.export import embed_onnx_metadata, embed_tflite_metadata

    spec = default_spec()
    fewer = spec.select(["landmarks", "pose"])
    path = tmp_path / "fewer.tflite"
    path.write_bytes(embed_tflite_metadata(files["tflite-fp32"].read_bytes(), {SPEC_KEY: fewer.to_json()}))
    _refused(path, "do not match the heads of its embedded spec")

    pose = spec.head("pose")
    narrow = dataclasses.replace(pose, units=3, labels=pose.labels[:3])
    wrong = spec.replace(heads=tuple(narrow if h.name == "pose" else h for h in spec.heads))
    proto = embed_onnx_metadata(onnx.load(str(files["onnx-fp32"])), {SPEC_KEY: wrong.to_json()})
    bad = tmp_path / "wrong_units.onnx"
    onnx.save(proto, str(bad))
    _refused(bad, "output 'pose' has shape")

    garbled = tmp_path / "garbled.tflite"
    garbled.write_bytes(embed_tflite_metadata(files["tflite-fp32"].read_bytes(), {SPEC_KEY: "{not json"}))
    _refused(garbled, "embedded spec is invalid")


def test_refuses_int8_file_whose_spec_records_other_quantization(files, tmp_path):
    from facemtl.convert.export import embed_tflite_metadata
    from facemtl.runtime.spec import QuantParams

    spec = read_spec(files["tflite-int8"])
    q = dict(spec.quantization)
    q["landmarks"] = QuantParams(q["landmarks"].scale * 2, q["landmarks"].zero_point)
    path = tmp_path / "lying.tflite"
    path.write_bytes(embed_tflite_metadata(files["tflite-int8"].read_bytes(), {SPEC_KEY: spec.replace(quantization=q).to_json()}))
    _refused(path, "records quantization")


# --- without TensorFlow ------------------------------------------------------------------------

def test_spec_and_backends_work_without_tensorflow(files, tmp_path):
    """A Pi has numpy, opencv and an interpreter: no TensorFlow, no `onnx`, no `flatbuffers` needed."""
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from facemtl.runtime.artifact import read_spec
        from facemtl.runtime.backends import load_backend
        for p in {[str(files[n]) for n in ("tflite-int8", "tflite-fp32", "onnx-int8")]!r}:
            spec = read_spec(p)
            b = load_backend(p)
            out = b.run(np.zeros((3, 40, 40, 1), np.float32))
            assert sorted(out) == sorted(spec.head_names), out
            assert out["landmarks"].shape == (3, 10)
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "onnx", "flatbuffers"))
        assert not bad, bad
        print("ok")
        """
    )
    r = run_blocked(code, tmp_path, blocked=("tensorflow", "keras", "tf_keras", "tf2onnx", "onnx", "train", "convert"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("ok")
