"""Pure functions on gathered numpy arrays: image- and person-level metrics and person-bootstrap CIs.

scikit-learn does the arithmetic. A metric that is undefined on the data at hand (AUC with one class,
sensitivity without positives) is None, and the reason is added to the returned warnings.
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


def _ratio(num: int, den: int) -> float | None:
    return float(num) / float(den) if den else None


def _quiet(fn, *args, **kwargs):
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _f1(y, pred, **kwargs) -> float | None:
    value = _quiet(f1_score, y, pred, zero_division=np.nan, **kwargs)
    return None if np.isnan(value) else float(value)


def threshold_metrics(y_pos: np.ndarray, p_pos: np.ndarray, threshold: float) -> dict:
    """Binary metrics that depend on the operating point: positive ⇔ p_pos ≥ threshold."""
    pred = (p_pos >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_pos, pred, labels=[0, 1]).ravel()
    return {
        "threshold": float(threshold),
        "accuracy": float(accuracy_score(y_pos, pred)),
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_pos, pred)),
        "f1": _f1(y_pos, pred),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
    }


def binary_metrics(y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float) -> tuple[dict, list[str]]:
    y_pos = (np.asarray(y_true) == positive_index).astype(int)
    p_pos = np.asarray(probs)[:, positive_index]
    notes: list[str] = []
    out = threshold_metrics(y_pos, p_pos, threshold)
    if len(np.unique(y_pos)) < 2:
        out["auc"] = None
        notes.append("AUC is undefined: only one class is present")
    else:
        out["auc"] = float(roc_auc_score(y_pos, p_pos))
    for key in ("sensitivity", "npv") if not y_pos.any() else ():
        notes.append(f"{key} is undefined: no positive cases")
    for key in ("specificity",) if y_pos.all() else ():
        notes.append(f"{key} is undefined: no negative cases")
    pred_index = np.where(p_pos >= threshold, positive_index, 1 - positive_index)
    out["confusion_matrix"] = confusion_matrix(y_true, pred_index, labels=[0, 1]).tolist()
    out[f"at_threshold_0.5"] = threshold_metrics(y_pos, p_pos, 0.5) if threshold != 0.5 else None
    return out, notes


def multiclass_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[dict, list[str]]:
    y_true = np.asarray(y_true)
    pred = np.asarray(probs).argmax(axis=1)
    labels = list(range(len(class_names)))
    cm = confusion_matrix(y_true, pred, labels=labels)
    notes: list[str] = []
    per_class, aucs = {}, []
    for k, name in enumerate(class_names):
        tp = int(cm[k, k])
        fn = int(cm[k].sum()) - tp
        fp = int(cm[:, k].sum()) - tp
        tn = int(cm.sum()) - tp - fn - fp
        y_k = (y_true == k).astype(int)
        auc = float(roc_auc_score(y_k, probs[:, k])) if 0 < y_k.sum() < len(y_k) else None
        if auc is None:
            notes.append(f"one-vs-rest AUC of '{name}' is undefined: the class is {'absent' if not y_k.any() else 'alone'}")
        else:
            aucs.append(auc)
        per_class[name] = {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp), "auc": auc}
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(_quiet(balanced_accuracy_score, y_true, pred)),
        "auc": float(np.mean(aucs)) if len(aucs) == len(class_names) else None,
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


def aggregate_persons(person_ids: np.ndarray, probs: np.ndarray, method: str = "mean",
                      positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique person IDs, one probability row per person) from frame probabilities.

    mean and median work per class; max takes, in binary tasks, the most positive frame (a person is
    as suspicious as their worst frame), and in multi-class tasks the per-class maximum renormalised."""
    person_ids = np.asarray(person_ids)
    probs = np.asarray(probs, dtype=np.float64)
    persons, inverse = np.unique(person_ids, return_inverse=True)
    out = np.zeros((len(persons), probs.shape[1]))
    for i in range(len(persons)):
        rows = probs[inverse == i]
        if method == "mean":
            out[i] = rows.mean(axis=0)
        elif method == "median":
            out[i] = np.median(rows, axis=0)
        elif method == "max" and probs.shape[1] == 2:
            out[i, positive_index] = rows[:, positive_index].max()
            out[i, 1 - positive_index] = 1.0 - out[i, positive_index]
        elif method == "max":
            out[i] = rows.max(axis=0)
        else:
            raise ValueError(f"unknown person aggregation {method!r}")
        out[i] /= out[i].sum()
    return persons, out


