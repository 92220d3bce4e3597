"""Whether a run learned at all: its training loss against the loss of a model that learned nothing.

A model that outputs the training class shares whatever the frame (or person) — it has learned nothing —
reaches the entropy of those shares: ln 2 = 0.693 for two balanced classes. A run whose training loss ends near
that value has not learned, whatever its validation numbers say on a handful of persons: on the sparse-finding
demo data, attention runs stuck on that plateau for all their epochs ended at 0.62–0.67 (test person AUC
0.46–0.65), runs that learned at 0.03–0.37 (docs/EVALUATION.md). The warning fires above STUCK_FRACTION of the
chance loss, between the two.

The chance loss follows the loss the run minimises: the class shares its sampler shows (equal under
--balanced-sampler; frames for a frame model, persons for a person model), weighted by --class-weights (the
best constant output of a weighted cross-entropy is proportional to weight x share), smoothed by
--label-smoothing (the targets' mean is (1 - e) x shares + e / K).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from carotid.core.text import plural
from carotid.data.manifest import DataManifest

STUCK_FRACTION = 0.85


def chance_loss(
    counts: Sequence[float], class_weights: Sequence[float] | None = None, label_smoothing: float = 0.0
) -> float:
    """The cross-entropy of the best constant output, for training examples in `counts` per class."""
    weights = list(class_weights) if class_weights is not None else [1.0] * len(counts)
    weighted = [c * w for c, w in zip(counts, weights)]
    total = sum(weighted)
    if total <= 0:
        return 0.0
    k = len(counts)
    targets = [(1 - label_smoothing) * x / total + label_smoothing / k for x in weighted]
    return -sum(t * math.log(t) for t in targets if t > 0)


def training_counts(manifest: DataManifest, person_model: bool, balanced: bool) -> list[float]:
    """Examples per class the training loss averages over: persons for a person model, frames for a frame model;
    equal under a balanced sampler."""
    k = len(manifest.class_names)
    if balanced:
        return [1.0] * k
    counts = [0.0] * k
    for person in manifest.splits["train"]:
        counts[manifest.person_labels[person]] += 1 if person_model else len(manifest.frames[person])
    return counts


def not_learned_warning(last_train_loss: float | None, chance: float, epochs: int, person_model: bool) -> str | None:
    """The end-of-run warning when the last epoch's training loss is still near the chance loss, else None."""
    if last_train_loss is None or chance <= 0 or last_train_loss < STUCK_FRACTION * chance:
        return None
    fix = (
        "a person model can stay on this plateau for tens of epochs: train again with more --epochs "
        "(or a smaller --batch-size) or another --seed"
        if person_model
        else "train longer (--epochs), check --lr, or check that the labels can be seen in the frames"
    )
    where = "near" if last_train_loss < chance else "at or above"
    return (
        f"warning: the training loss ended at {last_train_loss:.3f} after {plural(epochs, 'epoch')}, {where} the "
        f"{chance:.3f} of a model that has learned nothing (it outputs the class shares): this model has not "
        f"learned, whatever its validation numbers say — {fix}"
    )
