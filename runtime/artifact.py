"""What a converted model file says about itself, read without TensorFlow.

Every file `facemtl convert` writes carries its `ModelSpec` as JSON under the metadata key
`facemtl_spec` and its format name under `facemtl_format`:
- TFLite: entries of the flatbuffer's `metadata` table, read here by a small reader of the
  TFLite schema (standard library only), so a Pi needs no TensorFlow, not even `flatbuffers`;
- ONNX: `metadata_props`, read through onnxruntime (`custom_metadata_map`), not `onnx`.

A file that is missing, of an unknown kind, corrupt, or without a spec is refused with a
`ModelFileError` that names the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from facemtl.runtime.formats import FORMAT_KEY, FORMAT_NAMES, ONNX, SPEC_KEY, SUFFIXES, TFLITE, backend_for
from facemtl.runtime.spec import ModelSpec, SpecError
from facemtl.runtime.errors import ModelFileError  # noqa: F401 (re-exported)

TFLITE_IDENTIFIER = b"TFL3"

# TFLite TensorType values (schema.fbs) that this project meets.
TENSOR_TYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 7: "int16", 9: "int8"}


def check_path(path: str | Path) -> Path:
    """The path as a Path if it is an existing file of a kind a backend reads, else ModelFileError."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if not path.is_file():
        raise ModelFileError(f"{path}: not a file")
    if backend_for(path) is None:
        raise ModelFileError(
            f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}; "
            f"facemtl runs {' and '.join(SUFFIXES.values())} files (convert a .keras model with `facemtl convert`)"
        )
    return path


# --- A minimal reader of the TFLite flatbuffer ----------------------------------------------
# Flatbuffers layout: a table starts with an int32 offset back to its vtable; the vtable holds
# uint16 byte offsets of each field ("slot") in the table, 0 for an absent field. References to
# tables, vectors and strings are uint32 offsets from where they are stored.

class _Corrupt(Exception):
    pass


class _Table:
    __slots__ = ("buf", "pos", "_vt", "_vt_len")

    def __init__(self, buf: bytes, pos: int):
        self.buf, self.pos = buf, pos
        self._vt = pos - _read(buf, "<i", pos)
        self._vt_len = _read(buf, "<H", self._vt)

    def _field(self, slot: int) -> int:
        o = 4 + 2 * slot
        if o + 2 > self._vt_len:
            return 0
        return _read(self.buf, "<H", self._vt + o)

    def scalar(self, slot: int, fmt: str, default=0):
        off = self._field(slot)
        return _read(self.buf, fmt, self.pos + off) if off else default

    def _ref(self, slot: int) -> int | None:
        off = self._field(slot)
        if not off:
            return None
        p = self.pos + off
        return p + _read(self.buf, "<I", p)

    def table(self, slot: int) -> "_Table | None":
        p = self._ref(slot)
        return None if p is None else _Table(self.buf, p)

    def vector(self, slot: int) -> tuple[int, int]:
        """(start of the elements, count); (0, 0) for an absent vector."""
        p = self._ref(slot)
        if p is None:
            return 0, 0
        return p + 4, _read(self.buf, "<I", p)

    def bytes_(self, slot: int) -> bytes | None:
        start, n = self.vector(slot)
        if self._ref(slot) is None:
            return None
        if start + n > len(self.buf):
            raise _Corrupt(f"vector at {start} runs past the end of the file")
        return self.buf[start:start + n]

    def string(self, slot: int) -> str:
        b = self.bytes_(slot)
        return "" if b is None else b.decode("utf-8", errors="replace")

    def tables(self, slot: int) -> list["_Table"]:
        start, n = self.vector(slot)
        out = []
        for i in range(n):
            p = start + 4 * i
            out.append(_Table(self.buf, p + _read(self.buf, "<I", p)))
        return out

    def numbers(self, slot: int, fmt: str) -> tuple:
        start, n = self.vector(slot)
        size = struct.calcsize("<" + fmt)
        if n and start + n * size > len(self.buf):
            raise _Corrupt(f"vector at {start} runs past the end of the file")
        return struct.unpack_from(f"<{n}{fmt}", self.buf, start) if n else ()


def _read(buf: bytes, fmt: str, at: int):
    if at < 0 or at + struct.calcsize(fmt) > len(buf):
        raise _Corrupt(f"offset {at} outside the file")
    return struct.unpack_from(fmt, buf, at)[0]


@dataclass(frozen=True)
class TFLiteTensor:
    index: int
    name: str
    type: str                      # "float32", "int8", ... (TENSOR_TYPES), or "type<N>"
    shape: tuple[int, ...]
    buffer: int                    # index into the model's buffers; 0 = no data
    scale: tuple[float, ...] = ()  # quantization, one entry per tensor or per channel
    zero_point: tuple[int, ...] = ()


