"""Training configuration: plain data, importable without TensorFlow (the CLI parses with it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_TRUNK = "mtfl"
POOLS = ("flatten", "gdc", "gdc-fine", "bottleneck")  # how the mtfl trunk's last map becomes features
SMOOTH_TO = ("uniform", "prior")  # where label smoothing spreads its mass (facemtl.train.heads.ClassificationHead)


@dataclass
class TrainConfig:
    data: Path
    out: Path
    epochs: int = 70
    batch_size: int = 64
    heads: tuple[str, ...] = ()            # empty: every head of the default spec
    weights: dict[str, float] = field(default_factory=dict)  # overrides of the spec's loss weights
    trunk: str = DEFAULT_TRUNK
    width: int = 32
    dropout: float = 0.2
    activation: str = "relu6"
    depth: int = 5                         # separable blocks of the mtfl trunk (README, "How the default was chosen")
    first_block: int = 2                   # filters of the first separable block, as a multiple of width
    stem: int = 0                          # filters of the stem convolution (0: width)
    features: int = 256                    # units of the shared feature layer (mtfl)
    pool: str = "flatten"                  # the last map -> features: "flatten" + Dense, "gdc", ... (POOLS, mtfl)
    head_hidden: int = 0                   # a hidden layer of this many units in each classification head
    # Polyak averaging of the weights (Keras's optimizer EMA): validation, the best checkpoint
    # and the exported model use the averaged weights. 0 turns it off.
    ema: float = 0.0
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.1
    seed: int = 0
    augment: bool = True
    erase: float = 0.0                     # probability of random erasing per face (facemtl.train.pipeline.Augment)
    skip_bad: bool = False
    resume: bool = False
    strategy: str = "default"
    monitor: str = "val_loss"
    landmark_loss: str = "nme"
    label_smoothing: float = 0.05               # also bounds the logits, which int8 outputs need
    # where the smoothing goes on balanced heads (facemtl.train.heads.ClassificationHead): "prior" since
    # the seed study of runs 18-20 (docs/experiments.md); runs 1-17 and the models before it used "uniform"
    smooth_to: str = "prior"
    # heads trained with logit-adjusted losses (see ClassificationHead): those whose training
    # classes are far from uniform and whose rare classes matter (58% male, 74% frontal)
    balance: tuple[str, ...] = ("gender", "pose")
    # draw training faces with probability ~ (pose class frequency) ** -pose_balance: 0 draws
    # each face once per epoch; 0.5 gives the rarer poses, where landmarks fail most, more turns
    pose_balance: float = 0.0
    crop: str = "landmarks"                # or "image": the blog's whole-image recipe, for comparison
    crop_scale: float = 0.0                # side of the face square in RMS landmark radii (0: the spec's, 3.0)
    # side of the square model input in pixels (0: the spec's 40). The runtime, the converter
    # and evaluation all read it from the spec, so a larger input needs nothing else; it costs
    # latency roughly with the pixel count (docs/experiments.md, run 37)
    input_size: int = 0
    limit: int = 0                         # use only the first N training faces of each source (smoke runs)
    # every data source (`data` is the first): MTFL folders, manifests, folders per class
    # (facemtl.train.sources); empty means `data` alone
    sources: tuple[str, ...] = ()
    # per-source share of each epoch's draws (empty: every face once per epoch)
    source_weights: tuple[float, ...] = ()
    init: str = ""                         # a trained model.keras to start from (fine-tuning)
    freeze: str = "none"                   # "trunk": train only the heads
    add_heads: tuple[str, ...] = ()        # NAME:classification:LABEL1,LABEL2, added to the spec
    detector: str = "yunet"                # frames training faces that have no landmarks
    # knowledge distillation (facemtl.train.distill): trained model.keras files whose outputs on the
    # training faces (computed once each, cached) every head also learns from; several: their
    # outputs averaged (an ensemble teacher)
    teachers: tuple[str, ...] = ()
    teacher_flip: bool = True              # the teacher's outputs flip-averaged (computed once, so cheap)
    teacher_cache: str = ""                # cache file of a single teacher (default: OUT/../teachers/<teacher>-<sha>.npz)
    distill_weight: float = 0.5            # each head's loss: (1 - w) x labels + w x teacher (DistillLoss)
    temperature: float = 2.0               # softens both models' class probabilities in the teacher's term
    # a trained model.keras whose layers of the same name and shapes start this run's model
    # (e.g. the teacher's stem and blocks under a smaller pool); unlike `init`, the options here build the model
    warm_start: str = ""
    warm_prune: bool = False               # --warm-start also into thinner layers, keeping the strongest channels
    verbose: int = 1
