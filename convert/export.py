"""Exporters for every row of `facemtl.runtime.formats.FORMATS`, and the metadata they embed.

One path for all TFLite variants: the Keras model is exported once to a SavedModel
(`model.export(..., format="tf_saved_model")`, as Keras recommends; `from_keras_model`
breaks on some Keras 3 models) and each variant is converted from it with builtin ops only.
ONNX fp32 comes from `tf2onnx.convert.from_keras`; ONNX int8 is static QDQ quantization of
that file by `onnxruntime.quantization`, after its Dense layers are folded into one Gemm each.
The calibrated (int8-activation) formats start from a range-equalized copy of the model
(`facemtl.convert.equalize`). Every file gets the spec and its format name embedded (TFLite
metadata, ONNX metadata_props); nothing downstream binds by position.
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facemtl.runtime.artifact import TFLiteFile
from facemtl.runtime.formats import FORMAT_KEY, SPEC_KEY, Format
from facemtl.runtime.spec import ModelSpec, QuantParams

DEFAULT_OPSET = 13
MIN_OPSET = 9  # older opsets lack ops the trunk needs (and QDQ int8 needs 13 for per-channel)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is first imported


class ExportError(RuntimeError):
    """A format that could not be produced; the message says why (one line)."""


@dataclass
class ExportContext:
    """What the exporters share within one `facemtl convert` run.

    The SavedModel and the fp32 ONNX file are made once and reused by the variants that
    start from them. `calibration` is (N, S, S, 1) normalised training crops. Formats
    calibrated on crops (int8 activations) start from a range-equalized copy of the model
    (`facemtl.convert.equalize`, exact in float) unless `equalize` is off.
    """

    model: object                       # facemtl.train.model.FaceMTL
    spec: ModelSpec
    calibration: np.ndarray | None = None
    opset: int = DEFAULT_OPSET
    per_channel: bool = False            # onnx-int8 weights (TFLite int8 is always per-channel)
    equalize: bool = True
    float_heads: bool = False            # int8 formats with float outputs: head output layers stay float
    float_stem: bool = False             # int8 formats with float input: the first convolution stays float
    workdir: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._own_workdir = self.workdir is None
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="facemtl-convert-"))

    def close(self) -> None:
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _once(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def equalized(self, fmt: Format) -> bool:
        """Whether `fmt` starts from the equalized model: int8 activations, and equalize on."""
        return self.equalize and "calibration" in fmt.options

    @staticmethod
    def _int8_with_float_io(fmt: Format) -> bool:
        """int8 activations with float input and outputs: where layers can stay float at the
        graph's edges (`tflite-int8` takes and answers int8 by definition)."""
        return "calibration" in fmt.options and not fmt.integer_io

    def keeps_heads_float(self, fmt: Format) -> bool:
        """Whether `fmt` leaves each head's output layer in float (`float_heads`)."""
        return self.float_heads and self._int8_with_float_io(fmt)

    def keeps_stem_float(self, fmt: Format) -> bool:
        """Whether `fmt` leaves the first convolution in float (`float_stem`)."""
        return self.float_stem and self._int8_with_float_io(fmt)

    def float_layers(self, fmt: Format) -> bool:
        """Whether `fmt` keeps any layer in float inside an int8 graph (selective quantization)."""
        return self.keeps_heads_float(fmt) or self.keeps_stem_float(fmt)

    def _variant(self, fmt: Format) -> str:
        """Which model `fmt` starts from: "trained", or "equalized-pc" / "equalized-pt" (for
        per-channel or per-tensor weight quantization)."""
        if not self.equalized(fmt):
            return "trained"
        per_channel = self.per_channel if fmt.backend == "onnx" else True
        return "equalized-pc" if per_channel else "equalized-pt"

    def model_for(self, fmt: Format):
        variant = self._variant(fmt)
        if variant == "trained":
            return self.model

        def make():
            from facemtl.convert.equalize import equalize

            model, _ = equalize(self.model, self.need_calibration(fmt), per_channel_weights=variant == "equalized-pc")
            return model

        return self._once(variant, make)

    def saved_model(self, fmt: Format) -> Path:
        variant = self._variant(fmt)

        def make():
            path = self.workdir / f"saved_model_{variant}"
            self.model_for(fmt).export(str(path), format="tf_saved_model", verbose=False)
            return path

        return self._once(("saved_model", variant), make)

    def need_calibration(self, fmt: Format) -> np.ndarray:
        if self.calibration is None or len(self.calibration) == 0:
            raise ExportError(f"{fmt.name} needs calibration crops (give --data and --calibration N > 0)")
        return self.calibration


