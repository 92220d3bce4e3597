"""Calibration: whether a predicted 0.8 means "80 % of such persons are positive".

Brier score (scikit-learn), expected calibration error over ECE_BINS equal-width bins, logistic
recalibration (slope, intercept and calibration-in-the-large, statsmodels GLM), and temperature scaling
(one scalar T fitted on the validation frames' logits: softmax(logits / T)).
See docs/EVALUATION.md for the keys of metrics.json's `calibration` section.
"""

from __future__ import annotations

import warnings as _warnings

import numpy as np

from carotid.evaluation.registry import CALIBRATION_METRICS, ECE_BINS

# float32 softmax saturates at exactly 0 or 1; logit() of those is infinite, so probabilities are
# clipped to [EPS, 1 - EPS] for the recalibration fit only (logit(1e-6) ≈ -13.8).
EPS = 1e-6
# A fitted intercept or slope beyond this many logits (odds of e^50) is a diverging fit (statsmodels can say
# "converged" at 1e15 on nearly separated data), not a property of the model.
MAX_LOGIT = 50.0
TEMPERATURE_BOUNDS = (1e-2, 1e2)  # a temperature outside this range means the logits carry no usable scale
MIN_CALIBRATION_PERSONS = 20  # below this, failed or wild recalibration fits are the sample's size, not the model
BINNING = f"{ECE_BINS} equal-width bins of the predicted probability on [0, 1]"


# ---------------------------------------------------------------------------------------------
# Calibration metrics
# ---------------------------------------------------------------------------------------------


