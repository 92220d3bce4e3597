"""Paired comparison of evaluations of the same persons (`carotid-compare EVAL_DIR EVAL_DIR …`): models, or
models and readers. This module reads and aligns the folders and holds the paired tests of two of them; every
difference is A − B, per person. `carotid.evaluation.comparison` builds the table of N models from them.

- AUC: DeLong's test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988), computed with
  the midrank algorithm of Sun & Xu (2014). No maintained Python package offers it (scikit-learn and
  SciPy do not; R's pROC does), so it is written out here and checked in tests/test_compare.py against
  the structural components computed pair by pair and against a bootstrap. A standard error of zero
  (e.g. both AUCs 1.000) makes the test not estimable: no z, no p, no CI.
- Sensitivity and specificity, each at its side's own threshold: McNemar's test on the discordant
  persons (statsmodels; exact binomial when fewer than 25 are discordant, else χ² with continuity
  correction).
- A paired person bootstrap (the same persons drawn for both sides, within each class) gives a
  percentile CI of each difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from carotid.core.errors import UserError
from carotid.core.files import read_table
from carotid.core.run_dir import EvalDir
from carotid.evaluation.bootstrap import _RankAUC, resample_counts
from carotid.evaluation.records import read_metrics

EXACT_BELOW = 25  # discordant pairs under which McNemar's test is the exact binomial one


@dataclass
class Side:
    """One evaluation folder's persons, in person-ID order."""

    folder: Path
    class_names: list[str]
    positive_class: str
    threshold: float | None
    person_ids: np.ndarray
    truth: np.ndarray  # true class name of each person
    score: np.ndarray  # prob_<positive class> (a reader's raw score)
    call: np.ndarray  # predicted positive (predicted_label == positive class)
    reader: dict | None
    metrics: dict = field(default_factory=dict)  # the folder's metrics.json (what the model is, its numbers)


def read_side(folder: str | Path) -> Side:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"evaluation folder not found: {folder}", "pass folders written by carotid-evaluate (eval_*)")
    metrics_path, table_path = EvalDir(folder).metrics, EvalDir(folder).person_predictions
    for path in (metrics_path, table_path):
        if not path.is_file():
            raise UserError(
                f"{path} not found", "pass evaluation folders written by carotid-evaluate or carotid-train (eval_*)"
            )
    metrics = read_metrics(metrics_path)
    class_names, positive = metrics.get("class_names") or [], metrics.get("positive_class")
    if len(class_names) != 2 or positive not in class_names:
        raise UserError(f"{folder} is not a binary evaluation (classes {class_names})", "compare binary tasks only")
    rows = sorted(read_table(table_path), key=lambda r: r["person_id"])
    if not rows or "true_label" not in rows[0] or f"prob_{positive}" not in rows[0]:
        raise UserError(f"{table_path} has no true_label or prob_{positive} column", "pass a labelled evaluation")
    return Side(
        folder,
        class_names,
        positive,
        metrics.get("threshold"),
        np.array([r["person_id"] for r in rows], dtype=str),
        np.array([r["true_label"] for r in rows], dtype=str),
        np.array([float(r[f"prob_{positive}"]) for r in rows]),
        np.array([r["predicted_label"] == positive for r in rows]),
        metrics.get("reader"),
        dict(metrics),
    )


def negative_class(side: Side) -> str:
    return next(c for c in side.class_names if c != side.positive_class)


def align(sides: list[Side], shared_only: bool) -> tuple[list[Side], list[str]]:
    """Every side on the same persons in the same order; refuses differing classes, persons or labels,
    naming the folders that differ from the first."""
    first = sides[0]
    for other in sides[1:]:
        if (other.class_names, other.positive_class) != (first.class_names, first.positive_class):
            raise UserError(
                f"the evaluations have different classes: {first.class_names} (positive '{first.positive_class}') "
                f"in {first.folder} and {other.class_names} (positive '{other.positive_class}') in {other.folder}",
                "compare evaluations of the same task",
            )
    notes = []
    for other in sides[1:]:
        only_first = sorted(map(str, set(first.person_ids) - set(other.person_ids)))
        only_other = sorted(map(str, set(other.person_ids) - set(first.person_ids)))
        if not (only_first or only_other):
            continue
        if not shared_only:
            raise UserError(
                f"the evaluations hold different persons: {len(only_first)} only in {first.folder} "
                f"(e.g. {only_first[:3]}), {len(only_other)} only in {other.folder} (e.g. {only_other[:3]})",
                "evaluate all on the same persons (same run split, same data), or pass --shared-persons",
            )
    shared = first.person_ids
    for other in sides[1:]:
        shared = np.intersect1d(shared, other.person_ids)
    if len(shared) == 0:
        raise UserError("the evaluations share no person", "evaluate all on the same persons")
    for side in sides:
        left = len(side.person_ids) - len(shared)
        if left:
            notes.append(f"compared on the {len(shared)} shared persons: {left} only in {side.folder} left out")
    sides = [_subset(side, shared) for side in sides]
    for other in sides[1:]:
        differ = sides[0].person_ids[sides[0].truth != other.truth]
        if len(differ):
            raise UserError(
                f"{len(differ)} person(s) have different true labels in {sides[0].folder} and {other.folder}, "
                f"e.g. {list(differ[:3])}",
                "evaluate all with the same label file",
            )
    return sides, notes


