"""The one table of model file formats: name, file suffix, interpreter, options, exporter.

`convert/` exports, checks and benchmarks by looping over `FORMATS`; `facemtl.runtime.backends`
picks an interpreter from a file's suffix through it. The exporter is named by a dotted
path (resolved by `convert/`), so this module stays data only: no TensorFlow, no convert/.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TFLITE = "tflite"
ONNX = "onnx"

# Backend -> file suffix. A file's suffix picks its interpreter.
SUFFIXES = {TFLITE: ".tflite", ONNX: ".onnx"}

# Keys of the metadata entries (TFLite metadata, ONNX metadata_props) every converted file carries.
SPEC_KEY = "facemtl_spec"      # the ModelSpec as JSON, UTF-8
FORMAT_KEY = "facemtl_format"  # the format's name in this table, e.g. "tflite-int8"


@dataclass(frozen=True)
class Format:
    """One row of the table. `options` are the converter options the format accepts."""

    name: str
    backend: str
    options: tuple[str, ...]
    exporter: str                # "module:function" in convert/, called as f(model, out_path, context)
    integer_io: bool = False     # int8 input and outputs, quantised per tensor
    atol: float | None = None    # float formats must match Keras this closely on every output
    description: str = ""

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.backend]

    @property
    def variant(self) -> str:
        """The part after the backend: fp32, fp16, dynamic, int8, int8-float."""
        return self.name.split("-", 1)[1]

    def file_name(self, stem: str = "model") -> str:
        """model_int8.tflite, model_fp32.onnx, ..."""
        return f"{stem}_{self.variant}{self.suffix}"


FORMATS: tuple[Format, ...] = (
    Format("tflite-fp32", TFLITE, (), "facemtl.convert.export:export_tflite", atol=1e-4,
           description="float32 TFLite, builtin ops only"),
    Format("tflite-fp16", TFLITE, (), "facemtl.convert.export:export_tflite",
           description="float16 weights, float32 compute and I/O"),
    Format("tflite-dynamic", TFLITE, (), "facemtl.convert.export:export_tflite",
           description="dynamic-range quantization: int8 weights, float I/O"),
    Format("tflite-int8", TFLITE, ("calibration", "equalize"), "facemtl.convert.export:export_tflite",
           integer_io=True,
           description="full integer: int8 weights, activations, input and outputs; calibrated on training crops, "
                       "ranges equalized first"),
    # The same integer graph with float32 at its edges: TFLite's own QUANTIZE and DEQUANTIZE ops
    # convert the input and the outputs inside `invoke`, which at batch 1 costs less than
    # doing it in numpy around the call (`python bench/backend_overhead.py`). The packaged default.
    Format("tflite-int8-float", TFLITE, ("calibration", "equalize"), "facemtl.convert.export:export_tflite",
           description="int8 weights and activations, float32 input and outputs (quantized inside the graph); "
                       "calibrated and equalized as tflite-int8"),
    Format("onnx-fp32", ONNX, ("opset",), "facemtl.convert.export:export_onnx", atol=1e-4,
           description="float32 ONNX (tf2onnx)"),
    Format("onnx-int8", ONNX, ("opset", "calibration", "per_channel", "equalize"),
           "facemtl.convert.export:export_onnx_int8",
           description="static QDQ int8 (onnxruntime.quantization), signed int8, float I/O"),
)

FORMAT_NAMES: tuple[str, ...] = tuple(f.name for f in FORMATS)


def get_format(name: str) -> Format:
    for f in FORMATS:
        if f.name == name:
            return f
    raise ValueError(f"unknown format {name!r}; choose from {', '.join(FORMAT_NAMES)}")


def backend_for(path: str | Path) -> str | None:
    """The interpreter family for a file, from its suffix; None if no backend reads it."""
    suffix = Path(path).suffix.lower()
    for backend, s in SUFFIXES.items():
        if s == suffix:
            return backend
    return None


def of_same_kind(folder: Path, names, like: str | Path | None) -> Path | None:
    """The first of the files `names` present in `folder` whose suffix is `like`'s (a packaged
    stage to pair with the packaged model: .tflite with .tflite), else the first present; None
    if none is."""
    present = [Path(folder) / n for n in names if (Path(folder) / n).is_file()]
    if like is not None:
        same = [p for p in present if p.suffix == Path(like).suffix]
        if same:
            return same[0]
    return present[0] if present else None
