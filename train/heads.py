"""The Head API on Keras 3: one head per task, built from its `HeadSpec`.

A head owns everything after the shared features: its output layer (named after the head,
so the name survives into every exported format), its loss, its metrics. `MultiHead` is
named heads plus a weighted sum of their losses; Keras's `compile`/`fit` own optimisation.
Decoding raw outputs into predictions lives in `facemtl.runtime.spec.HeadSpec.decode` (numpy), so
the runtime decodes exactly as evaluation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import keras
from keras import ops

from facemtl.runtime.spec import CLASSIFICATION, REGRESSION, HeadSpec, ModelSpec
from facemtl.train.config import SMOOTH_TO


def _points(y, n_points: int):
    return ops.reshape(y, (-1, n_points, 2))


def _interocular(y_true, n_points: int, floor: float):
    p = _points(y_true, n_points)
    d = ops.sqrt(ops.sum(ops.square(p[:, 1] - p[:, 0]), axis=-1))
    # A full profile has its eyes almost on top of each other; the floor (in crop units)
    # keeps those faces from dominating the loss with near-zero denominators.
    return ops.maximum(d, floor)


@keras.saving.register_keras_serializable("facemtl")
class LandmarkLoss(keras.losses.Loss):
    """Mean point-to-point distance divided by the inter-ocular distance: the NME itself.

    Training on the metric we report rather than on per-coordinate MSE matters at 40x40:
    MSE spends its effort on the easy frontal faces and is dominated by outliers.
    """

    def __init__(self, n_points: int = 5, floor: float = 0.1, name: str = "landmark_nme", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_points = n_points
        self.floor = floor

    def call(self, y_true, y_pred):
        err = ops.sqrt(ops.sum(ops.square(_points(y_true, self.n_points) - _points(y_pred, self.n_points)), axis=-1) + 1e-12)
        return ops.mean(err, axis=-1) / _interocular(y_true, self.n_points, self.floor)

    def get_config(self):
        return {**super().get_config(), "n_points": self.n_points, "floor": self.floor}


@keras.saving.register_keras_serializable("facemtl")
class NME(keras.metrics.Mean):
    """Normalised mean error in percent, as MTFL papers report it (no floor)."""

    def __init__(self, n_points: int = 5, name: str = "nme", **kwargs):
        super().__init__(name=name, **kwargs)
        self.n_points = n_points

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = y_true[..., : 2 * self.n_points]  # distillation appends the teacher's points (DistillLoss)
        p_true, p_pred = _points(y_true, self.n_points), _points(y_pred, self.n_points)
        err = ops.mean(ops.sqrt(ops.sum(ops.square(p_true - p_pred), axis=-1)), axis=-1)
        iod = ops.sqrt(ops.sum(ops.square(p_true[:, 1] - p_true[:, 0]), axis=-1))
        return super().update_state(100.0 * err / ops.maximum(iod, 1e-6), sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "n_points": self.n_points}


@dataclass(frozen=True)
class Head:
    """Base: a spec in, a named output layer, a loss and metrics out."""

    spec: HeadSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def output_layer(self) -> keras.layers.Layer:
        # float32 even under mixed precision: exported outputs and losses stay exact
        return keras.layers.Dense(self.spec.units, name=self.name, dtype="float32")

    def __call__(self, features):
        return self.output_layer()(features)

    def loss(self) -> keras.losses.Loss:
        raise NotImplementedError

    def metrics(self) -> list[keras.metrics.Metric]:
        raise NotImplementedError


@dataclass(frozen=True)
class RegressionHead(Head):
    """Landmarks: linear outputs in crop units; the loss is the NME (`LandmarkLoss`)."""

    loss_name: str = "nme"

    def loss(self):
        n = self.spec.units // 2
        if self.loss_name == "nme":
            return LandmarkLoss(n_points=n)
        if self.loss_name in ("mse", "mae", "huber"):
            return keras.losses.get({"mse": "mean_squared_error", "mae": "mean_absolute_error", "huber": "huber"}[self.loss_name])
        raise ValueError(f"unknown landmark loss {self.loss_name!r}; use nme, mse, mae or huber")

    def metrics(self):
        return [NME(n_points=self.spec.units // 2)]


@dataclass(frozen=True)
class ClassificationHead(Head):
    """Binary or multi-class: one logit per label, softmax cross-entropy on class ids.

    With `prior` (the training set's class frequencies) the loss is logit-adjusted
    (Menon et al., ICLR 2021): cross-entropy of logits + log(prior). The raw logits then
    estimate the class-balanced posterior, so the argmax is not pulled toward the training
    set's majority class (58% male, 74% frontal pose in MTFL's training.txt).

    `smooth_to`: where label smoothing moves the target's mass. "uniform" (Keras's; the models
    before the seed study of runs 18-20 trained with it) spreads it evenly over the classes in
    the adjusted space, so the raw logits learn a bonus for each class inversely proportional
    to its prior: at 0.05 a frontal face's pose probability is about 0.44, with the runner-ups
    the rare profiles, and at 0.15 the profiles win outright (docs/experiments.md, run 16). "prior" (the
    training default) spreads it by the prior, which in the raw logits is an equal share for
    every wrong class.
    """

    label_smoothing: float = 0.0
    prior: tuple[float, ...] | None = None
    smooth_to: str = "uniform"
    hidden: int = 0  # units of a hidden layer of the head's own (0: logits straight from the features)

    def __call__(self, features):
        if self.hidden:
            # capacity for this task alone: the shared 256 features are shaped mostly by the
            # landmark loss, and a linear read of them is all a plain head gets
            features = keras.layers.Dense(self.hidden, name=f"{self.name}_hidden")(features)
            features = keras.layers.ReLU(max_value=6.0, name=f"{self.name}_hidden_relu")(features)
        return self.output_layer()(features)

    def loss(self):
        if self.prior is not None or self.label_smoothing:
            return AdjustedCE(self.spec.units, self.label_smoothing, list(self.prior) if self.prior else None,
                              smooth_to=self.smooth_to)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def metrics(self):
        return [LabelAccuracy(name="accuracy")]


@keras.saving.register_keras_serializable("facemtl")
class AdjustedCE(keras.losses.Loss):
    """Sparse softmax cross-entropy with optional label smoothing and logit adjustment
    (`smooth_to`: see `ClassificationHead`)."""

    def __init__(self, classes: int = 2, smoothing: float = 0.0, prior=None, name: str = "adjusted_ce",
                 smooth_to: str = "uniform", **kwargs):
        super().__init__(name=name, **kwargs)
        if smooth_to not in SMOOTH_TO:
            raise ValueError(f"smooth_to must be one of {', '.join(SMOOTH_TO)}, got {smooth_to!r}")
        self.classes, self.smoothing, self.smooth_to = classes, smoothing, smooth_to
        self.prior = list(prior) if prior is not None else None

    def call(self, y_true, y_pred):
        target = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.classes)
        smoothing = self.smoothing
        if smoothing and self.smooth_to == "prior" and self.prior is not None:
            prior = ops.convert_to_tensor(self.prior, dtype=target.dtype)
            target, smoothing = (1.0 - self.smoothing) * target + self.smoothing * prior, 0.0
        if self.prior is not None:
            y_pred = y_pred + ops.log(ops.convert_to_tensor(self.prior, dtype=y_pred.dtype))
        # uniform smoothing stays Keras's own arithmetic, so the shipped recipe trains bit for bit as before
        return keras.losses.categorical_crossentropy(target, y_pred, from_logits=True, label_smoothing=smoothing)

    def get_config(self):
        return {**super().get_config(), "classes": self.classes, "smoothing": self.smoothing, "prior": self.prior,
                "smooth_to": self.smooth_to}


@keras.saving.register_keras_serializable("facemtl")
class LabelAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """Keras's sparse accuracy on the class id, also where a (N, 1 + classes) distillation
    target carries the teacher's logits after it (`DistillLoss`)."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        if len(y_true.shape) == 2 and y_true.shape[-1] == y_pred.shape[-1] + 1:
            y_true = y_true[:, :1]
        return super().update_state(y_true, y_pred, sample_weight=sample_weight)


