"""Cross-layer range equalization before integer quantization (Nagel et al., ICCV 2019).

An int8 activation tensor has one scale for all its channels. After BatchNorm + ReLU the
channels of one tensor can differ 20-50x in range, so the quiet channels get a handful of
levels and their information rounds away; the landmark head, which reads small variations of
the shared features, is the first to suffer. ReLU is positive-homogeneous, so a channel can be
divided by s > 0 at its BatchNorm and multiplied back in the weights that read it, exactly in
float arithmetic:

    ReLU(BN(x) / s) = ReLU(BN(x)) / s        W'[c] = W[c] * s

Consumers whose weights are quantized per channel along that same channel (depthwise
convolutions, when the quantizer uses per-channel weights) take any s at no cost, so their inputs are equalized fully (s = range / mean
range). Other consumers (1x1 convolutions, Dense) quantize per output channel, so a large s
coarsens their weights: there s = sqrt(activation range / weight range) balances the two
(CLE). The model is changed on a copy; the original is untouched.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None
    return history[0] if isinstance(history, tuple) else history.operation


def _graph(model):
    """layer -> list of layers consuming its output (functional models, one node per layer)."""
    consumers: dict[int, list] = {}
    for layer in model.layers:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for t in inputs:
            p = _producer(t)
            if p is not None:
                consumers.setdefault(id(p), []).append(layer)
    return consumers


def _pairs(model):
    """(BatchNorm, consumers) for every BN -> ReLU whose ReLU output is only read (directly, or
    through Flatten / Dropout) by Conv2D, DepthwiseConv2D or Dense layers."""
    import keras

    consumers = _graph(model)
    out = []
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        after = consumers.get(id(bn), [])
        if len(after) != 1 or not isinstance(after[0], keras.layers.ReLU):
            continue
        relu = after[0]
        if relu.max_value is not None or relu.negative_slope or relu.threshold:
            continue  # not positive-homogeneous
        readers, ok, frontier = [], True, list(consumers.get(id(relu), []))
        while frontier:
            layer = frontier.pop()
            if isinstance(layer, (keras.layers.Dropout, keras.layers.Flatten)):
                frontier += consumers.get(id(layer), [])
            elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
                readers.append(layer)
            else:
                ok = False
                break
        outputs = {id(t) for t in model.outputs}
        if ok and readers and id(relu.output) not in outputs and len(bn.get_weights()) == 4:
            out.append((bn, relu, readers))
    return out


def _input_scale_axis(layer, channels: int):
    """How layer's kernel indexes the equalized channel: (kernel reshaped so that axis -2 of a
    (positions, channels, outputs) view is that channel, restore function)."""
    import keras

    k = layer.kernel.numpy()
    if isinstance(layer, keras.layers.DepthwiseConv2D):   # (kh, kw, C, mult): per-channel weights
        return k, (lambda s: k * s.reshape(1, 1, -1, 1)), True
    if isinstance(layer, keras.layers.Conv2D):             # (kh, kw, C, out)
        return k, (lambda s: k * s.reshape(1, 1, -1, 1)), False
    # Dense: (inputs, out); inputs = positions x channels after a channels-last Flatten
    positions = k.shape[0] // channels
    return k, (lambda s: k * np.tile(s, positions).reshape(-1, 1)), False


def equalize(model, crops: np.ndarray, percentile: float = 99.99, per_channel_weights: bool = True,
             batch_size: int = 256):
    """A copy of `model` with every equalizable BatchNorm+ReLU channel range balanced.

    Ranges are the `percentile` of each channel's activations on `crops` (calibration crops).
    `per_channel_weights`: the quantizer gives each output channel of a convolution its own
    weight scale (TFLite always; ONNX with per_channel), so depthwise readers take full
    equalization; with per-tensor weights every reader takes the balanced (CLE) rule.
    Returns (new model, number of tensors equalized). Outputs equal the original's up to
    float rounding.
    """
    import keras

    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    pairs = _pairs(clone)
    if not pairs:
        return clone, 0
    probe = keras.Model(clone.inputs, [relu.output for _, relu, _ in pairs])
    acts = probe.predict(crops, batch_size=batch_size, verbose=0)
    if len(pairs) == 1:
        acts = [acts]
    for (bn, relu, readers), a in zip(pairs, acts):
        channels = a.shape[-1]
        r1 = np.maximum(np.percentile(a.reshape(-1, channels), percentile, axis=0), _EPS)
        kernels = [_input_scale_axis(layer, channels) for layer in readers]
        if not per_channel_weights:
            kernels = [(k, scaled, False) for k, scaled, _ in kernels]
        if all(per_channel for _, _, per_channel in kernels):
            s = r1 / r1.mean()
        else:
            r2 = np.zeros(channels)
            for k, _, per_channel in kernels:
                if per_channel:
                    continue
                view = k.reshape(-1, channels, k.shape[-1])  # (positions, channels, outputs)
                # each reader's weights relative to its own largest, so one big head does not decide for all
                r2 = np.maximum(r2, np.abs(view).max(axis=(0, 2)) / max(np.abs(k).max(), _EPS))
            s = np.sqrt(r1 / np.maximum(r2, _EPS))
            s = s / np.exp(np.log(s).mean())
        s = s.astype(np.float32)
        gamma, beta, mean, var = bn.get_weights()
        bn.set_weights([gamma / s, beta / s, mean, var])
        for layer, (_, scaled, _) in zip(readers, kernels):
            layer.kernel.assign(scaled(s).astype(np.float32))
    return clone, len(pairs)
