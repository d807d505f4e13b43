"""Evaluation plots as PNG: the cumulative error curve, confusion matrices, a face grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facemtl.runtime.io import atomic_path
from facemtl.runtime.spec import REGRESSION, ModelSpec
from facemtl.train.metrics import FAILURE_NME, nme_per_face


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")


def write_plots(out: Path, spec: ModelSpec, report, data, outputs: dict, mats: np.ndarray, grid: int = 6) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facemtl.runtime.preprocess import to_image

    out.mkdir(parents=True, exist_ok=True)
    written = []
    ann = data.annotations
    for h in spec.heads:
        if h.name not in report.heads:
            continue  # not scored: no labels for it in this data (a head added by fine-tuning)
        if h.kind == REGRESSION:
            pts = np.stack([to_image(p, m) for p, m in zip(h.decode(outputs[h.name])["points"], mats)])
            nme = nme_per_face(pts, ann.points)
            t = np.linspace(0, 2 * FAILURE_NME, 400)
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.plot(t, [(nme <= v).mean() for v in t])
            ax.axvline(FAILURE_NME, ls="--", c="grey")
            ax.set(xlabel="NME (% of inter-ocular distance)", ylabel="fraction of faces", ylim=(0, 1),
                   title=f"{h.name}: cumulative error, {report.split} (mean {nme.mean():.2f}%)")
            ax.grid(alpha=0.3)
            _save(fig, out / f"{h.name}_ced.png")
            plt.close(fig)
            written.append(out / f"{h.name}_ced.png")

            # a grid of faces, worst at the end: predicted (red) and true (green) landmarks
            order = np.argsort(nme)
            pick = order[np.linspace(0, len(order) - 1, grid * grid).astype(int)]
            fig, axes = plt.subplots(grid, grid, figsize=(2 * grid, 2 * grid))
            for ax, i in zip(axes.ravel(), pick):
                img = data.images[i]
                ax.imshow(img, cmap="gray")
                ax.scatter(ann.points[i][:, 0], ann.points[i][:, 1], s=10, c="lime")
                ax.scatter(pts[i][:, 0], pts[i][:, 1], s=10, c="red", marker="x")
                ax.set_title(f"NME {nme[i]:.1f}%", fontsize=8)
                ax.axis("off")
            fig.suptitle("green: annotated, red: predicted (sorted by error)")
            _save(fig, out / "faces.png")
            plt.close(fig)
            written.append(out / "faces.png")
        else:
            m = report.heads[h.name]
            cm = np.array(m["confusion"], dtype=float)
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            fig, ax = plt.subplots(figsize=(1.2 * len(h.labels) + 2, 1.2 * len(h.labels) + 1.5))
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            for r in range(len(h.labels)):
                for c in range(len(h.labels)):
                    ax.text(c, r, f"{int(cm[r, c])}", ha="center", va="center",
                            color="white" if norm[r, c] > 0.5 else "black")
            ax.set_xticks(range(len(h.labels)), h.labels, rotation=45, ha="right")
            ax.set_yticks(range(len(h.labels)), h.labels)
            ax.set(xlabel="predicted", ylabel="true",
                   title=f"{h.name}: acc {m['accuracy']:.1f}%, balanced {m['balanced_accuracy']:.1f}%")
            _save(fig, out / f"{h.name}_confusion.png")
            plt.close(fig)
            written.append(out / f"{h.name}_confusion.png")
            written.append(_contradicted(plt, out, spec, h, data, outputs, report.split, m["contradicted"], grid))
    return written


def _contradicted(plt, out: Path, spec: ModelSpec, head, data, outputs: dict, split: str, contradicted: int,
                  grid: int) -> Path:
    """The faces the model gets wrong, the most confident first: where to look for annotation
    errors before blaming the model (`evaluate.confident_errors`)."""
    from facemtl.runtime.preprocess import crop, face_square
    from facemtl.train.evaluate import CONTRADICTED_BELOW, confident_errors

    probs = head.decode(outputs[head.name])["probabilities"]
    true = data.annotations.labels[head.name]
    errors = confident_errors(probs, true)
    path = out / f"{head.name}_contradicted.png"
    fig, axes = plt.subplots(grid, grid, figsize=(1.8 * grid, 2 * grid))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), errors):
        patch, _ = crop(data.images[i], face_square(data.images[i], data.annotations.points[i], spec.crop), 96)
        ax.imshow(patch, cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{head.labels[true[i]]} {probs[i, true[i]]:.2f}", fontsize=8)
    fig.suptitle(f"{head.name}, {split}: the {min(len(errors), grid * grid)} most confident of {len(errors)} errors, "
                 f"annotated class and the model's probability for it "
                 f"({contradicted} below {CONTRADICTED_BELOW})", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    _save(fig, path)
    plt.close(fig)
    return path