class TFLiteFile:
    """The parts of a .tflite file facemtl needs: metadata, operators, tensors, buffers.

    Reads the schema's Model table directly (fields by slot: 1 operator_codes, 2 subgraphs,
    4 buffers, 6 metadata); anything that does not parse is a ModelFileError naming the file.
    """

    def __init__(self, data: bytes, path: str | Path = "<bytes>"):
        self.path = Path(path)
        self.data = bytes(data)
        if len(self.data) < 8 or self.data[4:8] != TFLITE_IDENTIFIER:
            raise ModelFileError(f"{path}: not a TFLite model (no TFL3 flatbuffer identifier)")
        try:
            self._model = _Table(self.data, _read(self.data, "<I", 0))
            self.metadata = self._read_metadata()
            self.operator_codes = self._read_operator_codes()
            self.tensors = self._read_tensors()
        except (_Corrupt, struct.error, UnicodeDecodeError, ValueError, IndexError, OverflowError, RecursionError,
                MemoryError) as e:
            raise ModelFileError(f"{path}: corrupt TFLite model ({e or type(e).__name__})") from None

    @classmethod
    def read(cls, path: str | Path) -> "TFLiteFile":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelFileError(f"{path}: cannot read ({e.strerror})") from None
        return cls(data, path)

    def _buffers(self) -> list[_Table]:
        return self._model.tables(4)

    def buffer_span(self, index: int) -> tuple[int, int]:
        """(file offset, size in bytes) of buffer `index`'s data; (0, 0) if it holds none."""
        buffers = self._buffers()
        if not 0 <= index < len(buffers):
            raise _Corrupt(f"buffer index {index} out of range ({len(buffers)} buffers)")
        b = buffers[index]
        offset = b.scalar(1, "<Q")
        if offset > 1:  # data stored after the flatbuffer (models over 2 GB)
            size = b.scalar(2, "<Q")
            if offset + size > len(self.data):
                raise _Corrupt(f"buffer {index} runs past the end of the file")
            return offset, size
        start, n = b.vector(0)
        if n and start + n > len(self.data):
            raise _Corrupt(f"buffer {index} runs past the end of the file")
        return (start, n) if n else (0, 0)

    def buffer_bytes(self, index: int) -> bytes:
        start, n = self.buffer_span(index)
        return self.data[start:start + n]

    def _read_metadata(self) -> dict[str, bytes]:
        out = {}
        for m in self._model.tables(6):
            out[m.string(0)] = self.buffer_bytes(m.scalar(1, "<I"))
        return out

    def _read_operator_codes(self) -> list[tuple[int, str]]:
        """(builtin code, custom code) per operator code; custom code "" for builtin ops."""
        codes = []
        for oc in self._model.tables(1):
            deprecated = oc.scalar(0, "<b")
            builtin = oc.scalar(3, "<i")
            codes.append((max(deprecated, builtin), oc.string(1)))
        return codes

    def _read_tensors(self) -> list[TFLiteTensor]:
        subgraphs = self._model.tables(2)
        if not subgraphs:
            raise _Corrupt("no subgraphs")
        tensors = []
        for i, t in enumerate(subgraphs[0].tables(0)):
            q = t.table(4)
            scale = q.numbers(2, "f") if q is not None else ()
            zero = q.numbers(3, "q") if q is not None else ()
            ttype = t.scalar(1, "<b")
            tensors.append(TFLiteTensor(i, t.string(3), TENSOR_TYPES.get(ttype, f"type{ttype}"),
                                        tuple(t.numbers(0, "i")), t.scalar(2, "<I"), tuple(scale), tuple(zero)))
        return tensors

    @property
    def custom_ops(self) -> list[str]:
        """Names of non-builtin operators (Flex ops are custom ops named Flex...)."""
        return [c for _, c in self.operator_codes if c]


# --- Spec and format ------------------------------------------------------------------------

def read_metadata(path: str | Path) -> dict[str, str]:
    """All string metadata of a model file: TFLite metadata entries or ONNX metadata_props."""
    path = check_path(path)
    if backend_for(path) == TFLITE:
        out = {}
        for k, v in TFLiteFile.read(path).metadata.items():
            try:
                out[k] = v.decode("utf-8")
            except UnicodeDecodeError:
                continue  # binary metadata (e.g. the converter's own); not ours
        return out
    return dict(onnx_session(path, threads=1).get_modelmeta().custom_metadata_map)


def spec_from_metadata(path: str | Path, metadata: dict[str, str]) -> ModelSpec:
    text = metadata.get(SPEC_KEY)
    if text is None:
        raise ModelFileError(
            f"{path}: no embedded facemtl spec (metadata {SPEC_KEY!r}); "
            "only files written by `facemtl convert` can be run"
        )
    try:
        return ModelSpec.from_json(text)
    except SpecError as e:
        raise ModelFileError(f"{path}: the embedded spec is invalid: {e}") from None


def format_from_metadata(path: str | Path, metadata: dict[str, str]) -> str:
    """The format-table name the file records; the backend family if it records none."""
    name = metadata.get(FORMAT_KEY, "")
    return name if name in FORMAT_NAMES else backend_for(path)


def read_spec(path: str | Path) -> ModelSpec:
    """The ModelSpec embedded in a .tflite or .onnx file, without TensorFlow."""
    return spec_from_metadata(path, read_metadata(path))


def onnx_session(path: str | Path, threads: int = 1, data: bytes | None = None):
    """An onnxruntime CPU session for `path` (or for `data`, the file's bytes, where given);
    a file ORT cannot load is a ModelFileError."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"{path}: running .onnx files needs onnxruntime (pip install onnxruntime)") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path) if data is None else data, sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own types (InvalidProtobuf, Fail, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelFileError(f"{path}: not a loadable ONNX model ({msg})") from None


__all__ = [
    "ModelFileError", "TFLiteFile", "TFLiteTensor", "check_path", "read_metadata", "read_spec",
    "spec_from_metadata", "format_from_metadata", "onnx_session", "ONNX", "TFLITE",
]
