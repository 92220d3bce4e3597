"""The numbers behind a paper's curves, per person: precision–recall with average precision (scikit-learn),
the decision curve (net benefit against treating all and treating none; Vickers & Elkin 2006) and the
calibration curve with a person-bootstrap band. Each returns plain lists, written as a CSV beside its figure.
"""

from __future__ import annotations

import numpy as np

from carotid.evaluation.bootstrap import resample_counts

DECISION_THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)  # threshold probabilities of the decision curve
CALIBRATION_BINS = 10


def precision_recall(y_pos: np.ndarray, score: np.ndarray) -> dict:
    """{recall, precision, thresholds, average_precision, prevalence} (scikit-learn's curve and AP)."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y_pos = np.asarray(y_pos, dtype=bool)
    precision, recall, thresholds = precision_recall_curve(y_pos, score)
    return {
        "recall": recall.tolist(),
        "precision": precision.tolist(),
        "thresholds": [*thresholds.tolist(), None],  # the last point (recall 0) has no threshold
        "average_precision": float(average_precision_score(y_pos, score)),
        "prevalence": float(y_pos.mean()),
    }


def net_benefit(y_pos: np.ndarray, score: np.ndarray, threshold: float) -> float:
    """(true positives − false positives · pt / (1 − pt)) / n, calling positive ⇔ score ≥ pt."""
    y_pos, call = np.asarray(y_pos, dtype=bool), np.asarray(score) >= threshold
    n = len(y_pos)
    return float((call & y_pos).sum() / n - (call & ~y_pos).sum() / n * threshold / (1.0 - threshold))


def decision_curve(y_pos: np.ndarray, score: np.ndarray, thresholds: np.ndarray = DECISION_THRESHOLDS) -> dict:
    """{threshold, model, treat_all, treat_none}: net benefit per threshold probability."""
    y_pos = np.asarray(y_pos, dtype=bool)
    prevalence = float(y_pos.mean())
    return {
        "threshold": [float(t) for t in thresholds],
        "model": [net_benefit(y_pos, score, t) for t in thresholds],
        "treat_all": [prevalence - (1.0 - prevalence) * t / (1.0 - t) for t in thresholds],
        "treat_none": [0.0] * len(thresholds),
    }


def calibration_curve(
    y_pos: np.ndarray, score: np.ndarray, *, n_resamples: int = 1000, seed: int = 0, bins: int = CALIBRATION_BINS
) -> dict:
    """Per equal-width bin of the predicted probability (bins without persons left out): its mean predicted
    probability, the observed share of positives, the number of persons, and the 2.5 and 97.5 percentiles of
    the observed share over person resamples (stratified by label, as every bootstrap here)."""
    y_pos, score = np.asarray(y_pos, dtype=bool), np.clip(np.asarray(score, dtype=np.float64), 0.0, 1.0)
    index = np.minimum((score * bins).astype(int), bins - 1)
    member = np.eye(bins)[index]  # person × bin
    counts = resample_counts(y_pos.astype(int), n_resamples, np.random.default_rng(seed)) if n_resamples else None
    out = {key: [] for key in ("bin_low", "bin_high", "n", "mean_predicted", "observed", "low", "high")}
    for b in np.flatnonzero(member.sum(axis=0)):
        inside = member[:, b].astype(bool)
        out["bin_low"].append(b / bins)
        out["bin_high"].append((b + 1) / bins)
        out["n"].append(int(inside.sum()))
        out["mean_predicted"].append(float(score[inside].mean()))
        out["observed"].append(float(y_pos[inside].mean()))
        low = high = None
        if counts is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                rates = (counts @ (inside & y_pos)) / (counts @ inside)
            rates = rates[np.isfinite(rates)]
            if len(rates):
                low, high = (float(v) for v in np.quantile(rates, [0.025, 0.975]))
        out["low"].append(low)
        out["high"].append(high)
    return out