def _subset(side: Side, persons: np.ndarray) -> Side:
    keep = np.isin(side.person_ids, persons)
    return replace(
        side,
        person_ids=side.person_ids[keep],
        truth=side.truth[keep],
        score=side.score[keep],
        call=side.call[keep],
    )


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def delong(y_pos: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95) -> dict:
    """AUCs, their difference A − B with its DeLong standard error, normal CI, z and two-sided p."""
    # Here, not at the top: evaluation.subgroups imports this module, and training reaches it before its first
    # batch, which must not wait for SciPy (tests/test_startup.py).
    from scipy.stats import norm, rankdata

    y_pos = np.asarray(y_pos, dtype=bool)
    m, n = int(y_pos.sum()), int((~y_pos).sum())
    if m < 1 or n < 1:
        raise UserError(
            f"the persons compared are all of one class ({m} positive, {n} negative)", "compare both classes"
        )
    aucs, v10, v01 = [], [], []
    for score in (score_a, score_b):
        score = np.asarray(score, dtype=np.float64)
        x, y = score[y_pos], score[~y_pos]
        tz = rankdata(np.r_[x, y])  # midranks: ties count one half, as in the Mann-Whitney AUC
        tx, ty = rankdata(x), rankdata(y)
        aucs.append((tz[:m].sum() - m * (m + 1) / 2) / (m * n))
        v10.append((tz[:m] - tx) / n)  # per positive: share of negatives it out-scores
        v01.append(1.0 - (tz[m:] - ty) / m)  # per negative: share of positives that out-score it
    difference = float(aucs[0] - aucs[1])
    out = {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "difference": difference,
        "se": None,
        "ci": None,
        "correlation": None,
        "z": None,
        "p_value": None,
        "note": None,
    }
    if m < 2 or n < 2:  # a covariance of one person's components is undefined
        out["note"] = f"DeLong's variance needs at least 2 positive and 2 negative persons ({m} and {n} here)"
        return out
    s = np.cov(np.array(v10)) / m + np.cov(np.array(v01)) / n
    se = float(np.sqrt(max(float(s[0, 0] + s[1, 1] - 2 * s[0, 1]), 0.0)))
    z_crit = float(norm.ppf(0.5 + level / 2))
    out["se"] = se
    out["ci"] = {"low": difference - z_crit * se, "high": difference + z_crit * se, "level": level}
    if s[0, 0] > 0 and s[1, 1] > 0:
        out["correlation"] = float(s[0, 1] / np.sqrt(s[0, 0] * s[1, 1]))
    if se > 0:
        out["z"] = difference / se
        out["p_value"] = float(2 * norm.sf(abs(out["z"])))
    else:  # e.g. both AUCs 1.000: zero variance is not certainty, the test has nothing to go on
        out["ci"] = None
        out["note"] = (
            f"not estimable: the standard error of the AUC difference is 0 (AUCs {aucs[0]:.3f} and {aucs[1]:.3f})"
        )
    return out


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test on paired right/wrong outcomes (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    both, a_only = int((correct_a & correct_b).sum()), int((correct_a & ~correct_b).sum())
    b_only, neither = int((~correct_a & correct_b).sum()), int((~correct_a & ~correct_b).sum())
    exact = a_only + b_only < EXACT_BELOW
    result = mcnemar([[both, a_only], [b_only, neither]], exact=exact, correction=True)
    # No discordant person: the test has nothing to weigh (statsmodels would say p = 1).
    estimable = a_only + b_only > 0
    return {
        "n": int(len(correct_a)),
        "rate_a": float(correct_a.mean()) if len(correct_a) else None,
        "rate_b": float(correct_b.mean()) if len(correct_b) else None,
        "difference": float(correct_a.mean() - correct_b.mean()) if len(correct_a) else None,
        "table": {"both_right": both, "only_a_right": a_only, "only_b_right": b_only, "both_wrong": neither},
        "method": "exact binomial" if exact else "chi-square with continuity correction",
        "statistic": float(result.statistic) if estimable else None,
        "p_value": float(result.pvalue) if estimable else None,
        "note": None if estimable else "not estimable: no discordant person (the two agree on every one)",
    }


def paired_bootstrap(
    y_pos: np.ndarray, a: Side, b: Side, n_resamples: int, seed: int, level: float = 0.95
) -> dict[str, dict | None]:
    """Percentile CIs of the differences A − B over persons resampled with replacement within each class;
    each resample draws the same persons for both sides, which is what makes it paired."""
    y_pos = np.asarray(y_pos, dtype=bool)
    group = np.arange(len(y_pos))
    counts = resample_counts(y_pos.astype(int), n_resamples, np.random.default_rng(seed))
    auc = {side: _RankAUC(s.score, y_pos, group)(counts) for side, s in (("a", a), ("b", b))}
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = {}
        for side, s in (("a", a), ("b", b)):
            rates[side] = {
                "sensitivity": counts @ (s.call & y_pos).astype(float) / (counts @ y_pos.astype(float)),
                "specificity": counts @ (~s.call & ~y_pos).astype(float) / (counts @ (~y_pos).astype(float)),
            }
    differences = {"auc": auc["a"] - auc["b"]} | {k: rates["a"][k] - rates["b"][k] for k in rates["a"]}
    alpha = (1 - level) / 2
    out = {}
    for key, values in differences.items():
        values = values[np.isfinite(values)]
        low, high = np.quantile(values, [alpha, 1 - alpha]) if len(values) else (np.nan, np.nan)
        out[key] = {"low": float(low), "high": float(high), "n": int(len(values))} if len(values) else None
    out["method"] = {"resamples": n_resamples, "level": level, "unit": "person", "stratified_by": "label", "seed": seed}
    return out


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def interval(ci) -> str:
    """A signed difference's CI, '[-0.123, +0.045]'."""
    return "n/a" if not ci else f"[{ci['low']:+.3f}, {ci['high']:+.3f}]"


def p(value) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")
