"""Pure functions on gathered numpy arrays: image- and person-level metrics and person-bootstrap CIs.

scikit-learn does the arithmetic of every point estimate. A metric that is undefined on the data at hand
(AUC with one class, sensitivity without positives) is None, and the reason is added to the returned notes.
The bootstrap is the one exception: 1000 resamples of 10^5 frames through scikit-learn take minutes, so
`ResampledMetrics` computes its few metrics from per-person sums weighted by how often each person was
drawn, which is the same number as on the concatenated frames (tests check it against scikit-learn).
"""

from __future__ import annotations

import warnings as _warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
    roc_curve,
)

UNDEFINED = {
    "sensitivity": "no positive cases",
    "specificity": "no negative cases",
    "ppv": "no positive predictions",
    "npv": "no negative predictions",
    "f1": "no positive cases and no positive predictions",
}
CELLS_PER_CHUNK = 4_000_000  # resamples x frames held in memory at once by the bootstrap (~32 MB per array)


# ---------------------------------------------------------------------------------------------
# Point estimates
# ---------------------------------------------------------------------------------------------


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


def _quiet(fn, *args, **kwargs):
    # sklearn warns on one-class input; the caller reports that once, in its own words.
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _f1(y, pred, **kwargs) -> float | None:
    value = _quiet(f1_score, y, pred, zero_division=np.nan, **kwargs)
    return None if np.isnan(value) else float(value)


def auc_score(y_true: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float | None:
    """Binary: AUC of the positive class. Multi-class: macro one-vs-rest AUC. None when a class is missing."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    n_classes = probs.shape[1]
    if not np.isin(np.arange(n_classes), y_true).all():
        return None
    if n_classes == 2:
        return float(roc_auc_score(y_true == positive_index, probs[:, positive_index]))
    return float(np.mean([roc_auc_score(y_true == k, probs[:, k]) for k in range(n_classes)]))


def operating_point(y_true: np.ndarray, p_pos: np.ndarray, positive_index: int, threshold: float) -> dict:
    """Binary metrics at one threshold: positive ⇔ p_pos ≥ threshold. Confusion matrix rows: true class."""
    y_pos = (np.asarray(y_true) == positive_index).astype(int)
    pred = (np.asarray(p_pos) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_pos, pred, labels=[0, 1]).ravel()
    class_cm = [[int(tn), int(fp)], [int(fn), int(tp)]]  # rows/columns: negative, positive
    if positive_index == 0:
        class_cm = [row[::-1] for row in class_cm[::-1]]  # rows/columns in class_names order
    return {
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_pos, pred)),
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_pos, pred)),
        "f1": _f1(y_pos, pred),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "confusion_matrix": class_cm,
    }


def binary_metrics(y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float) -> tuple[dict, list[str]]:
    """AUC, the metrics at `threshold` and, beside them, the same metrics at 0.5."""
    p_pos = np.asarray(probs)[:, positive_index]
    auc = auc_score(y_true, probs, positive_index)
    out = {"auc": auc} | operating_point(y_true, p_pos, positive_index, threshold)
    out["at_threshold_0.5"] = operating_point(y_true, p_pos, positive_index, 0.5)
    notes = ["AUC is undefined: only one class is present"] if auc is None else []
    notes += [f"{key} is undefined: {reason}" for key, reason in UNDEFINED.items() if out[key] is None]
    return out, notes


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[dict, list[str]]:
    """Argmax predictions; macro one-vs-rest AUC; sensitivity, specificity and AUC of each class."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    pred = probs.argmax(axis=1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, pred, labels=labels)
    notes: list[str] = []
    per_class = {}
    for k, name in enumerate(class_names):
        tp, fn, fp = int(cm[k, k]), int(cm[k].sum() - cm[k, k]), int(cm[:, k].sum() - cm[k, k])
        tn = int(cm.sum()) - tp - fn - fp
        present = 0 < tp + fn < len(y_true)
        if not present:
            notes.append(f"one-vs-rest AUC of '{name}' is undefined: the class is {'absent' if tp + fn == 0 else 'alone'}")
        per_class[name] = {"auc": float(roc_auc_score(y_true == k, probs[:, k])) if present else None,
                           "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}
    auc = auc_score(y_true, probs)
    if auc is None:
        notes.append("macro AUC is undefined: not every class is present")
    return {
        "auc": auc,
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_true, pred)),
        "f1": _f1(y_true, pred, average="macro", labels=labels),
        "confusion_matrix": cm.tolist(),
        "per_class": per_class,
    }, notes


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str],
                           positive_index: int = 1, threshold: float = 0.5) -> tuple[dict, list[str]]:
    """Every metric of one level (images or persons); binary tasks use `threshold` on the positive class."""
    if len(class_names) == 2:
        return binary_metrics(y_true, probs, positive_index, threshold)
    return multiclass_metrics(y_true, probs, class_names)


