"""The multi-task model: a trunk and one head per `HeadSpec`, dict outputs keyed by head name.

`FaceMTL` is a functional Keras model whose config is exactly its constructor's arguments
(the spec as a dict and the trunk options), so `model.keras` rebuilds from config and loads
with safe_mode=True; the spec it carries is the same one written beside it as JSON.
"""

from __future__ import annotations

from pathlib import Path

import keras

from runtime.spec import ModelSpec
from train.heads import MultiHead
from train.config import DEFAULT_TRUNK
from train.trunks import build_trunk


@keras.saving.register_keras_serializable("facemtl")
class FaceMTL(keras.Model):
    def __init__(self, spec: dict, trunk: str = DEFAULT_TRUNK, width: int = 32, dropout: float = 0.2, **kwargs):
        model_spec = ModelSpec.from_dict(spec)
        if not model_spec.heads:
            raise ValueError("the model spec has no heads; give at least one (--heads)")
        # === Layers and functional model ===
        inputs = keras.Input(model_spec.input.shape, name="image")
        features = build_trunk(trunk, inputs, width=width, dropout=dropout)
        outputs = MultiHead.from_spec(model_spec).outputs(features)
        kwargs.setdefault("name", "facemtl")
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.spec_dict = model_spec.to_dict()
        self.trunk_name = trunk
        self.width = width
        self.dropout = dropout

    @property
    def model_spec(self) -> ModelSpec:
        return ModelSpec.from_dict(self.spec_dict)

    def get_config(self):
        return {
            "spec": self.spec_dict,
            "trunk": self.trunk_name,
            "width": self.width,
            "dropout": self.dropout,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def build_model(spec: ModelSpec, trunk: str = DEFAULT_TRUNK, width: int = 32, dropout: float = 0.2) -> FaceMTL:
    spec = spec.replace(trunk=trunk)
    return FaceMTL(spec.to_dict(), trunk=trunk, width=width, dropout=dropout)


class ModelFileError(ValueError):
    """A path that is not a loadable facemtl Keras model."""


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
