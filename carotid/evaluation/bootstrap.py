"""Person-bootstrap confidence intervals, per image and per person.

1000 resamples of 10^5 frames through scikit-learn would take minutes, so `ResampledMetrics` computes
its few metrics (registry.BOOTSTRAP_METRICS) from per-person sums weighted by how often each person was
drawn: the same number as on the concatenated frames (tests check it against scikit-learn).
"""

from __future__ import annotations

import warnings as _warnings

import numpy as np

from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.intervals import counts_at_threshold, interval_methods, proportion_intervals

CELLS_PER_CHUNK = 4_000_000  # resamples x frames held in memory at once (~32 MB per array)


class _RankAUC:
    """AUC as the Mann-Whitney statistic (ties count one half, as in sklearn's roc_auc_score) for many
    weightings of the same scores: the scores are sorted once, each resample only re-weights them."""

    def __init__(self, scores: np.ndarray, positive: np.ndarray, group: np.ndarray):
        order = np.argsort(scores, kind="stable")
        ranked = scores[order]
        self.starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # blocks of tied scores
        self.group = group[order]
        self.positive = positive[order].astype(np.float64)

    def __call__(self, counts: np.ndarray) -> np.ndarray:
        weights = counts[:, self.group]
        pos = np.add.reduceat(weights * self.positive, self.starts, axis=1)
        neg = np.add.reduceat(weights * (1.0 - self.positive), self.starts, axis=1)
        below = np.cumsum(neg, axis=1) - neg
        with np.errstate(invalid="ignore", divide="ignore"):
            return (pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


class ResampledMetrics:
    """AUC, accuracy, balanced accuracy (and binary sensitivity, specificity) of one level for a block of
    resamples at once. A resample is a row of `counts`: how often each group (person) was drawn."""

    def __init__(
        self, group: np.ndarray, y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float | None
    ):
        """`threshold` None: argmax predictions for binary tasks too (as the per-epoch validation numbers)."""
        group, y_true, probs = np.asarray(group), np.asarray(y_true), np.asarray(probs, dtype=np.float64)
        n_groups, n_classes = int(group.max()) + 1, probs.shape[1]
        self.binary = n_classes == 2
        if not self.binary:
            pred = probs.argmax(axis=1)
        elif threshold is None:
            pred = (probs.argmax(axis=1) == positive_index).astype(int)
        else:
            pred = (probs[:, positive_index] >= threshold).astype(int)
        truth = (y_true == positive_index).astype(int) if self.binary else y_true
        cell = group * n_classes + truth  # per group and true class: frames, correctly classified frames
        self.frames = np.bincount(cell, minlength=n_groups * n_classes).reshape(n_groups, n_classes).astype(np.float64)
        self.correct = np.bincount(cell, weights=(pred == truth), minlength=n_groups * n_classes).reshape(
            n_groups, n_classes
        )
        targets = [positive_index] if self.binary else range(n_classes)
        self.aucs = [_RankAUC(probs[:, k], y_true == k, group) for k in targets]

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        frames, correct = counts @ self.frames, counts @ self.correct
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = correct / frames  # binary: column 0 = specificity, column 1 = sensitivity
            out = {
                "auc": np.mean([auc(counts) for auc in self.aucs], axis=0),
                "accuracy": correct.sum(axis=1) / frames.sum(axis=1),
            }
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows stay NaN
            out["balanced_accuracy"] = np.nanmean(recall, axis=1)  # over the classes present, as sklearn
        if self.binary:
            out |= {"sensitivity": recall[:, 1], "specificity": recall[:, 0]}
        return out


def resample_counts(strata: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples, len(strata)) draw counts: each stratum (class) of persons is resampled with
    replacement to its own size, so every resample keeps the split's class balance."""
    n = len(strata)
    counts = np.zeros((n_resamples, n))
    offsets = (np.arange(n_resamples) * n)[:, None]
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        picks = members[rng.integers(0, len(members), size=(n_resamples, len(members)))]
        counts += np.bincount((picks + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    return counts


def bootstrap_ci(
    person_ids: np.ndarray,
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    n_classes: int,
    positive_index: int = 1,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    aggregation: str = "mean",
    level: float = 0.95,
    proportions: str = "wilson",
) -> dict[str, dict]:
    """Percentile CIs, per image and per person, from resampling persons with replacement; per person,
    the proportions (sensitivity, specificity, PPV, NPV, accuracy) by `proportions` ("wilson", "exact" or
    "bootstrap", see carotid.evaluation.intervals).

    Frames of one person are correlated, so the unit of resampling is the person: a resample draws
    persons (within each class, as pROC does, so AUC stays defined) and keeps all of their frames."""
    probs = np.asarray(probs, dtype=np.float64)
    persons, inverse = np.unique(np.asarray(person_ids), return_inverse=True)
    _, person_probs = aggregate_persons(person_ids, probs, aggregation, positive_index)
    person_y = person_labels(person_ids, y_true, persons)
    levels = {
        "image": ResampledMetrics(inverse.ravel(), y_true, probs, positive_index, threshold),
        "person": ResampledMetrics(np.arange(len(persons)), person_y, person_probs, positive_index, threshold),
    }
    rng = np.random.default_rng(seed)
    chunk = max(1, CELLS_PER_CHUNK // max(len(probs), 1))
    samples: dict[str, list[dict]] = {name: [] for name in levels}
    for start in range(0, n_resamples, chunk):
        counts = resample_counts(person_y, min(chunk, n_resamples - start), rng)
        for name, resampled in levels.items():
            samples[name].append(resampled(counts))
    alpha = (1.0 - level) / 2.0
    out: dict[str, dict] = {}
    for name, blocks in samples.items():
        out[name] = {key: _interval(np.concatenate([b[key] for b in blocks]), alpha, n_resamples) for key in blocks[0]}
    if proportions != "bootstrap":  # persons are independent: a binomial interval of each count
        counts = counts_at_threshold(person_y, person_probs, positive_index, threshold)
        out["person"] |= proportion_intervals(counts, proportions, level)
    out["method"] = {
        "resamples": n_resamples,
        "level": level,
        "unit": "person",
        "stratified_by": "label",
        "interval": "percentile",
        "seed": seed,
        "proportions": proportions,
        "by_metric": interval_methods(out["person"], out["image"], proportions),
    }
    return out


def _interval(values: np.ndarray, alpha: float, n_resamples: int) -> dict | None:
    values = values[np.isfinite(values)]
    if len(values) < max(10, n_resamples // 10):  # undefined in most resamples: no honest interval
        return None
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "n": int(len(values))}


def roc_band(
    group: np.ndarray,
    positive: np.ndarray,
    scores: np.ndarray,
    strata: np.ndarray,
    *,
    n_resamples: int,
    seed: int = 0,
    level: float = 0.95,
    points: int = 101,
) -> dict | None:
    """A pointwise percentile band of the ROC curve from resampling persons (stratified as `bootstrap_ci`).

    `group[i]` is the person index (into `strata`, the persons' labels) of item i, an image or a person.
    For each resample the curve's sensitivity is read at fixed false-positive rates (vertical averaging),
    and the band is the percentile interval at each of them."""
    scores, positive, group = np.asarray(scores, dtype=np.float64), np.asarray(positive, bool), np.asarray(group)
    if n_resamples < 10 or positive.all() or not positive.any():
        return None
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    ends = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]  # last item of each tied block
    item_group, item_positive = group[order], positive[order].astype(np.float64)
    fpr_grid = np.linspace(0.0, 1.0, points)
    rng = np.random.default_rng(seed)
    chunk = max(1, CELLS_PER_CHUNK // max(len(scores), 1))
    curves = []
    for start in range(0, n_resamples, chunk):
        weights = resample_counts(np.asarray(strata), min(chunk, n_resamples - start), rng)[:, item_group]
        tp = np.cumsum(weights * item_positive, axis=1)[:, ends]
        fp = np.cumsum(weights * (1.0 - item_positive), axis=1)[:, ends]
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr, fpr = tp / tp[:, -1:], fp / fp[:, -1:]
        # The curve through (0, 0) and each threshold's point, straight between them as roc_curve draws it;
        # np.interp takes the last of equal false-positive rates, the highest sensitivity reached there.
        curves += [np.interp(fpr_grid, np.r_[0.0, f], np.r_[0.0, t]) for f, t in zip(fpr, tpr)]
    curves = np.asarray(curves)
    curves = curves[np.isfinite(curves).all(axis=1)]
    if len(curves) < max(10, n_resamples // 10):
        return None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(curves, [alpha, 1.0 - alpha], axis=0)
    return {"fpr": fpr_grid, "low": low, "high": high, "resamples": len(curves), "level": level}
