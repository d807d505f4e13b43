"""Where full-integer quantization costs a model its accuracy.

Converts MODEL with `facemtl convert`'s own `tflite-int8-float` converter (the same 500
seeded training crops calibrate it), then
1. prints each quantized layer's error on calibration crops, in quantization steps
   (TensorFlow's QuantizationDebugger: RMSE of the int8 layer against its float twin, fed
   the same int8 inputs, over its output scale; about 0.29 is rounding alone);
2. scores the held-out faces (the validation part of training.txt, as the conversion check
   does) with the float model, the all-int8 file, and files where some layers stay in float
   (the debugger's selective quantization): every head's output layer, the stem, or both;
3. times each variant's `invoke()` at batch 1, one thread, the files interleaved.

    python bench/int8_layers.py models/default/model.keras [--data DIR] [--json FILE]

A diagnosis tool: nothing it writes is shipped; `facemtl convert` makes the files.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _debugger(ctx, crops: np.ndarray, denylist: list[str] | None = None):
    """TensorFlow's QuantizationDebugger on `facemtl convert`'s own tflite-int8-float converter."""
    import tensorflow as tf

    from facemtl.convert.export import tflite_converter
    from facemtl.runtime.formats import get_format

    opts = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist) if denylist else None
    return tf.lite.experimental.QuantizationDebugger(
        converter=tflite_converter(get_format("tflite-int8-float"), ctx), debug_options=opts,
        debug_dataset=lambda: ([crops[i:i + 1]] for i in range(0, len(crops), 5)))


def _run(data: bytes, x: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Outputs by head name, one face at a time, and each output's tensor name."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=data, num_threads=1)
    runner = it.get_signature_runner()
    (key,) = runner.get_input_details()
    names = {d["index"]: d["name"] for d in it.get_tensor_details()}
    tensors = {k: names[d["index"]] for k, d in runner.get_output_details().items()}
    outs = [runner(**{key: x[i:i + 1]}) for i in range(len(x))]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, tensors


def _scores(spec, outputs: dict, held) -> dict[str, float]:
    from facemtl.convert.check import head_metric

    return {h.name: round(float(head_metric(h, outputs[h.name], held.landmarks, held.labels)), 3) for h in spec.heads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="model.keras (spec.json beside it)")
    ap.add_argument("--data", default=os.environ.get("FACEMTL_DATA", "../shared/data/mtfl"))
    ap.add_argument("--calibration", type=int, default=500)
    ap.add_argument("--runs", type=int, default=2000, help="timed invoke() calls per variant (median, one thread)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from facemtl.convert.bench import tflite_invoke_ms
    from facemtl.convert.data import calibration, held_out
    from facemtl.convert.export import ExportContext
    from facemtl.runtime.spec import ModelSpec
    from facemtl.train.model import load_model

    spec = ModelSpec.load(args.model.with_name("spec.json"))
    model = load_model(args.model)
    crops = calibration(args.data, spec, args.calibration).x
    held = held_out(args.data, spec)
    report = {"model": str(args.model), "faces": len(held), "layers": [], "variants": {}}
    with ExportContext(model, spec, crops) as ctx:
        dbg = _debugger(ctx, crops)
        dbg.run()
        buf = io.StringIO()
        dbg.layer_statistics_dump(buf)
        buf.seek(0)
        print("quantized layer error on calibration crops, in steps of its output scale (rounding alone: 0.29)")
        stem = None
        for row in csv.DictReader(buf):
            steps = float(row["mean_squared_error"]) ** 0.5 / float(row["scale"])
            name = row["tensor_name"].split(";")[0]  # fused ops list every op they hold
            if stem is None and "stem" in name:
                stem = row["tensor_name"]  # the debugger denylists by the full name
            report["layers"].append({"tensor": name, "op": row["op_name"], "error_steps": round(steps, 3)})
            print(f"  {steps:6.3f}  {row['op_name']:18s} {name}")

        reference = {k: np.asarray(v) for k, v in model.predict(held.x, batch_size=512, verbose=0).items()}
        report["variants"]["float (Keras)"] = _scores(spec, reference, held)
        files = {"all int8": dbg.get_nondebug_quantized_model()}
        all_int8, tensors = _run(files["all int8"], held.x)
        report["variants"]["all int8"] = _scores(spec, all_int8, held)
        # a signature output's tensor is its head's output layer: the name the debugger denylists
        for label, deny in (("heads' output layers in float", list(tensors.values())),
                            ("stem in float", [stem]),
                            ("heads and stem in float", [*tensors.values(), stem])):
            files[label] = _debugger(ctx, crops, deny).get_nondebug_quantized_model()
            report["variants"][label] = _scores(spec, _run(files[label], held.x)[0], held)
    # what each variant costs at batch 1 on one thread, the files taking turns (as facemtl bench)
    latency = {label: med for label, (med, _) in zip(files, tflite_invoke_ms(list(files.values()), args.runs))}
    print(f"\n{len(held)} held-out faces ({held.source}); landmarks: NME %, classes: accuracy %")
    heads = [h.name for h in spec.heads]
    print(f"  {'variant':32s} " + " ".join(f"{h:>9s}" for h in heads) + "  invoke ms")
    for label, s in report["variants"].items():
        ms = f"{latency[label]:10.4f}" if label in latency else ""
        print(f"  {label:32s} " + " ".join(f"{s[h]:9.3f}" for h in heads) + ms)
        if label in latency:
            s["invoke_ms"] = round(latency[label], 4)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
