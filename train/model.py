"""The multi-task model: a trunk and one head per `HeadSpec`, dict outputs keyed by head name.

`FaceMTL` is a functional Keras model whose config is exactly its constructor's arguments
(the spec as a dict and the trunk options), so `model.keras` rebuilds from config and loads
with safe_mode=True; the spec it carries is the same one written beside it as JSON.
"""

from __future__ import annotations

from pathlib import Path

import keras

from facemtl.runtime.spec import ModelSpec
from facemtl.train.heads import MultiHead
from facemtl.train.config import DEFAULT_TRUNK
from facemtl.train.trunks import build_trunk
from facemtl.runtime.errors import ModelFileError  # noqa: F401 (re-exported)


@keras.saving.register_keras_serializable("facemtl")
class FaceMTL(keras.Model):
    def __init__(self, spec: dict, trunk: str = DEFAULT_TRUNK, width: int = 32, dropout: float = 0.2,
                 activation: str = "relu6", depth: int = 5, first_block: int = 2, head_hidden: int = 0, stem: int = 0,
                 features: int = 256, pool: str = "flatten", **kwargs):
        model_spec = ModelSpec.from_dict(spec)
        if not model_spec.heads:
            raise ValueError("the model spec has no heads; give at least one (--heads)")
        # === Layers and functional model ===
        inputs = keras.Input(model_spec.input.shape, name="image")
        options = {"width": width, "dropout": dropout}
        if trunk != "tcdcn":
            options["activation"] = activation
            options["depth"] = depth
            options["first_block"] = first_block
            options["stem"] = stem
            options["features"] = features
            options["pool"] = pool
        shared = build_trunk(trunk, inputs, **options)
        outputs = MultiHead.from_spec(model_spec, hidden=head_hidden).outputs(shared)
        kwargs.setdefault("name", "facemtl")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.spec_dict = model_spec.to_dict()
        self.trunk_name = trunk
        self.width = width
        self.dropout = dropout
        self.activation = activation
        self.depth = depth
        self.first_block = first_block
        self.head_hidden = head_hidden
        self.stem = stem
        self.features = features
        self.pool = pool

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec_dict)

    def get_config(self):
        return {
            "spec": self.spec_dict,
            "trunk": self.trunk_name,
            "width": self.width,
            "dropout": self.dropout,
            "activation": self.activation,
            "depth": self.depth,
            "first_block": self.first_block,
            "head_hidden": self.head_hidden,
            "stem": self.stem,
            "features": self.features,
            "pool": self.pool,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        # files written before these options existed have the trunk of their time: six blocks
        # before `depth`, a first block of two widths before `first_block`
        return cls(**{"depth": 6, "first_block": 2, **config})


def build_model(spec: ModelSpec, trunk: str = DEFAULT_TRUNK, width: int = 32, dropout: float = 0.2,
                activation: str = "relu6", depth: int = 5, first_block: int = 2, head_hidden: int = 0, stem: int = 0,
                features: int = 256, pool: str = "flatten") -> FaceMTL:
    spec = spec.replace(trunk=trunk)
    return FaceMTL(spec.to_dict(), trunk=trunk, width=width, dropout=dropout, activation=activation,
                   depth=depth, first_block=first_block, head_hidden=head_hidden, stem=stem,
                   features=features, pool=pool)


def save_model(model: FaceMTL, path: str | Path) -> None:
    """Write `model.keras` atomically, weights and config only: an uncompiled copy, so the
    file carries no optimizer state (3x smaller) and loads without the training losses."""
    from facemtl.runtime.io import atomic_path

    clean = FaceMTL.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    with atomic_path(path) as tmp:
        clean.save(tmp)


def load_model(path: str | Path) -> FaceMTL:
    """Load `model.keras` (safe mode, no compile): the float model for evaluation and export."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"{path}: no such file")
    if path.suffix != ".keras":
        raise ModelFileError(f"{path}: expected a .keras model file")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # keras raises many types for a corrupt zip or a wrong config
        raise ModelFileError(f"{path}: not a loadable Keras model ({type(e).__name__}: {e})") from e
    if not isinstance(model, FaceMTL):
        raise ModelFileError(f"{path}: a Keras model, but not a facemtl model (no spec inside)")
    return model
