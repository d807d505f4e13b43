"""Fine-tuning: start from a trained model (`--init`), add heads from their specs
(`--add-head`), freeze the trunk (`--freeze trunk`).

A new head is only a new `HeadSpec` in the model's spec: `FaceMTL` builds its output layer
from the spec like any other head's, every other layer keeps its trained weights (copied by
layer name, which the trunk and heads fix), and the spec written beside `model.keras` carries
the head on to conversion and the runtime, which bind outputs by name.
"""

from __future__ import annotations

import logging
from pathlib import Path

from facemtl.runtime.spec import CLASSIFICATION, HeadSpec, ModelSpec, SpecError

log = logging.getLogger(__name__)

FREEZE = ("none", "trunk")
NEW_HEAD_WEIGHT = 0.25  # the loss weight of MTFL's attribute heads


def parse_head(text: str) -> HeadSpec:
    """`NAME:classification:LABEL1,LABEL2[,...]` -> a classification HeadSpec."""
    parts = text.split(":")
    if len(parts) != 3:
        raise SpecError(f"--add-head {text!r}: expected NAME:classification:LABEL1,LABEL2")
    name, kind, labels = (p.strip() for p in parts)
    if kind != CLASSIFICATION:
        raise SpecError(f"--add-head {text!r}: only classification heads can be added (landmarks are the one "
                        "regression head), got kind {kind!r}")
    names = tuple(x.strip() for x in labels.split(",") if x.strip())
    if len(set(names)) != len(names):
        raise SpecError(f"--add-head {text!r}: labels must be distinct")
    return HeadSpec(name, CLASSIFICATION, len(names), names, loss_weight=NEW_HEAD_WEIGHT,
                    description="added by fine-tuning (--add-head)")


def add_heads(spec: ModelSpec, heads: list[HeadSpec]) -> ModelSpec:
    for h in heads:
        if h.name in spec.head_names:
            old = spec.head(h.name)
            if old.labels != h.labels:
                raise SpecError(f"--add-head {h.name}: the model already has head {h.name!r} with labels "
                                f"{', '.join(old.labels)}")
            continue
        spec = spec.replace(heads=spec.heads + (h,))
    return spec


def model_spec_of(path: Path, model) -> ModelSpec:
    """The spec beside `model.keras` (it holds the detector calibrations), else the one inside."""
    spec_file = Path(path).with_name("spec.json")
    return ModelSpec.load(spec_file) if spec_file.exists() else model.model_spec


def head_layer_names(spec: ModelSpec) -> set[str]:
    names = set()
    for h in spec.heads:
        names |= {h.name, f"{h.name}_hidden", f"{h.name}_hidden_relu"}
    return names


def rebuild_with(base, spec: ModelSpec):
    """A FaceMTL with `base`'s trunk options and `spec`'s heads; every layer `base` has, by
    name, starts from `base`'s weights, and a new head from Keras's initialisers."""
    from facemtl.train.model import FaceMTL

    config = dict(base.get_config())
    config["spec"] = spec.replace(trunk=config.get("trunk", spec.trunk)).to_dict()
    model = FaceMTL.from_config(config)
    known = {layer.name: layer for layer in base.layers}
    fresh = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name in known:
            layer.set_weights(known[layer.name].get_weights())
        else:
            fresh.append(layer.name)
    if fresh:
        log.info("new layers (initialised, not copied): %s", ", ".join(fresh))
    return model


def warm_start(model, source, prune: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Copy into `model` the weights of every layer of `source` with the same name and the
    same weight shapes (a teacher's stem and blocks into a student with a smaller pool, say);
    every other layer keeps Keras's initialisers. Returns (copied, pruned, kept) layer names.

    `prune`: a layer of the same name and kernel size but fewer channels than the source's
    gets the source's weights for the channels kept (structured pruning): a convolution
    keeps the output channels whose following batch norm has the largest |gamma| (the scale
    by which a channel reaches the next layer: "network slimming", Liu et al., ICCV 2017),
    and every later layer of the chain reads exactly those channels. This lets a trunk with
    a thinner stem or first block start from a trained wider one (issue 20, run 61); it
    assumes the chain of a plain trunk (each layer reads the one before it), as `mtfl` is."""
    known = {layer.name: layer for layer in source.layers}
    copied, pruned, kept = [], [], []
    sel = None  # source channels that the map flowing into the next layer holds (None: all of them)
    for layer in model.layers:
        if not layer.weights:
            continue
        other = known.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if other is not None and sel is None and [tuple(w.shape) for w in other.weights] == shapes:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
            continue
        weights = _pruned_weights(layer, other, known, sel) if prune and other is not None else None
        if weights is None:
            kept.append(layer.name)
            sel = None
            continue
        weights, sel = weights
        layer.set_weights(weights)
        pruned.append(layer.name)
    return copied, pruned, kept


def _pruned_weights(layer, other, known: dict, sel):
    """(weights, channels out) of `other` cut to `layer`'s shapes, reading input channels
    `sel` of `other`'s (None: all); None where the two do not differ in channels alone."""
    import keras
    import numpy as np

    ws = [np.asarray(w) for w in other.get_weights()]
    shapes = [tuple(w.shape) for w in layer.weights]
    if type(layer) is not type(other) or len(ws) != len(shapes):
        return None
    if isinstance(layer, keras.layers.BatchNormalization):
        out = [w if sel is None else w[sel] for w in ws]
        return (out, sel) if [o.shape for o in out] == shapes else None
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # kernel (kh, kw, channels, 1)
        out = [ws[0] if sel is None else ws[0][:, :, sel]] + [w if sel is None else w[sel] for w in ws[1:]]
        return (out, sel) if [o.shape for o in out] == shapes else None
    if isinstance(layer, keras.layers.Conv2D) and len(ws) == 1:  # kernel (kh, kw, in, out), no bias
        k = ws[0] if sel is None else ws[0][:, :, sel]
        n_out = shapes[0][3]
        if k.shape[:3] != shapes[0][:3] or n_out > k.shape[3]:
            return None
        # the batch norm that follows it: "<name>_bn" ("block1_pw_bn"), or the stem's "stem_bn"
        bn = known.get(f"{layer.name}_bn") or known.get(f"{layer.name.removesuffix('_conv')}_bn")
        if n_out == k.shape[3]:
            chosen = None
        elif isinstance(bn, keras.layers.BatchNormalization):
            gamma = np.abs(np.asarray(bn.gamma))
            chosen = np.sort(np.argsort(-gamma, kind="stable")[:n_out])
        else:
            return None
        return ([k if chosen is None else k[..., chosen]], chosen)
    return None


def freeze(model, spec: ModelSpec, mode: str, trained_heads: set[str]) -> list[str]:
    """Make the trunk untrainable (`mode` "trunk"), and always the heads no training face
    labels: their loss is 0, but weight decay would still shrink them. Returns the frozen
    layer names. A frozen BatchNormalization layer runs in inference mode (Keras 3), so the
    trunk's statistics stay the ones the other heads were trained with."""
    if mode not in FREEZE:
        raise ValueError(f"--freeze must be one of {', '.join(FREEZE)}, got {mode!r}")
    heads = head_layer_names(spec)
    untrained = set()
    for h in spec.heads:
        if h.name not in trained_heads:
            untrained |= head_layer_names(spec.select([h.name]))
    frozen = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if (mode == "trunk" and layer.name not in heads) or layer.name in untrained:
            layer.trainable = False
            frozen.append(layer.name)
    return frozen
