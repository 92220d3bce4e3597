"""Confidence intervals of proportions (sensitivity, specificity, PPV, NPV, accuracy) per person.

Persons are independent where frames are not, so a person-level proportion is a binomial count and gets
the interval a diagnostic-accuracy paper reports: Wilson's score interval by default, Clopper–Pearson
("exact") on request, both from statsmodels. The person bootstrap stays for AUC, balanced accuracy and every
image-level number (frames of one person are correlated), and for proportions with `--ci bootstrap`.
"""

from __future__ import annotations

import numpy as np

from carotid.evaluation.registry import CI_METHODS

__all__ = ["CI_METHODS", "describe", "proportion_interval", "proportion_intervals"]
PROPORTIONS = ("sensitivity", "specificity", "ppv", "npv", "accuracy")
_STATSMODELS = {"wilson": "wilson", "exact": "beta"}  # proportion_confint's name of each method
METHOD_NAMES = {
    "wilson": "Wilson score interval",
    "exact": "Clopper–Pearson exact interval",
    "bootstrap": "person bootstrap, percentile",
}


def proportion_interval(successes: int, total: int, method: str = "wilson", level: float = 0.95) -> dict | None:
    """{low, high, successes, total} of successes/total (None when total is 0)."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return None
    low, high = proportion_confint(int(successes), int(total), alpha=1.0 - level, method=_STATSMODELS[method])
    # Wilson's bounds at 0/n and n/n are 0 and 1 up to rounding (0.9999999999999999): the interval must hold
    # the estimate exactly.
    low, high = (0.0 if successes == 0 else low), (1.0 if successes == total else high)
    return {"low": float(low), "high": float(high), "successes": int(successes), "total": int(total)}


def counts_at_threshold(y_true: np.ndarray, probs: np.ndarray, positive_index: int, threshold: float | None) -> dict:
    """{proportion: (successes, total)} of one level's rows; binary: positive ⇔ P(positive) ≥ threshold,
    more than two classes: argmax (accuracy only)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.shape[1] != 2:
        return {"accuracy": (int((probs.argmax(axis=1) == y_true).sum()), len(y_true))}
    truth = y_true == positive_index
    call = probs[:, positive_index] >= (0.5 if threshold is None else threshold)
    tp, fn = int((truth & call).sum()), int((truth & ~call).sum())
    tn, fp = int((~truth & ~call).sum()), int((~truth & call).sum())
    return {
        "sensitivity": (tp, tp + fn),
        "specificity": (tn, tn + fp),
        "ppv": (tp, tp + fp),
        "npv": (tn, tn + fn),
        "accuracy": (tp + tn, len(y_true)),
    }


def proportion_intervals(counts: dict, method: str, level: float = 0.95) -> dict[str, dict | None]:
    """{proportion: interval} of `counts_at_threshold`'s counts."""
    return {key: proportion_interval(k, n, method, level) for key, (k, n) in counts.items()}


def interval_methods(person_keys, image_keys, proportions: str) -> dict[str, dict[str, str]]:
    """metrics.json's record of which method made each interval: {level: {metric: method name}}."""
    boot = METHOD_NAMES["bootstrap"]
    person = {key: METHOD_NAMES[proportions] if key in PROPORTIONS else boot for key in person_keys}
    return {"person": person, "image": {key: boot for key in image_keys}}


def describe(method: dict | None) -> str:
    """One sentence for a page: how the 95% intervals were made (from metrics.json's ci.method)."""
    if not method:
        return "no confidence intervals (--bootstrap 0)"
    boot = f"{method['resamples']} bootstrap resamples of persons, stratified by {method['stratified_by']}"
    proportions = method.get("proportions", "bootstrap")
    if proportions == "bootstrap":
        return f"95% CIs: {boot} (percentile intervals)"
    return (
        f"95% CIs: per-person sensitivity, specificity, PPV, NPV and accuracy by the {METHOD_NAMES[proportions]} "
        f"(statsmodels); AUC, balanced accuracy and every per-image number by {boot} (percentile intervals)"
    )
