"""Run a converted model file: normalised crops in, raw outputs by head name out.

    backend = load_backend("model_int8.tflite", threads=1)
    raw = backend.run(batch)          # (N, 40, 40, 1) float32 -> {"landmarks": (N, 10), ...}
    backend.spec.head("pose").decode(raw["pose"])

The interpreter is chosen by the file's suffix (`facemtl.runtime.formats`): .tflite runs in LiteRT
(`ai_edge_litert`), else `tflite_runtime`, else TensorFlow's `tf.lite` as a last resort on a
machine that has nothing else; .onnx runs in onnxruntime. Outputs are bound by name (TFLite
signature output name, ONNX graph output name) to the heads of the file's embedded spec,
never by position. Integer files get their input quantised and each output dequantised with
that tensor's own scale and zero point. A file whose outputs do not match its spec is refused.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from facemtl.runtime.artifact import (
    TFLITE_IDENTIFIER,
    ModelFileError,
    TFLiteFile,
    check_path,
    format_from_metadata,
    onnx_session,
    read_spec,
    spec_from_metadata,
)
from facemtl.runtime.formats import ONNX, TFLITE, backend_for
from facemtl.runtime.spec import ModelSpec, QuantParams

# Faces per interpreter call; a frame rarely has more, and it bounds the memory of big batches.
MAX_BATCH = 64

__all__ = ["Backend", "TFLiteBackend", "ONNXBackend", "ModelFileError", "load_backend", "load_backend_from_buffer", "read_spec", "tflite_interpreter_class"]


class Backend:
    """A model file in its interpreter. Subclasses implement `_load` and `_run_chunk`."""

    _interpreter = "the interpreter"  # what loads the file, for error messages

    def __init__(self, path: Path, spec: ModelSpec, format: str, threads: int):
        self.path = path
        self.spec = spec
        self.format = format
        self.threads = threads

    def _open(self, path: Path, threads: int, data: bytes | None) -> None:
        """`_load`, with whatever the interpreter raises turned into one ModelFileError line."""
        try:
            self._load(path, threads, data)
        except ModelFileError:
            raise
        except _INTERPRETER_ERRORS as e:
            raise ModelFileError(f"{path}: {self._interpreter} cannot load it ({_one_line(e)})") from None

    def _load(self, path: Path, threads: int, data: bytes | None) -> None:
        raise NotImplementedError

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(N, S, S, C) normalised float32 crops -> {head name: (N, units) float32 raw outputs}.

        Any N, including 0 (a frame with no faces gives empty arrays).
        """
        batch = np.asarray(batch, dtype=np.float32)
        want = self.spec.input.shape
        if batch.ndim != 4 or batch.shape[1:] != want:
            raise ValueError(f"{self.path.name}: expected a batch of shape (N, {', '.join(map(str, want))}), "
                             f"got {batch.shape}")
        n = len(batch)
        if n == 0:
            return {h.name: np.zeros((0, h.units), np.float32) for h in self.spec.heads}
        if n <= MAX_BATCH:  # the common case (one frame's faces) without the chunking around it
            return self._run_chunk(np.ascontiguousarray(batch))
        parts = [self._run_chunk(np.ascontiguousarray(batch[i:i + MAX_BATCH])) for i in range(0, n, MAX_BATCH)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_chunk(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, format={self.format!r}, heads={list(self.spec.head_names)})"


def _check_outputs(path: Path, spec: ModelSpec, shapes: dict[str, tuple]) -> None:
    """The file's named outputs must be exactly the spec's heads, each (batch, units)."""
    if set(shapes) != set(spec.head_names):
        raise ModelFileError(
            f"{path}: outputs {sorted(shapes)} do not match the heads of its embedded spec "
            f"{sorted(spec.head_names)}; the file was not written by `facemtl convert` or was altered"
        )
    for h in spec.heads:
        shape = tuple(shapes[h.name])
        if len(shape) != 2 or shape[1] != h.units:
            raise ModelFileError(f"{path}: output {h.name!r} has shape {shape} but the spec says (N, {h.units})")


def _check_input(path: Path, spec: ModelSpec, shape: tuple) -> None:
    if len(shape) != 4 or tuple(shape[1:]) != spec.input.shape:
        raise ModelFileError(f"{path}: input shape {tuple(shape)} does not match the spec's "
                             f"(N, {', '.join(map(str, spec.input.shape))})")


# --- TFLite -----------------------------------------------------------------------------------

# TFLite interpreters by the name `facemtl convert --check-with` and `load_backend` take.
TFLITE_INTERPRETERS = {"litert": "ai_edge_litert", "tflite-runtime": "tflite_runtime"}


def tflite_interpreter_class(name: str | None = None):
    """The Interpreter class of `name` ("litert" or "tflite-runtime"); without a name,
    LiteRT's, else tflite_runtime's, else TensorFlow's (a machine with no other)."""
    if name is not None:
        if name not in TFLITE_INTERPRETERS:
            raise ValueError(f"unknown TFLite interpreter {name!r}; choose from {', '.join(TFLITE_INTERPRETERS)}")
        module = TFLITE_INTERPRETERS[name]
        try:
            return importlib.import_module(f"{module}.interpreter").Interpreter
        except ImportError as e:
            raise ImportError(f"the {name} interpreter is not importable here ({e}); "
                              f"pip install {module.replace('_', '-')}") from None
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        import tensorflow as tf  # last resort only; the runtime never needs TensorFlow
        return tf.lite.Interpreter
    except ImportError:
        raise ImportError("running .tflite files needs a TFLite interpreter: "
                          "pip install ai-edge-litert (or tflite-runtime)") from None


def interpreter_name(interpreter_class) -> str:
    """"litert", "tflite-runtime" or "tensorflow": which package an Interpreter class is from."""
    top = interpreter_class.__module__.split(".")[0]
    return next((n for n, m in TFLITE_INTERPRETERS.items() if m == top), top)


def _quant(details: dict) -> QuantParams | None:
    """Per-tensor quantization of an integer I/O tensor; None for float tensors."""
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return None
    scales = details["quantization_parameters"]["scales"]
    zeros = details["quantization_parameters"]["zero_points"]
    if len(scales) != 1 or len(zeros) != 1 or not scales[0] > 0:
        raise ModelFileError(f"tensor {details['name']!r} is {dtype} without one per-tensor scale and zero point")
    return QuantParams(float(scales[0]), int(zeros[0]), dtype.name)


def _signature_details(interpreter, key: str) -> tuple[dict, dict]:
    """Input and output details by signature name. The runner is dropped before returning:
    it holds a reference to the interpreter's internals, which blocks resizing."""
    runner = interpreter.get_signature_runner(key)
    details = runner.get_input_details(), runner.get_output_details()
    del runner
    return details


# What interpreters raise for a file they cannot load, allocate or run: LiteRT and onnxruntime
# raise RuntimeError and ValueError (and ORT its own types); a corrupt shape or type can also
# surface as any of the rest. Each becomes a ModelFileError naming the file.
_INTERPRETER_ERRORS = (RuntimeError, ValueError, TypeError, KeyError, IndexError, OverflowError, MemoryError,
                       AttributeError, SystemError)


def _check_finite(path: Path, out: dict[str, np.ndarray]) -> None:
    """A model that answers NaN or inf for a finite crop is broken (a corrupt weight): refuse
    it here rather than let NaN landmarks reach the crop of the next frame."""
    for name, y in out.items():
        if not np.isfinite(y).all():
            raise ModelFileError(f"{path}: output {name!r} is not finite (NaN or inf); the file's weights are corrupt")


class TFLiteBackend(Backend):
    _interpreter = "the TFLite interpreter"

    def __init__(self, path: Path, threads: int = 1, data: bytes | None = None, interpreter: str | None = None):
        self._interpreter_choice = interpreter
        self._open(path, threads, data)

    def _load(self, path: Path, threads: int, data: bytes | None) -> None:
        tfl = TFLiteFile.read(path) if data is None else TFLiteFile(data, path)
        metadata = {}
        for k, v in tfl.metadata.items():
            try:
                metadata[k] = v.decode("utf-8")
            except UnicodeDecodeError:
                pass
        spec = spec_from_metadata(path, metadata)
        super().__init__(path, spec, format_from_metadata(path, metadata), threads)
        Interpreter = tflite_interpreter_class(self._interpreter_choice)
        self.interpreter = interpreter_name(Interpreter)  # which one runs the file
        try:
            self._it = Interpreter(model_content=tfl.data, num_threads=int(threads))
            signatures = self._it.get_signature_list()
        except _INTERPRETER_ERRORS as e:
            raise ModelFileError(f"{path}: the TFLite interpreter cannot load it ({_one_line(e)})") from None
        if len(signatures) != 1:
            raise ModelFileError(f"{path}: expected one signature, found {sorted(signatures) or 'none'}; "
                                 "outputs are bound by signature output name")
        inputs, outputs = _signature_details(self._it, next(iter(signatures)))
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: expected one input, found {sorted(inputs)}")
        (in_details,) = inputs.values()
        _check_input(path, spec, tuple(in_details["shape_signature"]))
        _check_outputs(path, spec, {k: tuple(v["shape_signature"]) for k, v in outputs.items()})
        # the signature's tensors live in the primary subgraph of a one-signature model: run it
        # through the plain tensor API, resizing only when the batch size changes
        self._in = in_details["index"]
        self._in_dtype = np.dtype(in_details["dtype"])
        self._out = {name: outputs[name]["index"] for name in spec.head_names}
        try:
            self._in_q = _quant(in_details)
            self._out_q = {name: _quant(outputs[name]) for name in spec.head_names}
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from None
        self._check_recorded_quantization()
        self._prepare_quantization()
        self._dynamic = int(in_details["shape_signature"][0]) == -1
        self._batch = int(in_details["shape"][0])
        if self._batch < 1:
            raise ModelFileError(f"{path}: input batch size {self._batch}")
        try:
            self._it.allocate_tensors()
        except _INTERPRETER_ERRORS as e:
            raise ModelFileError(f"{path}: the TFLite interpreter cannot allocate its tensors ({_one_line(e)})") from None

    def _check_recorded_quantization(self) -> None:
        """An integer file's spec records its I/O quantization; the tensors must agree with it."""
        found = {"input": self._in_q, **self._out_q}
        recorded = self.spec.quantization
        for name, q in found.items():
            r = recorded.get(name)
            if q is None or r is None:
                continue
            if not (np.isclose(r.scale, q.scale, rtol=1e-5) and r.zero_point == q.zero_point):
                raise ModelFileError(f"{self.path}: the spec records quantization {r} for {name!r} "
                                     f"but the file's tensor has scale {q.scale}, zero point {q.zero_point}")

    @property
    def quantization(self) -> dict[str, QuantParams]:
        """The file's own I/O quantization: "input" and one entry per head (integer files only)."""
        found = {"input": self._in_q, **self._out_q}
        return {k: v for k, v in found.items() if v is not None}

    def _prepare_quantization(self) -> None:
        """Constants of the per-call (de)quantization, computed once: at batch 1 the numpy
        calls around `invoke` are a large part of a call (`python bench/backend_overhead.py`:
        run() 0.213 ms against invoke() 0.179 ms on a tflite-int8 file of the default model).
        The packaged file is tflite-int8-float, whose graph does this itself (docs/convert.md)."""
        q = self._in_q
        if q is not None:
            info = np.iinfo(self._in_dtype)
            self._in_consts = (np.float32(q.scale), np.float32(q.zero_point), np.float32(info.min),
                               np.float32(info.max))
        # Every head's answer is written into one (N, all units) buffer and handed out as a
        # slice of it: one finiteness check a call instead of one a head, which at batch 1
        # was a third of what `run()` cost beyond `invoke()` (bench/backend_overhead.py).
        self._out_plan, start = [], 0
        for h in self.spec.heads:
            self._out_plan.append((h.name, self._out[h.name], self._dequantizer(self._out_q[h.name]), start,
                                   start + h.units))
            start += h.units
        self._out_units = start

    @staticmethod
    def _dequantizer(q: QuantParams | None):
        """None for a float output. For an 8-bit one, the float value of each of its 256 codes,
        indexed by the raw byte: one numpy call a head instead of three, which at batch 1 is
        most of what int8 outputs cost around `invoke`. Wider integers: (zero point, scale)."""
        if q is None:
            return None
        dtype = np.dtype(q.dtype)
        if dtype.itemsize == 1:
            codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
            return np.float32(q.scale) * (codes - np.float32(q.zero_point))
        return (np.float32(q.zero_point), np.float32(q.scale))

    def _invoke(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = len(x)
        if n != self._batch:
            self._it.resize_tensor_input(self._in, [n, *self.spec.input.shape])
            self._it.allocate_tensors()
            self._batch = n
        if self._in_q is not None:
            scale, zero, lo, hi = self._in_consts
            t = np.divide(x, scale, dtype=np.float32)  # a new buffer: the caller's x stays as it is
            np.rint(t, out=t)
            t += zero
            np.maximum(t, lo, out=t)
            np.minimum(t, hi, out=t)
            x = t.astype(self._in_dtype)
        self._it.set_tensor(self._in, x)
        self._it.invoke()
        buf = np.empty((n, self._out_units), np.float32)
        for name, index, dq, a, b in self._out_plan:
            y = self._it.get_tensor(index)
            if y.shape != (n, b - a):
                # a file whose head keeps extra unit axes, (N, 1, units): the same values
                if y.size != n * (b - a):
                    raise ModelFileError(f"{self.path}: output {name!r} came out with shape {y.shape}, "
                                         f"expected ({n}, {b - a})")
                y = y.reshape(n, b - a)
            if dq is None:
                buf[:, a:b] = y
            elif isinstance(dq, np.ndarray):  # each output has its own table
                buf[:, a:b] = dq.take(y.view(np.uint8))
            else:
                np.subtract(y, dq[0], out=buf[:, a:b], dtype=np.float32)
                buf[:, a:b] *= dq[1]
        out = {name: buf[:, a:b] for name, _, _, a, b in self._out_plan}
        if not np.isfinite(buf).all():
            _check_finite(self.path, out)  # names the head
        return out

    def _run_chunk(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._it is None:
            raise ModelFileError(f"{self.path}: the model is closed")
        try:
            if self._dynamic or len(batch) == self._batch:
                out = self._invoke(batch)
            else:
                parts = [self._invoke(batch[i:i + self._batch]) for i in range(0, len(batch), self._batch)]
                out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        except ModelFileError:
            raise
        except _INTERPRETER_ERRORS as e:
            raise ModelFileError(f"{self.path}: the TFLite interpreter failed to run it ({_one_line(e)})") from None
        return out  # _invoke checked each head's shape and that every value is finite

    def close(self) -> None:
        self._it = None


# --- ONNX -------------------------------------------------------------------------------------

class ONNXBackend(Backend):
    _interpreter = "onnxruntime"
    interpreter = "onnxruntime"  # which package runs the file (TFLiteBackend: litert, tflite-runtime)

    def __init__(self, path: Path, threads: int = 1, data: bytes | None = None):
        self._open(path, threads, data)

    def _load(self, path: Path, threads: int, data: bytes | None) -> None:
        self._sess = onnx_session(path, threads, data=data)
        metadata = dict(self._sess.get_modelmeta().custom_metadata_map)
        spec = spec_from_metadata(path, metadata)
        super().__init__(path, spec, format_from_metadata(path, metadata), threads)
        inputs = self._sess.get_inputs()
        if len(inputs) != 1:
            raise ModelFileError(f"{path}: expected one input, found {[i.name for i in inputs]}")
        shape = tuple(d if isinstance(d, int) else -1 for d in inputs[0].shape)
        _check_input(path, spec, shape)
        if inputs[0].type != "tensor(float)":
            raise ModelFileError(f"{path}: input is {inputs[0].type}, expected tensor(float)")
        outs = {o.name: tuple(d if isinstance(d, int) else -1 for d in o.shape) for o in self._sess.get_outputs()}
        _check_outputs(path, spec, outs)
        self._input = inputs[0].name
        self._names = list(spec.head_names)
        self._batch = shape[0]  # -1: any batch size

    def _run_chunk(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._sess is None:
            raise ModelFileError(f"{self.path}: the model is closed")
        step = len(batch) if self._batch == -1 else self._batch
        if step < 1:
            raise ModelFileError(f"{self.path}: input batch size {step}")
        parts = []
        try:
            for i in range(0, len(batch), step):
                ys = self._sess.run(self._names, {self._input: batch[i:i + step]})
                parts.append({n: np.asarray(y, np.float32).reshape(len(y), -1) for n, y in zip(self._names, ys)})
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (Fail, InvalidArgument, ...)
            raise ModelFileError(f"{self.path}: onnxruntime failed to run it ({_one_line(e)})") from None
        out = parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        _check_shapes(self.path, self.spec, len(batch), out)
        _check_finite(self.path, out)
        return out

    def close(self) -> None:
        self._sess = None


def _check_shapes(path: Path, spec: ModelSpec, n: int, out: dict[str, np.ndarray]) -> None:
    for h in spec.heads:
        y = out.get(h.name)
        if y is None or y.shape != (n, h.units):
            raise ModelFileError(f"{path}: output {h.name!r} came out with shape "
                                 f"{None if y is None else y.shape}, expected ({n}, {h.units})")


def _one_line(e: BaseException) -> str:
    """An interpreter's message in one line (LiteRT's span several: file, check, node)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = "; ".join(lines) if lines else type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


_BACKENDS = {TFLITE: TFLiteBackend, ONNX: ONNXBackend}


def load_backend(path: str | Path, threads: int = 1, interpreter: str | None = None) -> Backend:
    """Open a .tflite or .onnx file written by `facemtl convert` in its interpreter.

    `threads`: interpreter threads (1 = the per-face latency `facemtl bench` reports).
    `interpreter`: for a .tflite file, "litert" or "tflite-runtime" rather than the first
    one importable (ImportError if it is not installed).
    Raises ModelFileError (naming the file) for a missing, corrupt or foreign file, a file
    without an embedded spec, or one whose outputs do not match its spec.
    """
    path = check_path(path)
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if interpreter is None:
        return _BACKENDS[backend_for(path)](path, int(threads))
    if backend_for(path) != TFLITE:
        raise ValueError(f"{path.name}: only .tflite files take an interpreter choice, not {interpreter!r}")
    return TFLiteBackend(path, int(threads), interpreter=interpreter)


def load_backend_from_buffer(data: bytes, threads: int = 1, name: str = "<model buffer>") -> Backend:
    """`load_backend` for the bytes of a .tflite or .onnx file (read from an archive, a
    database, a network): the format is told by TFLite's flatbuffer identifier; `name`
    stands for the file in error messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ModelFileError(f"{name}: expected the bytes of a .tflite or .onnx file, got {type(data).__name__}")
    data = bytes(data)
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    kind = TFLITE if data[4:8] == TFLITE_IDENTIFIER else ONNX
    return _BACKENDS[kind](Path(name), int(threads), data=data)