def youden_threshold(y_true: np.ndarray, probs: np.ndarray, positive_index: int = 1) -> float | None:
    """The positive-class threshold that maximises sensitivity + specificity − 1 (None with one class)."""
    y_pos = (np.asarray(y_true) == positive_index).astype(int)
    if len(np.unique(y_pos)) < 2:
        return None
    fpr, tpr, thresholds = roc_curve(y_pos, np.asarray(probs)[:, positive_index])
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))


def summary_metrics(y_true: np.ndarray, probs: np.ndarray, n_classes: int, positive_index: int,
                    threshold: float) -> dict[str, float | None]:
    """The few numbers a confidence interval is drawn for (AUC, accuracy, sensitivity, specificity)."""
    y_true = np.asarray(y_true)
    if n_classes == 2:
        y_pos = (y_true == positive_index).astype(int)
        p_pos = probs[:, positive_index]
        out = threshold_metrics(y_pos, p_pos, threshold)
        auc = float(roc_auc_score(y_pos, p_pos)) if 0 < y_pos.sum() < len(y_pos) else None
        return {"auc": auc, "accuracy": out["accuracy"], "sensitivity": out["sensitivity"], "specificity": out["specificity"]}
    full, _ = multiclass_metrics(y_true, probs, [str(k) for k in range(n_classes)])
    return {"auc": full["auc"], "accuracy": full["accuracy"], "balanced_accuracy": full["balanced_accuracy"]}


def bootstrap_ci(person_ids: np.ndarray, y_true: np.ndarray, probs: np.ndarray, *, n_classes: int,
                 positive_index: int = 1, threshold: float = 0.5, n_resamples: int = 1000, seed: int = 0,
                 aggregation: str = "mean", level: float = 0.95) -> dict[str, dict]:
    """Percentile CIs from resampling persons with replacement, for both levels.

    Frames of one person are correlated, so the unit of resampling is the person: each resample draws
    persons and takes all of their frames (a cluster bootstrap) for the image level."""
    person_ids = np.asarray(person_ids)
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    persons, inverse = np.unique(person_ids, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == i) for i in range(len(persons))]
    _, person_probs = aggregate_persons(person_ids, probs, aggregation, positive_index)
    person_y = np.array([y_true[rows[0]] for rows in rows_of])
    rng = np.random.default_rng(seed)
    samples: dict[str, dict[str, list]] = {"image": {}, "person": {}}
    for _ in range(n_resamples):
        pick = rng.integers(0, len(persons), size=len(persons))
        rows = np.concatenate([rows_of[i] for i in pick])
        for level_name, values in (
            ("person", summary_metrics(person_y[pick], person_probs[pick], n_classes, positive_index, threshold)),
            ("image", summary_metrics(y_true[rows], probs[rows], n_classes, positive_index, threshold)),
        ):
            for key, value in values.items():
                samples[level_name].setdefault(key, []).append(np.nan if value is None else value)
    alpha = (1.0 - level) / 2.0
    out: dict[str, dict] = {}
    for level_name, metrics in samples.items():
        out[level_name] = {}
        for key, values in metrics.items():
            arr = np.asarray(values, dtype=float)
            arr = arr[~np.isnan(arr)]
            if len(arr) < max(10, n_resamples // 10):
                out[level_name][key] = None
                continue
            low, high = np.quantile(arr, [alpha, 1.0 - alpha])
            out[level_name][key] = {"low": float(low), "high": float(high), "n": int(len(arr))}
    out["method"] = {"resamples": n_resamples, "level": level, "unit": "person", "seed": seed}
    return out


def epoch_metrics(y_true: np.ndarray, probs: np.ndarray, person_ids: np.ndarray, class_names: list[str],
                  positive_index: int = 1) -> dict[str, float | None]:
    """The validation numbers logged every epoch (argmax predictions; AUC of the positive class)."""
    n_classes = len(class_names)
    out = {}
    for prefix, (y, p) in (("", (y_true, probs)), ("person_", _person_level(y_true, probs, person_ids, positive_index))):
        pred = p.argmax(axis=1)
        out[f"{prefix}accuracy"] = float(accuracy_score(y, pred))
        out[f"{prefix}balanced_accuracy"] = float(_quiet(balanced_accuracy_score, y, pred))
        out[f"{prefix}auc"] = summary_metrics(y, p, n_classes, positive_index, 0.5)["auc"]
    return out


def _person_level(y_true, probs, person_ids, positive_index):
    persons, person_probs = aggregate_persons(person_ids, probs, "mean", positive_index)
    first = {p: i for i, p in reversed(list(enumerate(np.asarray(person_ids))))}
    return np.asarray(y_true)[[first[p] for p in persons]], person_probs
