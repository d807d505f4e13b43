"""A tiny FaceMTL model and its six converted files, made once per test session.

Shared by tests/test_convert*.py and tests/test_backends*.py. The model is the real default
trunk at width 4 with random weights; its batch-norm statistics are then set from its own
activations on the crops below, so every layer and head carries signal (untrained BN
statistics would shrink the outputs to ~1e-7 and hide any conversion error).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np

from facemtl.runtime.formats import FORMATS
from facemtl.runtime.preprocess import normalize
from facemtl.runtime.spec import default_spec

WORK = Path(tempfile.mkdtemp(prefix="facemtl-test-convert-"))
atexit.register(shutil.rmtree, WORK, True)


def crops(n: int, seed: int = 0) -> np.ndarray:
    """Normalised (n, 40, 40, 1) crops of smooth random blobs, like the model's real input."""
    import cv2

    rng = np.random.default_rng(seed)
    x = np.empty((n, 40, 40, 1), np.float32)
    for i in range(n):
        img = cv2.GaussianBlur(rng.uniform(0, 255, (40, 40)).astype(np.float32), (0, 0), rng.uniform(1.0, 4.0))
        x[i, :, :, 0] = normalize(img, default_spec().input)
    return x


def set_batchnorm_stats(model, x: np.ndarray, seed: int = 0) -> None:
    """Moving mean/variance of every BatchNormalization from its own input on `x`, in order, and
    a spread of gammas and betas as training leaves them (channels of one tensor then differ in
    range, as in a trained model; quantization must cope with that)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            a = np.asarray(keras.Model(model.input, layer.input)(x, training=False))
            a = a.reshape(-1, a.shape[-1])
            c = a.shape[-1]
            gamma = np.exp(rng.normal(0.0, 0.35, c)).astype(np.float32)
            beta = rng.normal(0.0, 0.3, c).astype(np.float32)
            layer.set_weights([gamma, beta, a.mean(0), a.var(0) + 1e-3])


@functools.lru_cache(maxsize=None)
def tiny_model_path(activation: str = "relu6") -> Path:
    import keras

    from facemtl.train.model import build_model

    keras.utils.set_random_seed(0)
    model = build_model(default_spec(), width=4, dropout=0.0, activation=activation)
    set_batchnorm_stats(model, crops(64, seed=1))
    rng = np.random.default_rng(1)
    for name in model.output_names:  # trained heads have biases (the mean face, class priors)
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel, rng.normal(0, 0.5, bias.shape).astype(np.float32)])
    path = WORK / f"model-{activation}" / "model.keras"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


@functools.lru_cache(maxsize=None)
def tiny_model(activation: str = "relu6"):
    from facemtl.train.model import load_model

    return load_model(tiny_model_path(activation))


@functools.lru_cache(maxsize=None)
def converted() -> dict[str, Path]:
    """Format name -> file of the tiny model, every row of the format table (no checks)."""
    from facemtl.convert.export import ExportContext, export

    model = tiny_model()
    out = WORK / "converted"
    out.mkdir()
    files = {}
    with ExportContext(model, model.model_spec, crops(64, seed=2)) as ctx:
        for fmt in FORMATS:
            path = out / fmt.file_name()
            export(fmt, ctx, path)
            files[fmt.name] = path
    return files


@functools.lru_cache(maxsize=None)
def raw_tflite_fp32() -> bytes:
    """The fp32 file as the converter wrote it, before facemtl embedded its metadata."""
    from tensorflow.lite.tools import flatbuffer_utils

    from facemtl.runtime.formats import FORMAT_KEY, SPEC_KEY

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(converted()["tflite-fp32"].read_bytes()))
    model.metadata = [m for m in model.metadata if m.name.decode() not in (SPEC_KEY, FORMAT_KEY)]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