def export(fmt: Format, ctx: ExportContext, out: Path) -> None:
    """Write `fmt` of the context's model to `out` (the caller moves it into place)."""
    module, name = fmt.exporter.split(":")
    getattr(importlib.import_module(module), name)(fmt, ctx, Path(out))


# --- metadata -------------------------------------------------------------------------------

def metadata_for(spec: ModelSpec, fmt: Format) -> dict[str, str]:
    return {SPEC_KEY: spec.to_json(indent=None), FORMAT_KEY: fmt.name}


def embed_tflite_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    """The same TFLite model with metadata entries `entries` (UTF-8), replacing same-named ones."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    model.metadata = [m for m in (model.metadata or []) if m.name.decode() not in entries]
    for key, text in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        model.buffers.append(buf)
        meta = schema.MetadataT()
        meta.name = key
        meta.buffer = len(model.buffers) - 1
        model.metadata.append(meta)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def embed_onnx_metadata(model_proto, entries: dict[str, str]):
    keep = [p for p in model_proto.metadata_props if p.key not in entries]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for key, text in entries.items():
        p = model_proto.metadata_props.add()
        p.key, p.value = key, text
    return model_proto


# --- TFLite ---------------------------------------------------------------------------------

def tflite_converter(fmt: Format, ctx: ExportContext):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(fmt)))
    # builtin ops only: a model that would need Flex (TF) ops fails here, not on the Pi
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if fmt.variant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif fmt.variant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif fmt.variant in ("int8", "int8-float"):
        crops = ctx.need_calibration(fmt)

        def representative():
            for i in range(len(crops)):
                yield [crops[i:i + 1]]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if fmt.integer_io:  # else float32 in and out, converted by the graph's own ops
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif fmt.variant != "fp32":
        raise ExportError(f"no TFLite recipe for {fmt.name}")
    return conv


def tflite_io_quantization(data: bytes) -> dict[str, QuantParams]:
    """'input' and per-output-name quantization of an integer TFLite model, by signature name."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=bytes(data))
    runner = it.get_signature_runner()
    out = {}
    (inp,) = runner.get_input_details().values()
    for name, d in [("input", inp), *runner.get_output_details().items()]:
        if np.dtype(d["dtype"]).kind != "f":
            scale, zero = d["quantization"]
            out[name] = QuantParams(float(scale), int(zero), np.dtype(d["dtype"]).name)
    return out


def _tflite_float_tensors(ctx: ExportContext, fmt: Format) -> list[str]:
    """Names, in TFLite's graph of the model (its float conversion), of the tensors whose
    layers stay float: each head's output (a signature output: the head's Dense layer) with
    `float_heads`, the first convolution's output with `float_stem`."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(fmt))).convert())
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    found = []
    if ctx.keeps_heads_float(fmt):
        found += [names[d["index"]] for d in it.get_signature_runner().get_output_details().values()]
    if ctx.keeps_stem_float(fmt):
        conv = next((op for op in it._get_ops_details() if op["op_name"] == "CONV_2D"), None)
        if conv is None:
            raise ExportError("cannot find a first convolution to keep in float (--float-stem)")
        found.append(names[conv["outputs"][0]])
    return found


def _float_layers_tflite(conv, fmt: Format, ctx: ExportContext) -> bytes:
    """The full-integer graph with some layers left in float: TensorFlow's selective
    quantization (the QuantizationDebugger's denylist). The trunk, where nearly all of the
    multiply-adds are, stays int8. The heads' output layers (`float_heads`), where the answers'
    precision is, lose nothing to output scales (bench/int8_layers.py measures what that buys).
    The first convolution (`float_stem`) reads one grey channel: XNNPACK's int8 kernel runs such
    a convolution about 3x slower than its float one (README, Convert), and its int8 rounding
    is the trunk's largest (bench/int8_layers.py), so in float it costs less time, not more."""
    import tensorflow as tf

    crops = ctx.need_calibration(fmt)
    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=_tflite_float_tensors(ctx, fmt))
    dbg = tf.lite.experimental.QuantizationDebugger(
        converter=conv, debug_options=opts, debug_dataset=lambda: ([crops[i:i + 1]] for i in range(min(8, len(crops)))))
    return dbg.get_nondebug_quantized_model()


