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

    def __init__(self, head_names, epochs: int, shown=None):
        super().__init__()
        self.head_names = tuple(head_names)
        # heads whose metrics are printed (default all): a head without validation labels
        # has none worth showing, but its name is still needed to parse Keras's keys
        self.shown = set(self.head_names if shown is None else shown)
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
            if (key.startswith("val/") and not key.endswith("/loss") and key.count("/") == 2
                    and key.split("/")[1] in self.shown):
                metric = key.split("/", 1)[1]
                parts.append(f"{metric} {100 * v if metric.endswith('accuracy') else v:.2f}")
        by_source: dict[str, list[str]] = {}
        for k, v in logs.items():
            key = MultiHead.metric_key(k, self.head_names)
            if key.startswith("val/") and key.count("/") == 3:  # val/<source>/<head>/<metric> (SourceMetrics)
                _, source, head, metric = key.split("/")
                by_source.setdefault(source, []).append(
                    f"{head}/{metric} {100 * v if metric.endswith('accuracy') else v:.2f}")
        vl = logs.get("val_loss", math.inf)
        if vl < self._best:
            self._best = vl
            parts.append("*")
        log.info("  ".join(parts))
        for source, items in by_source.items():
            log.info("    %s: %s", source, "  ".join(items))


class SourceMetrics(keras.callbacks.Callback):
    """Each epoch, every head's validation metric on each source's own held-out faces, added to
    the epoch's logs (so history.csv and TensorBoard get them) as `val_<source>/<head>/<metric>`:
    a mixed validation set hides a source the model gets worse on. Masked like training: a
    head's metric counts only the faces that have its label; a source without any label for
    a head gets no entry for it. Must run before the callbacks that write the logs."""

    def __init__(self, sources, spec):
        super().__init__()
        import numpy as np

        self.spec = spec
        self.sets = []
        for name, source in sources:
            index = np.arange(len(source))
            x, y, a, w = source.weighted_batch(index, np.zeros(len(index), np.int64))
            self.sets.append((name, x, y, a, w, source.columns))

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        for key, value in self.scores().items():
            logs[key] = value

    def scores(self) -> dict[str, float]:
        import numpy as np

        out = {}
        for name, x, y, a, w, columns in self.sets:
            pred = self.model.predict(x, batch_size=512, verbose=0)
            for k, h in enumerate(self.spec.heads):
                have = w[:, k] > 0
                if not have.any():
                    continue
                p = np.asarray(pred[h.name])[have]
                if h.kind == "regression":
                    t = y[have].reshape(len(p), -1, 2)
                    q = p.reshape(len(p), -1, 2)
                    err = np.linalg.norm(t - q, axis=-1).mean(axis=-1)
                    iod = np.maximum(np.linalg.norm(t[:, 1] - t[:, 0], axis=-1), 1e-6)
                    out[f"val_{name}/{h.name}/nme"] = float(np.mean(100.0 * err / iod))
                else:
                    t = a[have, columns[h.name]]
                    out[f"val_{name}/{h.name}/accuracy"] = float(np.mean(p.argmax(axis=1) == t))
        return out
