"""Flip averaging: run each face and its mirror image through the model, average the answers.

A face and its mirror image are the same face, so the two answers should agree; where they
do not, their mean is the better answer (test-time flip averaging, as landmark detectors
from HRNet on use it). It costs a second pass per face. The mirror image's answers are first
put back into the original's frame: landmark x runs the other way and image-left and
image-right points swap; a class whose label says "left" becomes the one that says "right"
(pose), and the other classes stay put.

What mirrors is read from the spec's names, not from a table per head, so any head whose
names follow the left/right convention mirrors, and one that cannot (a "left" label with no
"right" twin) is refused up front. numpy only.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from facemtl.runtime.spec import REGRESSION, HeadSpec, ModelSpec, SpecError

Run = Callable[[np.ndarray], dict]  # (N, S, S, C) normalised crops -> {head: (N, units) raw}

_SIDES = re.compile(r"left|right")

# The command-line option's help, one text for `predict`, `demo` and `evaluate`.
FLIP_AVERAGE_HELP = "also run each face mirrored and average the two answers (twice the model time)"


def mirror_name(name: str) -> str:
    """`left_eye` -> `right_eye`, `left_profile` -> `right_profile`, `frontal` -> `frontal`."""
    return _SIDES.sub(lambda m: "right" if m.group() == "left" else "left", name)


def mirror_permutation(names: Sequence[str], what: str = "names") -> tuple[int, ...]:
    """perm[i] = the index of the mirror twin of names[i]."""
    index = {n: i for i, n in enumerate(names)}
    twins = [mirror_name(n) for n in names]
    missing = [f"{n!r} (no {t!r})" for n, t in zip(names, twins) if t not in index]
    if missing:
        raise SpecError(f"cannot flip-average {what}: {', '.join(missing)}")
    return tuple(index[t] for t in twins)


def _head_permutation(spec: ModelSpec, head: HeadSpec) -> tuple[int, ...]:
    if head.kind == REGRESSION:
        if head.units != 2 * len(spec.landmark_names):
            raise SpecError(f"cannot flip-average head {head.name!r}: {head.units} outputs for "
                            f"{len(spec.landmark_names)} landmark names")
        return mirror_permutation(spec.landmark_names, f"head {head.name!r}")
    return mirror_permutation(head.labels, f"head {head.name!r}")


def _permutations(spec: ModelSpec) -> dict[str, list[int]]:
    """Each head's mirror permutation; a SpecError for a head that cannot mirror."""
    return {h.name: list(_head_permutation(spec, h)) for h in spec.heads}


def _unmirror(spec: ModelSpec, raw: dict, perms: dict[str, list[int]]) -> dict:
    out = {}
    for head in spec.heads:
        perm = perms[head.name]
        y = np.asarray(raw[head.name], np.float32)
        if head.kind == REGRESSION:
            pts = y.reshape(len(y), -1, 2)[:, perm].copy()
            pts[..., 0] = 1.0 - pts[..., 0]  # crop units run 0..1 across the square
            out[head.name] = pts.reshape(len(y), -1)
        else:
            out[head.name] = y[:, perm]
    return out


def unmirror(spec: ModelSpec, raw: dict) -> dict:
    """Raw outputs for mirrored crops, expressed for the unmirrored crops."""
    return _unmirror(spec, raw, _permutations(spec))


def flip_averaged(run: Run, spec: ModelSpec) -> Run:
    """`run` with every crop also run mirrored, in the same batch, and the two answers averaged:
    landmarks point by point, classes by their logits (a normalised geometric mean of the two
    probabilities)."""
    perms = _permutations(spec)  # once, and now: a spec that cannot mirror fails here, not on a face

    def averaged(batch: np.ndarray) -> dict:
        n = len(batch)
        out = run(np.concatenate([batch, batch[:, :, ::-1]]))
        straight = {h.name: np.asarray(out[h.name], np.float32)[:n] for h in spec.heads}
        mirrored = _unmirror(spec, {h.name: np.asarray(out[h.name], np.float32)[n:] for h in spec.heads}, perms)
        return {k: 0.5 * (straight[k] + mirrored[k]) for k in straight}

    return averaged


__all__ = ["FLIP_AVERAGE_HELP", "flip_averaged", "mirror_name", "mirror_permutation", "unmirror"]