# ---------------------------------------------------------------------------------------------
# Persons and the operating point
# ---------------------------------------------------------------------------------------------


def _group_median(groups: np.ndarray, values: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    order = np.lexsort((values, groups))  # by group, then by value within the group
    ranked = values[order]
    return 0.5 * (ranked[starts + (sizes - 1) // 2] + ranked[starts + sizes // 2])


def aggregate_persons(person_ids: np.ndarray, probs: np.ndarray, method: str = "mean",
                      positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique person IDs, one probability row per person) from frame probabilities.

    mean and median work per class; max takes, in binary tasks, the most positive frame (a person is
    as suspicious as their worst frame), and in multi-class tasks the per-class maximum renormalised.
    Vectorised over persons (no Python loop), so 10^5 frames take milliseconds."""
    probs = np.asarray(probs, dtype=np.float64)
    persons, inverse, sizes = np.unique(np.asarray(person_ids), return_inverse=True, return_counts=True)
    inverse = inverse.ravel()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    columns = range(probs.shape[1])
    if method == "mean":
        out = np.stack([np.bincount(inverse, weights=probs[:, k], minlength=len(persons)) for k in columns], 1) / sizes[:, None]
    elif method == "median":
        out = np.stack([_group_median(inverse, probs[:, k], starts, sizes) for k in columns], 1)
    elif method == "max":
        by_person = probs[np.argsort(inverse, kind="stable")]
        out = np.maximum.reduceat(by_person, starts, axis=0)
        if probs.shape[1] == 2:
            out[:, 1 - positive_index] = 1.0 - out[:, positive_index]
    else:
        raise ValueError(f"unknown person aggregation {method!r}")
    return persons, out / out.sum(axis=1, keepdims=True)


def person_labels(person_ids: np.ndarray, y_true: np.ndarray, persons: np.ndarray) -> np.ndarray:
    """The label of each of `persons` (sorted unique IDs), taken from its first frame."""
    person_ids = np.asarray(person_ids)
    first = np.unique(person_ids, return_index=True)[1]
    lookup = dict(zip(person_ids[first], np.asarray(y_true)[first]))
    return np.array([lookup[p] for p in persons], dtype=int)


def youden_threshold(y_true: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float | None:
    """The positive-class threshold that maximises sensitivity + specificity − 1 (None with one class).

    Every threshold between two neighbouring scores gives the same J, so, as pROC does, the midpoint of
    that gap is returned rather than the score itself, which sat on the edge of the validation data. Ties
    go to the threshold nearest 0.5 (a weak model would otherwise get "nothing is positive")."""
    y_pos = (np.asarray(y_true) == positive_index).astype(int)
    if len(np.unique(y_pos)) < 2:
        return None
    fpr, tpr, scores = roc_curve(y_pos, np.asarray(probs)[:, positive_index], drop_intermediate=False)
    upper = np.r_[1.0, scores[1:]]  # point i: positive ⇔ p ≥ scores[i] ⇔ p > scores[i + 1]
    lower = np.r_[scores[1:], 0.0]
    middle = (np.maximum(upper, lower) + lower) / 2
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(middle[best[np.argmin(np.abs(middle[best] - 0.5))]])


# ---------------------------------------------------------------------------------------------
# Person bootstrap
# ---------------------------------------------------------------------------------------------


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

    def __init__(self, group: np.ndarray, y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float):
        group, y_true, probs = np.asarray(group), np.asarray(y_true), np.asarray(probs, dtype=np.float64)
        n_groups, n_classes = int(group.max()) + 1, probs.shape[1]
        self.binary = n_classes == 2
        pred = (probs[:, positive_index] >= threshold).astype(int) if self.binary else probs.argmax(axis=1)
        truth = (y_true == positive_index).astype(int) if self.binary else y_true
        cell = group * n_classes + truth  # per group and true class: frames, correctly classified frames
        self.frames = np.bincount(cell, minlength=n_groups * n_classes).reshape(n_groups, n_classes).astype(np.float64)
        self.correct = np.bincount(cell, weights=(pred == truth), minlength=n_groups * n_classes).reshape(n_groups, n_classes)
        targets = [positive_index] if self.binary else range(n_classes)
        self.aucs = [_RankAUC(probs[:, k], y_true == k, group) for k in targets]

    def __call__(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        frames, correct = counts @ self.frames, counts @ self.correct
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = correct / frames  # binary: column 0 = specificity, column 1 = sensitivity
            out = {"auc": np.mean([auc(counts) for auc in self.aucs], axis=0),
                   "accuracy": correct.sum(axis=1) / frames.sum(axis=1)}
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


def bootstrap_ci(person_ids: np.ndarray, y_true: np.ndarray, probs: np.ndarray, *, n_classes: int,
                 positive_index: int = 1, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                 aggregation: str = "mean", level: float = 0.95) -> dict[str, dict]:
    """Percentile CIs, per image and per person, from resampling persons with replacement.

    Frames of one person are correlated, so the unit of resampling is the person: a resample draws
    persons (within each class, as pROC does, so AUC stays defined) and keeps all of their frames."""
    probs = np.asarray(probs, dtype=np.float64)
    persons, inverse = np.unique(np.asarray(person_ids), return_inverse=True)
    _, person_probs = aggregate_persons(person_ids, probs, aggregation, positive_index)
    person_y = person_labels(person_ids, y_true, persons)
    levels = {"image": ResampledMetrics(inverse.ravel(), y_true, probs, positive_index, threshold),
              "person": ResampledMetrics(np.arange(len(persons)), person_y, person_probs, positive_index, threshold)}
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
    out["method"] = {"resamples": n_resamples, "level": level, "unit": "person", "stratified_by": "label",
                     "interval": "percentile", "seed": seed}
    return out


def _interval(values: np.ndarray, alpha: float, n_resamples: int) -> dict | None:
    values = values[np.isfinite(values)]
    if len(values) < max(10, n_resamples // 10):  # undefined in most resamples: no honest interval
        return None
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return {"low": float(low), "high": float(high), "n": int(len(values))}


# ---------------------------------------------------------------------------------------------
# Per-epoch validation numbers (train.py)
# ---------------------------------------------------------------------------------------------


def epoch_metrics(y_true: np.ndarray, probs: np.ndarray, person_ids: np.ndarray, class_names: list[str],
                  positive_index: int = 1) -> dict[str, float | None]:
    """The validation numbers logged every epoch (argmax predictions; AUC of the positive class)."""
    persons, person_probs = aggregate_persons(person_ids, probs, "mean", positive_index)
    out = {}
    for prefix, (y, p) in (("", (np.asarray(y_true), np.asarray(probs))),
                           ("person_", (person_labels(person_ids, y_true, persons), person_probs))):
        pred = p.argmax(axis=1)
        out[f"{prefix}accuracy"] = float(accuracy_score(y, pred))
        out[f"{prefix}balanced_accuracy"] = float(_quiet(balanced_accuracy_score, y, pred))
        out[f"{prefix}auc"] = auc_score(y, p, positive_index)
    return out
