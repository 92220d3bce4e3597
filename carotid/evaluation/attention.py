"""How a person model spreads its attention over a person's frames, and whether any frame is preferred.

Per person: the entropy of its frame weights (nats; ln n when all n weights are 1/n) and the ratio of the largest
weight to 1/n (1.0 when uniform, n when one frame takes all). An attention model that has not learned (or has
collapsed) gives every frame about 1/n, and its "highest attention" frames are then an accident of rounding:
such a person is reported as "attention is uniform for this person: no frame is preferred" instead.

Where "near uniform" lies was measured (docs/EVALUATION.md, "Is the attention uniform?";
scripts/attention_uniformity.py): attention models that had not learned (untrained, or trained too few steps)
gave every person a largest weight within 3% of 1/n, and a learned one gave its plaque persons 3.8-6 x 1/n (its
normal persons stayed within 3%: no finding, no preferred frame). Mean pooling weighs every frame 1/n by design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Near uniform: the largest weight under UNIFORM_MAX_RATIO / n; between the measured 1.03 (not learned) and 3.8.
UNIFORM_MAX_RATIO = 1.25
UNIFORM_PERSON = "attention is uniform for this person: no frame is preferred"
MEAN_POOLING = "mean pooling weighs every frame the same: no frame is preferred"


@dataclass
class AttentionSpread:
    """Per person (in the order asked for): entropy (nats), largest weight x n, near uniform or not."""

    entropy: np.ndarray
    max_ratio: np.ndarray
    uniform: np.ndarray  # bool; False for a person of one frame (nothing to prefer, nothing to hide)
    frames: np.ndarray  # readable frames per person


def attention_spread(frame_person_ids: np.ndarray, attention: np.ndarray, person_ids: np.ndarray) -> AttentionSpread:
    """The spread of each person's frame weights (`attention`, one per row of `frame_person_ids`)."""
    frame_person_ids, attention = np.asarray(frame_person_ids), np.asarray(attention, dtype=np.float64)
    order = np.argsort(frame_person_ids, kind="stable")
    ids, starts = np.unique(frame_person_ids[order], return_index=True)
    groups = dict(zip(ids.tolist(), np.split(attention[order], starts[1:])))
    entropy, ratio = np.full(len(person_ids), np.nan), np.full(len(person_ids), np.nan)
    readable = np.zeros(len(person_ids), dtype=int)
    for k, person in enumerate(np.asarray(person_ids).tolist()):
        weights = groups.get(person, np.zeros(0))
        weights = weights[np.isfinite(weights)]
        readable[k] = len(weights)
        if len(weights) == 0:
            continue
        weights = weights / weights.sum()  # exactly 1, whatever the rounding of a table it was read from
        positive = weights[weights > 0]
        entropy[k] = float(-(positive * np.log(positive)).sum())
        ratio[k] = float(weights.max() * len(weights))
    return AttentionSpread(entropy, ratio, is_near_uniform(ratio) & (readable > 1), readable)


def uniform_sentence(pooling: str) -> str:
    """What is said instead of a person's top frames when its weights are (near) uniform."""
    return MEAN_POOLING if pooling == "mean" else UNIFORM_PERSON


def person_uniform(weights: np.ndarray) -> bool:
    """Whether one person's readable frames' weights are near uniform (as person_predictions.csv says)."""
    return bool(attention_spread(np.zeros(len(weights)), weights, np.zeros(1)).uniform[0])


def is_near_uniform(max_ratio: np.ndarray | float) -> np.ndarray:
    """Whether a largest-weight ratio (max weight x n) is near uniform (the rule of the module's docstring)."""
    ratio = np.asarray(max_ratio, dtype=np.float64)
    return np.isfinite(ratio) & (ratio < UNIFORM_MAX_RATIO)


def uniform_warning(
    spread: AttentionSpread, pooling: str, called: np.ndarray | None = None, group: str = ""
) -> str | None:
    """The warning when attention is near uniform for most persons that `called` selects (binary models: those
    called positive, whose call should rest on some frame; a trained model may rightly prefer no frame of a
    negative person), or for most persons when it selects none; None for mean pooling (uniform by design)."""
    weighed = spread.frames > 1
    if called is not None and np.any(called & weighed):
        weighed = weighed & called
    else:
        group = ""
    n, uniform = int(np.count_nonzero(weighed)), int(np.count_nonzero(spread.uniform & weighed))
    if pooling != "attention" or n == 0 or uniform <= n / 2:
        return None
    return (
        f"attention is near uniform for {uniform} of {n} persons{group} (largest weight under {UNIFORM_MAX_RATIO} "
        f"x 1/n; median {float(np.median(spread.max_ratio[weighed])):.3f} x 1/n): the model prefers no frame, so "
        "its highest-attention frames show nothing; train longer or with more optimizer steps (a smaller "
        "--batch-size), and check that the training loss fell"
    )