@keras.saving.register_keras_serializable("facemtl")
class DistillLoss(keras.losses.Loss):
    """A head's label loss mixed with a distillation term towards a teacher's outputs:
    (1 - weight) x label loss + weight x distillation.

    The target carries the labels first and the teacher's outputs after them; a target of the
    labels alone (validation) gets the label loss alone, so validation losses compare with
    runs trained without a teacher.
    - landmarks (`kind` regression): y_true is (N, 2 x points labels + 2 x points teacher);
      the term is the mean point-to-point distance to the teacher's points divided by the
      labels' inter-ocular distance (an NME against the teacher, `LandmarkLoss`'s floor).
    - classes: y_true is (N, 1 + classes), the class id then the teacher's logits; the term is
      Hinton et al.'s temperature^2 x KL(softmax(teacher / T) || softmax(student / T)). Both
      models' raw logits are compared: a logit-adjusted head's raw logits are its balanced
      scores in teacher and student alike (`ClassificationHead`).
    """

    def __init__(self, base=None, kind: str = REGRESSION, width: int = 10, weight: float = 0.5,
                 temperature: float = 2.0, floor: float = 0.1, name: str = "distill", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"distillation weight must be in 0..1, got {weight}")
        if temperature <= 0:
            raise ValueError(f"distillation temperature must be > 0, got {temperature}")
        self.base = keras.losses.deserialize(base) if isinstance(base, dict) else base
        self.kind, self.width, self.weight, self.temperature, self.floor = kind, width, weight, temperature, floor

    def _split(self, y_true):
        """(labels, teacher) of a target, teacher None for a target of labels only."""
        if self.kind == REGRESSION:
            if y_true.shape[-1] == self.width:
                return y_true, None
            return y_true[:, : self.width], y_true[:, self.width:]
        if len(y_true.shape) < 2 or y_true.shape[-1] == 1:
            return y_true, None
        return y_true[:, 0], y_true[:, 1:]

    def call(self, y_true, y_pred):
        labels, teacher = self._split(y_true)
        label_loss = self.base.call(labels, y_pred)
        if teacher is None or self.weight == 0.0:
            return label_loss
        return (1.0 - self.weight) * label_loss + self.weight * self.distill(labels, teacher, y_pred)

    def distill(self, labels, teacher, y_pred):
        if self.kind == REGRESSION:
            n = self.width // 2
            err = ops.sqrt(ops.sum(ops.square(_points(teacher, n) - _points(y_pred, n)), axis=-1) + 1e-12)
            return ops.mean(err, axis=-1) / _interocular(labels, n, self.floor)
        t = self.temperature
        p_teacher = ops.softmax(teacher / t, axis=-1)
        log_teacher = ops.log_softmax(teacher / t, axis=-1)
        log_student = ops.log_softmax(y_pred / t, axis=-1)
        return t * t * ops.sum(p_teacher * (log_teacher - log_student), axis=-1)

    def get_config(self):
        return {**super().get_config(), "base": keras.losses.serialize(self.base), "kind": self.kind,
                "width": self.width, "weight": self.weight, "temperature": self.temperature, "floor": self.floor}