def export_tflite(fmt: Format, ctx: ExportContext, out: Path) -> None:
    try:
        conv = tflite_converter(fmt, ctx)
        data = _float_layers_tflite(conv, fmt, ctx) if ctx.float_layers(fmt) else conv.convert()
    except ExportError:
        raise
    except Exception as e:  # the converter raises ConverterError and friends
        raise ExportError(f"TFLite converter: {_first_line(e)}") from e
    custom = TFLiteFile(data, out).custom_ops
    if custom:
        raise ExportError(f"the model needs non-builtin ops {sorted(set(custom))}; only builtin TFLite ops run on the Pi")
    spec = ctx.spec
    if fmt.integer_io:
        spec = spec.replace(quantization=tflite_io_quantization(data))
    out.write_bytes(embed_tflite_metadata(data, metadata_for(spec, fmt)))


# --- ONNX -----------------------------------------------------------------------------------

def _onnx_fp32(ctx: ExportContext, fmt: Format) -> bytes:
    """tf2onnx's float file of the model `fmt` starts from (made once per model)."""

    def make():
        import tensorflow as tf
        import tf2onnx
        from tf2onnx.constants import OPSET_TO_IR_VERSION

        newest = max(OPSET_TO_IR_VERSION)
        if not MIN_OPSET <= ctx.opset <= newest:
            raise ExportError(f"opset {ctx.opset} is not supported; tf2onnx {tf2onnx.__version__} writes opsets "
                              f"{MIN_OPSET}..{newest} (default {DEFAULT_OPSET})")
        model = ctx.model_for(fmt)
        name = model.inputs[0].name if getattr(model, "inputs", None) else "image"
        signature = (tf.TensorSpec((None, *ctx.spec.input.shape), tf.float32, name=name),)
        try:
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ctx.opset)
        except Exception as e:
            raise ExportError(f"tf2onnx (opset {ctx.opset}): {_first_line(e)}") from e
        outputs = sorted(o.name for o in proto.graph.output)
        if outputs != sorted(ctx.spec.head_names):
            raise ExportError(f"tf2onnx named the outputs {outputs}, not after the heads {sorted(ctx.spec.head_names)}")
        return proto.SerializeToString()

    return ctx._once(("onnx", ctx._variant(fmt)), make)


def export_onnx(fmt: Format, ctx: ExportContext, out: Path) -> None:
    import onnx

    proto = onnx.load_from_string(_onnx_fp32(ctx, fmt))
    embed_onnx_metadata(proto, metadata_for(ctx.spec, fmt))
    onnx.save(proto, str(out))


def _matmul_input_ranks(proto) -> dict[str, int]:
    """Rank of every MatMul's first input, measured by running the float model once on two
    zero crops (tf2onnx's dynamic flatten leaves them unknown to static shape inference)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    names = sorted({n.input[0] for n in probe.graph.node if n.op_type == "MatMul"})
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [2 if not isinstance(d, int) else d for d in inp.shape]
    values = sess.run(names, {inp.name: np.zeros(shape, np.float32)})
    return {n: v.ndim for n, v in zip(names, values)}


def fold_dense(proto) -> int:
    """Dense layers as one Gemm: MatMul(X, W) -> [Mul(s)] -> Add(b), constants W, s, b and a
    2-D X, becomes Gemm(X, W * s, b). Returns how many were folded.

    tf2onnx leaves a Dense bias as a separate Add and a batch norm after a Dense layer as
    Mul + Add. Quantized as they stand, each intermediate is its own int8 tensor: the
    MatMul output before the batch-norm scale has channels of very different ranges (the
    small ones round to zero) and every head is quantized twice. TFLite's converter folds
    these; this does the same for ONNX, exact in float arithmetic.
    """
    from onnx import helper, numpy_helper

    graph = proto.graph
    ranks = _matmul_input_ranks(proto)
    consts = {i.name: i for i in graph.initializer}
    graph_outputs = {o.name for o in graph.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def next_op(name: str, op: str, units: int):
        """The single consumer of `name` if it is `op` with a (units,) constant, and that constant."""
        users = consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op or name in graph_outputs:
            return None, None
        node = users[0]
        other = node.input[1] if node.input[0] == name else node.input[0]
        if other not in consts:
            return None, None
        v = numpy_helper.to_array(consts[other])
        if v.size != units or v.shape[-1] != units:
            return None, None
        return node, v.reshape(units).astype(np.float32)

    replaced = {}  # id(first node of a chain) -> Gemm; id(other chain nodes) -> None
    for n in graph.node:
        if n.op_type != "MatMul" or n.input[1] not in consts or ranks.get(n.input[0]) != 2:
            continue
        w = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
        if w.ndim != 2:
            continue
        chain, out = [n], n.output[0]
        mul, s = next_op(out, "Mul", w.shape[1])
        if mul is not None:
            w, out = w * s[None, :], mul.output[0]
            chain.append(mul)
        add, b = next_op(out, "Add", w.shape[1])
        if add is None:
            continue
        chain.append(add)
        stem = f"{n.name or n.output[0]}".replace(":", "_").replace("/", "_")
        wi, bi = numpy_helper.from_array(w, f"{stem}_gemm_w"), numpy_helper.from_array(b, f"{stem}_gemm_b")
        graph.initializer.extend([wi, bi])
        replaced[id(n)] = helper.make_node("Gemm", [n.input[0], wi.name, bi.name], [add.output[0]], name=f"{stem}_gemm")
        for c in chain[1:]:
            replaced[id(c)] = None
    if replaced:
        nodes = [replaced.get(id(node), node) for node in graph.node]
        del graph.node[:]
        graph.node.extend(node for node in nodes if node is not None)
        used = {i for node in graph.node for i in node.input}
        for init in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(init)
    return sum(1 for v in replaced.values() if v is not None)


class _CalibrationReader:
    """onnxruntime's CalibrationDataReader over the calibration crops, one face at a time."""

    def __init__(self, input_name: str, crops: np.ndarray):
        self.input_name = input_name
        self.crops = crops
        self.i = 0

    def get_next(self):
        if self.i >= len(self.crops):
            return None
        x = self.crops[self.i:self.i + 1]
        self.i += 1
        return {self.input_name: x}

    def rewind(self) -> None:
        self.i = 0


