"""Pure functions on gathered numpy arrays: image- and person-level point estimates and the Youden threshold.

scikit-learn does the arithmetic of every evaluation's point estimates. A metric that is undefined on the
data at hand (AUC with one class, sensitivity without positives) is None, and the reason is added to the
returned notes. Two exceptions use numpy: the bootstrap (`carotid.evaluation.bootstrap`), for speed, and
what training needs every epoch (`epoch_metrics`, `youden_threshold`), computed by the bootstrap's
arithmetic: importing scikit-learn (with scipy) costs about as much CPU as importing torch, which a
training run would otherwise pay for six numbers per epoch. Tests check both against scikit-learn.
scikit-learn is therefore imported inside the functions that use it. Metric names and roles come from
`carotid.evaluation.registry`.
"""

from __future__ import annotations

import warnings as _warnings

import numpy as np

from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.bootstrap import ResampledMetrics
from carotid.evaluation.registry import LEVELS, METRICS, val_column

UNDEFINED = {
    "sensitivity": "no positive cases",
    "specificity": "no negative cases",
    "ppv": "no positive predictions",
    "npv": "no negative predictions",
    "f1": "no positive cases and no positive predictions",
}


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
    from sklearn.metrics import f1_score

    value = _quiet(f1_score, y, pred, zero_division=np.nan, **kwargs)
    return None if np.isnan(value) else float(value)


def auc_score(y_true: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float | None:
    """Binary: AUC of the positive class. Multi-class: macro one-vs-rest AUC. None when a class is missing."""
    from sklearn.metrics import roc_auc_score

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    n_classes = probs.shape[1]
    if not np.isin(np.arange(n_classes), y_true).all():
        return None
    if n_classes == 2:
        return float(roc_auc_score(y_true == positive_index, probs[:, positive_index]))
    return float(np.mean([roc_auc_score(y_true == k, probs[:, k]) for k in range(n_classes)]))


def metrics_at_threshold(y_true: np.ndarray, p_pos: np.ndarray, positive_index: int, threshold: float) -> dict:
    """Binary metrics at one threshold: positive ⇔ p_pos ≥ threshold. Confusion matrix rows: true class."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix

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


def binary_metrics(
    y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float
) -> tuple[dict, list[str]]:
    """AUC, the metrics at `threshold` and, beside them, the same metrics at 0.5."""
    p_pos = np.asarray(probs)[:, positive_index]
    auc = auc_score(y_true, probs, positive_index)
    out = {"auc": auc} | metrics_at_threshold(y_true, p_pos, positive_index, threshold)
    out["at_threshold_0.5"] = metrics_at_threshold(y_true, p_pos, positive_index, 0.5)
    notes = ["AUC is undefined: only one class is present"] if auc is None else []
    notes += [f"{key} is undefined: {reason}" for key, reason in UNDEFINED.items() if out[key] is None]
    return out, notes


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[dict, list[str]]:
    """Argmax predictions; macro one-vs-rest AUC; sensitivity, specificity and AUC of each class."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, roc_auc_score

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
            notes.append(
                f"one-vs-rest AUC of '{name}' is undefined: the class is {'absent' if tp + fn == 0 else 'alone'}"
            )
        per_class[name] = {
            "auc": float(roc_auc_score(y_true == k, probs[:, k])) if present else None,
            "sensitivity": _ratio(tp, tp + fn),
            "specificity": _ratio(tn, tn + fp),
        }
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


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], positive_index: int = 1, threshold: float = 0.5
) -> tuple[dict, list[str]]:
    """Every metric of one level (images or persons); binary tasks use `threshold` on the positive class."""
    if len(class_names) == 2:
        return binary_metrics(y_true, probs, positive_index, threshold)
    return multiclass_metrics(y_true, probs, class_names)


def roc_points(y_pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds): a first point (0, 0) at +inf, then one per distinct score, highest first;
    positive ⇔ score ≥ threshold. scikit-learn's roc_curve(drop_intermediate=False), in numpy."""
    thresholds, block = np.unique(np.asarray(scores), return_inverse=True)
    y_pos = np.asarray(y_pos, dtype=np.float64)
    tps = np.cumsum(np.bincount(block.ravel(), weights=y_pos, minlength=len(thresholds))[::-1])
    fps = np.cumsum(np.bincount(block.ravel(), weights=1.0 - y_pos, minlength=len(thresholds))[::-1])
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]], np.r_[np.inf, thresholds[::-1]]


def youden_threshold(y_true: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float | None:
    """The positive-class threshold that maximises sensitivity + specificity − 1 (None with one class).

    Every threshold between two neighbouring scores gives the same J, so, as pROC does, the midpoint of
    that gap is returned rather than the score itself, which sat on the edge of the validation data. Ties
    go to the threshold nearest 0.5 (a weak model would otherwise get "nothing is positive")."""
    y_pos = (np.asarray(y_true) == positive_index).astype(int)
    if len(np.unique(y_pos)) < 2:
        return None
    fpr, tpr, scores = roc_points(y_pos, np.asarray(probs)[:, positive_index])
    upper = np.r_[1.0, scores[1:]]  # point i: positive ⇔ p ≥ scores[i] ⇔ p > scores[i + 1]
    lower = np.r_[scores[1:], 0.0]
    middle = (np.maximum(upper, lower) + lower) / 2
    j = tpr - fpr
    best = np.flatnonzero(np.isclose(j, j.max()))
    return float(middle[best[np.argmin(np.abs(middle[best] - 0.5))]])


def epoch_metrics(
    y_true: np.ndarray, probs: np.ndarray, person_ids: np.ndarray, positive_index: int = 1, aggregation: str = "mean"
) -> dict[str, float | None]:
    """The validation numbers logged every epoch ({val column: value}; argmax predictions, AUC of the
    positive class, None where undefined); persons aggregated as the run's --person-aggregation.

    The bootstrap's arithmetic with one "resample" that draws every frame once is the metric itself."""
    persons, person_probs = aggregate_persons(person_ids, probs, aggregation, positive_index)
    levels = {
        "image": (np.asarray(y_true), np.asarray(probs)),
        "person": (person_labels(person_ids, y_true, persons), person_probs),
    }
    out = {}
    for level in LEVELS:
        y, p = levels[level]
        values = ResampledMetrics(np.arange(len(y)), y, p, positive_index, threshold=None)(np.ones((1, len(y))))
        for metric in METRICS:
            if level in metric.per_epoch:
                value = float(values[metric.name][0])
                out[val_column(metric.name, level)] = None if np.isnan(value) else value
    return out
