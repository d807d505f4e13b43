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


def warm_start(model, source) -> tuple[list[str], list[str]]:
    """Copy into `model` the weights of every layer of `source` with the same name and the
    same weight shapes (a teacher's stem and blocks into a student with a smaller pool, say);
    every other layer keeps Keras's initialisers. Returns (copied, kept) layer names."""
    known = {layer.name: layer for layer in source.layers}
    copied, kept = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        other = known.get(layer.name)
        if other is not None and [tuple(w.shape) for w in other.weights] == [tuple(w.shape) for w in layer.weights]:
            layer.set_weights(other.get_weights())
            copied.append(layer.name)
        else:
            kept.append(layer.name)
    return copied, kept


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