def reliability_bins(hit: np.ndarray, confidence: np.ndarray, n_bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin of `confidence`: its range, count, mean confidence and observed rate of `hit`.

    Written out rather than sklearn's calibration_curve, which drops empty bins and gives no counts,
    both of which the ECE and the reliability diagram need."""
    confidence, hit = np.asarray(confidence, dtype=np.float64), np.asarray(hit, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, n_bins - 1)  # 1.0 goes to the last bin
    bins = []
    for k in range(n_bins):
        inside = index == k
        n = int(inside.sum())
        bins.append(
            {
                "low": float(edges[k]),
                "high": float(edges[k + 1]),
                "n": n,
                "mean_predicted": float(confidence[inside].mean()) if n else None,
                "observed": float(hit[inside].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(bins: list[dict]) -> float | None:
    """Σ_bins (n_bin / n) · |observed − mean predicted|."""
    total = sum(b["n"] for b in bins)
    if not total:
        return None
    return float(sum(b["n"] * abs(b["observed"] - b["mean_predicted"]) for b in bins if b["n"]) / total)


def logistic_recalibration(y_pos: np.ndarray, p_pos: np.ndarray) -> tuple[dict, list[str]]:
    """Calibration slope and intercept of logit P(y=1) = a + b·logit(p), and calibration-in-the-large
    (a with b fixed at 1). A perfectly calibrated model has slope 1 and both intercepts 0; a slope
    below 1 means over-confident probabilities."""
    import statsmodels.api as sm

    none = {"calibration_slope": None, "calibration_intercept": None, "calibration_in_the_large": None}
    y_pos = np.asarray(y_pos, dtype=np.float64)
    if len(np.unique(y_pos)) < 2:
        return none, ["calibration slope and intercepts are undefined: only one class is present"]
    from scipy.special import logit  # scipy loads only when a report is written, not before training

    p_pos = np.asarray(p_pos, dtype=np.float64)
    saturated = int(np.count_nonzero((p_pos < EPS) | (p_pos > 1.0 - EPS)))
    if saturated > len(p_pos) / 2:  # their logit is unknown: a fit on the clipped values describes the clipping
        return none, [
            f"calibration slope and intercepts are not estimable: {saturated} of {len(p_pos)} probabilities are 0 "
            f"or 1 (within {EPS:g})"
        ]
    lp = logit(np.clip(p_pos, EPS, 1.0 - EPS))
    notes = []
    out = dict(none)
    family = sm.families.Binomial()
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore")  # statsmodels warns on (quasi-)separation; checked below instead
        negatives, positives = lp[y_pos == 0], lp[y_pos == 1]
        if negatives.max() < positives.min() or positives.max() < negatives.min():
            notes.append("calibration slope is undefined: the probabilities separate the classes perfectly")
        else:
            fit = sm.GLM(y_pos, sm.add_constant(lp, has_constant="add"), family=family).fit()
            if fit.converged and np.all(np.abs(fit.params) <= MAX_LOGIT):
                out["calibration_intercept"], out["calibration_slope"] = (float(v) for v in fit.params)
            else:
                notes.append("calibration slope did not converge to a finite value")
        large = sm.GLM(y_pos, np.ones((len(lp), 1)), family=family, offset=lp).fit()
        if large.converged and abs(large.params[0]) <= MAX_LOGIT:
            out["calibration_in_the_large"] = float(large.params[0])
        else:
            notes.append("calibration-in-the-large did not converge to a finite value")
    return out, notes


def calibration_metrics(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], positive_index: int
) -> tuple[dict, list[str]]:
    """One level's calibration. Binary: of P(positive class). Multi-class: the multi-class Brier score
    and the top-label ECE (confidence of the predicted class vs. whether it was right)."""
    from sklearn.metrics import brier_score_loss

    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    binary = len(class_names) == 2
    if binary:
        hit, confidence = (y_true == positive_index).astype(float), probs[:, positive_index]
        brier = brier_score_loss(hit, confidence)
    else:
        hit, confidence = (probs.argmax(axis=1) == y_true).astype(float), probs.max(axis=1)
        brier = brier_score_loss(y_true, probs, labels=list(range(len(class_names))))
    bins = reliability_bins(hit, confidence)
    out = {"brier": float(brier), "ece": expected_calibration_error(bins)}
    notes: list[str] = []
    if binary:
        fitted, notes = logistic_recalibration(hit, confidence)
        out |= fitted
    out["reliability"] = bins
    return out, notes


# ---------------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------------


def mean_nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of softmax(logits / T) (natural log), the quantity temperature scaling minimises."""
    from scipy.special import log_softmax

    logp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-logp[np.arange(len(labels)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> dict:
    """The T > 0 minimising the validation NLL of softmax(logits / T) (Guo et al. 2017), searched on log T.

    One parameter: it changes confidence, never the ranking of a frame's classes, so argmax accuracy
    stays the same."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    low, high = np.log(TEMPERATURE_BOUNDS)
    result = minimize_scalar(
        lambda log_t: mean_nll(logits, labels, float(np.exp(log_t))), bounds=(low, high), method="bounded"
    )
    temperature = float(np.exp(result.x))
    return {
        "temperature": temperature,
        "nll_before": mean_nll(logits, labels),
        "nll_after": mean_nll(logits, labels, temperature),
        "frames": int(len(labels)),
    }


def apply_temperature(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """Class probabilities softmax(logits / T) in float64 (T None: plain softmax)."""
    from scipy.special import softmax

    return softmax(np.asarray(logits, dtype=np.float64) / (temperature or 1.0), axis=1)


# ---------------------------------------------------------------------------------------------
# The calibration section of metrics.json
# ---------------------------------------------------------------------------------------------


def too_few_persons(persons: int | None) -> str | None:
    """The one warning of a binary calibration judged on too few persons (evaluations, CVs, comparisons), whatever
    the model kind; None when there are enough."""
    if persons is None or persons >= MIN_CALIBRATION_PERSONS:
        return None
    return (
        f"{persons} persons are too few to judge calibration (at least {MIN_CALIBRATION_PERSONS} advised): "
        "its slope and intercepts are undefined or unreliable here; Brier score and ECE are shown as measured"
    )


def calibration_section(
    levels: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str],
    positive_index: int,
    *,
    before: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    temperature: float | None = None,
    temperature_source: str | None = None,
) -> tuple[dict, list[str]]:
    """({binning, image, person, temperature, before_temperature}, notes). `levels` and `before` are
    {level: (labels, probs)}: the probabilities evaluated and, with a temperature, those without it."""
    out: dict = {"binning": BINNING, "temperature": temperature, "temperature_source": temperature_source}
    notes: list[str] = []
    for level, (y, probs) in levels.items():
        out[level], level_notes = calibration_metrics(y, probs, class_names, positive_index)
        notes += [f"{level}: {n}" for n in level_notes]
    persons = len(levels["person"][0]) if "person" in levels else None
    # One rule for every model kind: a binary slope on too few persons is flagged whether its fit failed (one
    # line, not one per failed fit) or converged to a wild value (a slope of 7.1 on 6 persons).
    few = too_few_persons(persons) if len(class_names) == 2 else None
    if few:
        notes = [few]
    out["before_temperature"] = None
    if before is not None:
        out["before_temperature"] = {
            level: calibration_metrics(y, probs, class_names, positive_index)[0] for level, (y, probs) in before.items()
        }
    return out, notes


def format_calibration(section: dict) -> str:
    """Calibration per image and per person (and before temperature scaling, when there was one)."""

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    levels = [level for level in ("image", "person") if section.get(level) is not None]  # person models: no image
    columns = [(level, section[level]) for level in levels]
    if section.get("before_temperature"):
        columns = [(f"{level} (T=1)", section["before_temperature"][level]) for level in levels] + [
            (f"{level} (T={section['temperature']:.2f})", section[level]) for level in levels
        ]
    lines = [f"calibration ({section['binning']} for the ECE):"]
    lines.append((f"  {'':<26}" + "".join(f"{name:<16}" for name, _ in columns)).rstrip())
    for metric in CALIBRATION_METRICS:
        if metric.name in section["person"]:
            cells = "".join(f"{number(values[metric.name]):<15} " for _, values in columns)
            lines.append(f"  {metric.name:<26}{cells}".rstrip())
    return "\n".join(lines)
