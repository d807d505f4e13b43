"""Shared trunks: image in, feature vector out. A trunk never knows which tasks exist.

Built from plain Keras layers only (no Lambda), so `model.keras` loads with safe_mode=True
and every layer maps to a builtin TFLite / standard ONNX op.
"""

from __future__ import annotations

import keras
from keras import layers

from train.config import DEFAULT_TRUNK  # noqa: F401  (re-exported)


@keras.saving.register_keras_serializable("facemtl")
class Abs(layers.Layer):
    """|x|: TCDCN's absolute-tanh nonlinearity, as a serialisable layer (not a Lambda)."""

    def call(self, x):
        return keras.ops.abs(x)


def tcdcn(x, width: int = 0, dropout: float = 0.0):
    """The TCDCN trunk as published (ECCV 2014): four conv layers with absolute tanh and max
    pooling, a 256-unit shared feature. `width` is unused (kept for a uniform signature)."""
    for i, (filters, k, pool) in enumerate([(20, 5, True), (48, 3, True), (64, 3, True), (80, 2, False)], 1):
        x = layers.Conv2D(filters, k, padding="valid", name=f"conv{i}")(x)
        x = layers.Activation("tanh", name=f"tanh{i}")(x)
        x = Abs(name=f"abs{i}")(x)
        if pool:
            x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(256, name="features")(x)
    x = layers.Activation("tanh", name="features_tanh")(x)
    return Abs(name="features_abs")(x)


def _conv_bn(x, filters: int, stride: int, name: str):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable(x, filters: int, stride: int, name: str):
    """Depthwise 3x3 + pointwise 1x1, each with BN+ReLU (MobileNet v1 block)."""
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return layers.ReLU(name=f"{name}_pw_relu")(x)


# (filters as multiples of width, stride): 40 -> 20 -> 10 -> 5
_MTFL_BLOCKS = ((2, 1), (2, 2), (2, 1), (4, 2), (4, 1), (4, 1))


def mtfl(x, width: int = 32, dropout: float = 0.2):
    """The default: a BN+ReLU trunk of depthwise-separable blocks sized for 40x40 and the edge.

    A full 3x3 stem with stride 2, then separable blocks down to 5x5. The last map is
    flattened, not pooled: landmark positions live in where features are, which global
    pooling throws away. Depthwise-separable because full 3x3 convolutions of the same
    width cost 3x the latency on a CPU for little accuracy (see README, "Choosing the trunk").
    """
    x = _conv_bn(x, width, 2, "stem")  # 20x20
    for i, (mult, stride) in enumerate(_MTFL_BLOCKS, 1):
        x = _separable(x, mult * width, stride, f"block{i}")
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(256, use_bias=False, name="features_dense")(x)
    x = layers.BatchNormalization(name="features_bn")(x)
    return layers.ReLU(name="features")(x)


TRUNKS = {"tcdcn": tcdcn, "mtfl": mtfl}


def build_trunk(name: str, x, **options):
    try:
        fn = TRUNKS[name]
    except KeyError:
        raise ValueError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNKS)}") from None
    return fn(x, **options)
