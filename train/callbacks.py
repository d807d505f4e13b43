"""Keras callbacks of the training loop: the best checkpoint, written atomically, and the
per-head progress table."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import keras

from facemtl.runtime.io import atomic_path
from facemtl.train.heads import MultiHead

log = logging.getLogger(__name__)


class AtomicBestWeights(keras.callbacks.Callback):
    """Save weights when `monitor` improves, through a temporary file: a kill mid-write
    never leaves a truncated best checkpoint. `initial_best` carries the best value over a
    resume, which Keras's ModelCheckpoint would forget."""

    def __init__(self, path: Path, monitor: str = "val_loss", initial_best: float = math.inf):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.best = initial_best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(value) or value >= self.best:
            return
        self.best = float(value)
        with atomic_path(self.path, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)


class HeadTable(keras.callbacks.Callback):
    """One line per epoch with each head's validation metric (`landmarks/nme`, `pose/accuracy`)."""

    def __init__(self, head_names, epochs: int):
        super().__init__()
        self.head_names = tuple(head_names)
        self.epochs = epochs
        self._t0 = time.time()
        self._best = math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.time()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1:>3}/{self.epochs}", f"{time.time() - self._t0:5.1f}s",
                 f"loss {logs.get('loss', float('nan')):.4f}", f"val_loss {logs.get('val_loss', float('nan')):.4f}"]
        for k, v in logs.items():
            key = MultiHead.metric_key(k, self.head_names)
            if key.startswith("val/") and not key.endswith("/loss") and key.count("/") == 2:
                metric = key.split("/", 1)[1]
                parts.append(f"{metric} {100 * v if metric.endswith('accuracy') else v:.2f}")
        vl = logs.get("val_loss", math.inf)
        if vl < self._best:
            self._best = vl
            parts.append("*")
        log.info("  ".join(parts))
