"""Shared trunks: image in, feature vector out. A trunk never knows which tasks exist.

Built from plain Keras layers only (no Lambda), so `model.keras` loads with safe_mode=True
and every layer maps to a builtin TFLite / standard ONNX op.
"""

from __future__ import annotations

import keras
from keras import layers

from facemtl.train.config import DEFAULT_TRUNK, POOLS  # noqa: F401  (re-exported)


@keras.saving.register_keras_serializable("facemtl")
class Abs(layers.Layer):
    """|x|: TCDCN's absolute-tanh nonlinearity, as a serialisable layer (not a Lambda)."""

    def call(self, x):
        return keras.ops.abs(x)


def tcdcn(x, width: int = 0, dropout: float = 0.0, activation: str = "abs_tanh"):
    """The TCDCN trunk as published (ECCV 2014): four conv layers with absolute tanh and max
    pooling, a 256-unit shared feature. `width` and `activation` are fixed by the paper
    (kept for a uniform signature); tanh is bounded already."""
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


# ReLU6, not ReLU: int8 quantization gives every tensor one scale for its whole range, and
# an unbounded ReLU lets a few heavy-tailed activations stretch that range until the small
# variations the landmark head reads round away (measured: +0.87 NME points after int8 with
# ReLU, docs/convert.md). Bounded activations keep the ranges tight.
_RELU_MAX = {"relu": None, "relu6": 6.0}


def _act(x, activation: str, name: str):
    try:
        return layers.ReLU(max_value=_RELU_MAX[activation], name=name)(x)
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; use relu or relu6") from None


def _conv_bn(x, filters: int, stride: int, name: str, activation: str):
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return _act(x, activation, f"{name}_relu")


def _separable(x, filters: int, stride: int, name: str, activation: str):
    """Depthwise 3x3 + pointwise 1x1, each with BN and the activation (MobileNet v1 block)."""
    x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(x)
    x = layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = _act(x, activation, f"{name}_dw_relu")
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_pw")(x)
    x = layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return _act(x, activation, f"{name}_pw_relu")


# (filters as multiples of width, stride): 40 -> 20 -> 10 -> 5. The first row's multiple is
# what `first_block` replaces (2 is its default).
_MTFL_BLOCKS = ((2, 1), (2, 2), (2, 1), (4, 2), (4, 1), (4, 1))


BOTTLENECK = 16  # channels of the last map kept by pool="bottleneck"