def export_onnx_int8(fmt: Format, ctx: ExportContext, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    crops = ctx.need_calibration(fmt)
    CalibrationDataReader.register(_CalibrationReader)
    work = Path(tempfile.mkdtemp(prefix="onnx-int8-", dir=ctx.workdir))
    try:
        fp32 = work / "fp32.onnx"
        proto = onnx.load_from_string(_onnx_fp32(ctx, fmt))
        pre = work / "pre.onnx"
        q = work / "int8.onnx"
        try:
            fold_dense(proto)
            onnx.save(proto, str(fp32))
            # shape inference + graph optimisation first, as onnxruntime recommends for static quantization
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # static shapes: no sympy needed
            pre_proto = onnx.load(str(pre), load_external_data=False)
            input_name = pre_proto.graph.input[0].name
            quantize_static(
                str(pre), str(q), _CalibrationReader(input_name, crops),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=ctx.per_channel,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=((onnx_head_nodes(pre_proto) if ctx.keeps_heads_float(fmt) else [])
                                  + (onnx_stem_nodes(pre_proto) if ctx.keeps_stem_float(fmt) else [])) or None,
            )
        except Exception as e:
            raise ExportError(f"onnxruntime.quantization: {_first_line(e)}") from e
        proto = onnx.load(str(q))
        embed_onnx_metadata(proto, metadata_for(ctx.spec, fmt))
        onnx.save(proto, str(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def onnx_head_nodes(proto) -> list[str]:
    """The nodes that compute each graph output from the shared features: walking back from
    the output through shape-only nodes to the Gemm (or MatMul, and an Add after it) that makes
    it. Left out of quantization, they keep the heads in float."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    found = []
    for out in proto.graph.output:
        node = producer.get(out.name)
        while node is not None and node.op_type in ("Identity", "Reshape", "Flatten", "Squeeze"):
            node = producer.get(node.input[0])
        if node is not None and node.op_type == "Add":
            found.append(node.name)
            node = next((producer[i] for i in node.input if i in producer), None)
        if node is None or node.op_type not in ("Gemm", "MatMul"):
            raise ExportError(f"cannot find the Dense layer of output {out.name!r} to keep it in float")
        found.append(node.name)
    return found


def onnx_stem_nodes(proto) -> list[str]:
    """The first convolution of the graph (nodes are in topological order): the one that reads
    the grey image. Left out of quantization, it stays in float."""
    conv = next((n for n in proto.graph.node if n.op_type == "Conv"), None)
    if conv is None:
        raise ExportError("cannot find a first convolution to keep in float (--float-stem)")
    return [conv.name]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    for line in text.splitlines():
        if line.strip():
            return f"{type(e).__name__}: {line.strip()}"[:300]
    return type(e).__name__