def make_head(spec: HeadSpec, loss_name: str = "nme", label_smoothing: float = 0.0,
              priors: Mapping[str, tuple[float, ...]] | None = None, hidden: int = 0,
              smooth_to: str = "uniform") -> Head:
    if spec.kind == REGRESSION:
        return RegressionHead(spec, loss_name=loss_name)
    if spec.kind == CLASSIFICATION:
        prior = tuple(priors[spec.name]) if priors and spec.name in priors else None
        return ClassificationHead(spec, label_smoothing=label_smoothing, prior=prior, hidden=hidden,
                                  smooth_to=smooth_to)
    raise ValueError(f"head {spec.name!r}: unknown kind {spec.kind!r}")


class MultiHead:
    """Named heads and the weights of their losses: what `compile` needs, keyed by head name.

    Keras reports per-head metrics as `<head>_<metric>`; `metric_key` gives the
    `head/metric` form used everywhere else (progress, reports, JSON).
    """

    def __init__(self, heads: list[Head], weights: Mapping[str, float] | None = None):
        if not heads:
            raise ValueError("MultiHead needs at least one head")
        names = [h.name for h in heads]
        if len(set(names)) != len(names):
            raise ValueError(f"head names must be unique, got {names}")
        weights = dict(weights) if weights is not None else {h.name: h.spec.loss_weight for h in heads}
        if set(weights) != set(names):
            raise ValueError(
                f"loss weights are for {sorted(weights)} but the heads are {sorted(names)}; "
                "give exactly one weight per head (Suggested fix: --weights name=w,...)"
            )
        self.heads = {h.name: h for h in heads}
        self.weights = weights

    @classmethod
    def from_spec(cls, spec: ModelSpec, **options) -> "MultiHead":
        return cls([make_head(h, **options) for h in spec.heads])

    def outputs(self, features) -> dict:
        return {name: head(features) for name, head in self.heads.items()}

    def compile_args(self, masked: bool = False, distill: tuple[float, float] | None = None) -> dict:
        """`compile` arguments. `masked`: the data carries a 0/1 weight per head and face (a
        label missing for that face); each head's loss is then the mean over the faces that
        have its label ("mean_with_sample_weight"), not diluted by the batch's unlabelled
        ones, and its metrics count only those faces (Keras applies sample weights to
        `weighted_metrics` alone).

        `distill`: (weight, temperature): every head's loss becomes a `DistillLoss` around its
        label loss, for targets that carry a teacher's outputs (`FaceSource(..., teacher=...)`)."""
        losses = {n: h.loss() for n, h in self.heads.items()}
        if distill is not None:
            weight, temperature = distill
            losses = {n: DistillLoss(loss, self.heads[n].spec.kind, self.heads[n].spec.units, weight, temperature)
                      for n, loss in losses.items()}
        if masked:
            for loss in losses.values():
                loss.reduction = "mean_with_sample_weight"
        return {
            "loss": losses,
            "loss_weights": dict(self.weights),
            ("weighted_metrics" if masked else "metrics"): {n: h.metrics() for n, h in self.heads.items()},
        }

    @staticmethod
    def metric_key(keras_key: str, head_names) -> str:
        """`val_pose_accuracy` -> `val/pose/accuracy`; `pose_loss` -> `pose/loss`.

        A model with one head gets its metrics from Keras without the output's name
        (`val_accuracy`, `nme`), so they are given the head's name here; `loss` stays the total."""
        prefix = ""
        key = keras_key
        names = list(head_names)
        if key.startswith("val_"):
            prefix, key = "val/", key[4:]
        for n in sorted(names, key=len, reverse=True):
            if key.startswith(n + "_"):
                return f"{prefix}{n}/{key[len(n) + 1:]}"
        if len(names) == 1 and key != "loss":
            return f"{prefix}{names[0]}/{key}"
        return prefix + key