def mtfl(x, width: int = 32, dropout: float = 0.2, activation: str = "relu6", depth: int = 5, first_block: int = 2,
         stem: int = 0, features: int = 256, pool: str = "flatten"):
    """The default: a BN+ReLU trunk of depthwise-separable blocks sized for 40x40 and the edge.

    A full 3x3 stem with stride 2, then separable blocks down to 5x5. The last map is
    flattened, not pooled: landmark positions live in where features are, which global
    pooling throws away. Depthwise-separable because full 3x3 convolutions of the same
    width cost 3x the latency on a CPU for little accuracy (README, "How the default was chosen").
    `depth` keeps the first blocks of the table: five (the default) are 5% faster in int8
    than six and scored better on validation (docs/experiments.md, run 6). `first_block` sets the filters
    of the first block (a multiple of width): at 20x20 its pointwise convolution is the
    costliest layer (one width: int8 0.156 against 0.181 ms, `bench/trunks.json`). `stem`:
    filters of the first convolution (0: `width`). `features`: units of the shared feature layer
    that every head reads; it reads the whole flattened 5x5 map, which makes it the costliest
    single layer at batch 1 (3200x256 weights: about a quarter of the int8 trunk's time).
    `pool`: how the last 5x5 map becomes the feature vector. "flatten": flattened, then the
    Dense feature layer. "gdc": MobileFaceNet's global depthwise convolution: a 1x1
    convolution to `features` channels, then one 5x5 depthwise kernel per channel (a weight per
    position and channel, so where a feature is still counts) with no dense layer: about a
    twentieth of the parameters of "flatten" (issue 20). "bottleneck": a 1x1 convolution
    to 16 channels first, then flattened (5x5x16 = 400 values) and the Dense feature layer:
    every position is kept, only the channels are compressed (a low-rank form of "flatten").
    "gdc-fine": "gdc", plus a global depthwise convolution over the last 10x10 map (the input
    of the last stride-2 block), whose channels join the features (`features` counts both,
    so the 5x5 GDC keeps the rest): a weight per position at twice the resolution, for the
    landmarks, at a 1x1 convolution's fraction of the cost; it did not move the landmarks on
    validation (docs/experiments.md, run 66). The shipped model (run 67) is "gdc" with a 16-filter
    stem, a one-width first block and no dropout; these defaults are its teacher's (run 23).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    # The stem reads 3x3 grey patches, nine numbers, so it has at most nine independent linear
    # features; but after BatchNorm and ReLU6 its filters are not redundant: 16 instead of 32
    # make the int8 trunk 20% faster and cost smile 0.7 points over three seeds (docs/experiments.md, runs 14-17).
    x = _conv_bn(x, stem or width, 2, "stem", activation)  # 20x20
    if not 1 <= depth <= len(_MTFL_BLOCKS):
        raise ValueError(f"depth must be 1..{len(_MTFL_BLOCKS)} separable blocks, got {depth}")
    if first_block < 1:
        raise ValueError(f"first_block must be >= 1, got {first_block}")
    blocks = ((first_block, _MTFL_BLOCKS[0][1]),) + _MTFL_BLOCKS[1:depth]
    fine = None  # the input of the last stride-2 block
    for i, (mult, stride) in enumerate(blocks, 1):
        if stride == 2:
            fine = x
        x = _separable(x, mult * width, stride, f"block{i}", activation)
    if features < 1:
        raise ValueError(f"features must be >= 1, got {features}")
    if pool in ("gdc", "gdc-fine"):
        coarse = features
        if pool == "gdc-fine":
            if fine is None or fine.shape[1] == x.shape[1]:
                raise ValueError("pool gdc-fine needs a stride-2 block after the stem (depth >= 2)")
            coarse = features - fine.shape[-1]
            if coarse < 1:
                raise ValueError(f"pool gdc-fine: features must exceed the fine map's {fine.shape[-1]} channels, got {features}")
        x = layers.Conv2D(coarse, 1, use_bias=False, name="gdc_pw")(x)
        x = layers.BatchNormalization(name="gdc_pw_bn")(x)
        x = _act(x, activation, "gdc_pw_relu")
        x = layers.DepthwiseConv2D(x.shape[1], padding="valid", use_bias=False, name="gdc_dw")(x)  # 5x5 -> 1x1
        x = layers.BatchNormalization(name="features_bn")(x)
        x = _act(x, activation, "features_act")
        if pool == "gdc-fine":
            # One 10x10 depthwise kernel would be the exact form, but LiteRT's XNNPACK runs it 30% slower
            # than the whole rest of the trunk (`bench/trunks.py --set issue20-fine`); a 2x2 kernel of
            # stride 2 then a 5x5 one (a factorised 10x10 weight per channel) costs nothing measurable.
            f = layers.DepthwiseConv2D(2, strides=2, padding="valid", use_bias=False, name="fine_dw2")(fine)  # 10x10 -> 5x5
            f = layers.DepthwiseConv2D(f.shape[1], padding="valid", use_bias=False, name="fine_dw")(f)  # 5x5 -> 1x1
            f = layers.BatchNormalization(name="fine_bn")(f)
            f = _act(f, activation, "fine_act")
            x = layers.Concatenate(name="features_cat")([x, f])
        x = layers.Flatten(name="features")(x)
        if dropout:
            x = layers.Dropout(dropout, name="dropout")(x)
        return x
    if pool == "bottleneck":
        x = layers.Conv2D(BOTTLENECK, 1, use_bias=False, name="bottleneck_pw")(x)
        x = layers.BatchNormalization(name="bottleneck_bn")(x)
        x = _act(x, activation, "bottleneck_relu")
    x = layers.Flatten(name="flatten")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Dense(features, use_bias=False, name="features_dense")(x)
    x = layers.BatchNormalization(name="features_bn")(x)
    return _act(x, activation, "features")


TRUNKS = {"tcdcn": tcdcn, "mtfl": mtfl}


def build_trunk(name: str, x, **options):
    try:
        fn = TRUNKS[name]
    except KeyError:
        raise ValueError(f"unknown trunk {name!r}; choose one of {', '.join(TRUNKS)}") from None
    return fn(x, **options)
