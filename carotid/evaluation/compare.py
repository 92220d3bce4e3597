"""Paired comparison of two evaluations of the same persons (`carotid-compare EVAL_A EVAL_B`): two models,
or a model and a reader. Every difference is A − B, per person.

- AUC: DeLong's test for two correlated ROC curves (DeLong, DeLong & Clarke-Pearson 1988), computed with
  the midrank algorithm of Sun & Xu (2014). No maintained Python package offers it (scikit-learn and
  SciPy do not; R's pROC does), so it is written out here and checked in tests/test_compare.py against
  the structural components computed pair by pair and against a bootstrap.
- Sensitivity and specificity, each at its side's own threshold: McNemar's test on the discordant
  persons (statsmodels; exact binomial when fewer than 25 are discordant, else χ² with continuity
  correction).
- A paired person bootstrap (the same persons drawn for both sides, within each class) gives a
  percentile CI of each difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import norm, rankdata

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
    )


def negative_class(side: Side) -> str:
    return next(c for c in side.class_names if c != side.positive_class)


def align(a: Side, b: Side, shared_only: bool) -> tuple[Side, Side, list[str]]:
    """Both sides on the same persons in the same order; refuses differing classes, persons or labels."""
    if (a.class_names, a.positive_class) != (b.class_names, b.positive_class):
        raise UserError(
            f"the evaluations have different classes: {a.class_names} (positive '{a.positive_class}') and "
            f"{b.class_names} (positive '{b.positive_class}')",
            "compare evaluations of the same task",
        )
    only_a = sorted(map(str, set(a.person_ids) - set(b.person_ids)))
    only_b = sorted(map(str, set(b.person_ids) - set(a.person_ids)))
    notes = []
    if only_a or only_b:
        if not shared_only:
            raise UserError(
                f"the evaluations hold different persons: {len(only_a)} only in {a.folder} (e.g. {only_a[:3]}), "
                f"{len(only_b)} only in {b.folder} (e.g. {only_b[:3]})",
                "evaluate both on the same persons (same run split, same data), or pass --shared-persons",
            )
        notes.append(f"compared on the shared persons: {len(only_a)} only in A and {len(only_b)} only in B left out")
    shared = np.intersect1d(a.person_ids, b.person_ids)
    if len(shared) == 0:
        raise UserError("the evaluations share no person", "evaluate both on the same persons")
    a, b = (_subset(side, shared) for side in (a, b))
    differ = a.person_ids[a.truth != b.truth]
    if len(differ):
        raise UserError(
            f"{len(differ)} person(s) have different true labels in the two evaluations, e.g. {list(differ[:3])}",
            "evaluate both with the same label file",
        )
    return a, b, notes


def _subset(side: Side, persons: np.ndarray) -> Side:
    keep = np.isin(side.person_ids, persons)
    return Side(
        side.folder,
        side.class_names,
        side.positive_class,
        side.threshold,
        side.person_ids[keep],
        side.truth[keep],
        side.score[keep],
        side.call[keep],
        side.reader,
    )


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


def delong(y_pos: np.ndarray, score_a: np.ndarray, score_b: np.ndarray, level: float = 0.95) -> dict:
    """AUCs, their difference A − B with its DeLong standard error, normal CI, z and two-sided p."""
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
    elif difference == 0:
        out["p_value"] = 1.0  # both AUCs equal with no variance (e.g. both 1.0): no evidence of a difference
    return out


def mcnemar_test(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """McNemar's test on paired right/wrong outcomes (statsmodels)."""
    from statsmodels.stats.contingency_tables import mcnemar

    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    both, a_only = int((correct_a & correct_b).sum()), int((correct_a & ~correct_b).sum())
    b_only, neither = int((~correct_a & correct_b).sum()), int((~correct_a & ~correct_b).sum())
    exact = a_only + b_only < EXACT_BELOW
    result = mcnemar([[both, a_only], [b_only, neither]], exact=exact, correction=True)
    return {
        "n": int(len(correct_a)),
        "rate_a": float(correct_a.mean()) if len(correct_a) else None,
        "rate_b": float(correct_b.mean()) if len(correct_b) else None,
        "difference": float(correct_a.mean() - correct_b.mean()) if len(correct_a) else None,
        "table": {"both_right": both, "only_a_right": a_only, "only_b_right": b_only, "both_wrong": neither},
        "method": "exact binomial" if exact else "chi-square with continuity correction",
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
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


def compare_evaluations(
    folder_a: str | Path, folder_b: str | Path, *, shared_only: bool = False, bootstrap: int = 1000, seed: int = 42
) -> dict:
    """The compare.json dict of two evaluation folders."""
    return compare_sides(*align(read_side(folder_a), read_side(folder_b), shared_only), bootstrap, seed)


def compare_sides(a: Side, b: Side, notes: list[str], bootstrap: int = 1000, seed: int = 42) -> dict:
    """The compare.json dict of two aligned sides (`align`)."""
    y_pos = a.truth == a.positive_class
    return {
        "a": {"folder": str(a.folder), "threshold": a.threshold, "reader": a.reader},
        "b": {"folder": str(b.folder), "threshold": b.threshold, "reader": b.reader},
        "class_names": a.class_names,
        "positive_class": a.positive_class,
        "negative_class": negative_class(a),
        "n_persons": int(len(y_pos)),
        "counts": {"positive": int(y_pos.sum()), "negative": int((~y_pos).sum())},
        "difference": "A - B",
        "auc": delong(y_pos, a.score, b.score),
        "sensitivity": mcnemar_test(a.call[y_pos], b.call[y_pos]),
        "specificity": mcnemar_test(~a.call[~y_pos], ~b.call[~y_pos]),
        "bootstrap_ci": paired_bootstrap(y_pos, a, b, bootstrap, seed),
        "notes": notes,
    }


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def interval(ci) -> str:
    """A signed difference's CI, '[-0.123, +0.045]'."""
    return "n/a" if not ci else f"[{ci['low']:+.3f}, {ci['high']:+.3f}]"


def p(value) -> str:
    return "n/a" if value is None else (f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}")


def format_comparison(result: dict) -> str:
    auc, ci = result["auc"], result["bootstrap_ci"]
    lines = [
        f"A: {result['a']['folder']}",
        f"B: {result['b']['folder']}",
        f"{result['n_persons']} persons ({result['counts']['positive']} {result['positive_class']}, "
        f"{result['counts']['negative']} {result.get('negative_class', 'other')}); differences are A − B",
        f"{'':<13}{'A':>7}{'B':>7}{'A − B':>9}  {'95% CI':<18}  {'bootstrap 95% CI':<18}  p",
        f"{'AUC':<13}{number(auc['auc_a']):>7}{number(auc['auc_b']):>7}{auc['difference']:>+9.3f}  "
        f"{interval(auc['ci']):<18}  {interval(ci['auc']):<18}  {p(auc['p_value'])} (DeLong)",
    ]
    for key in ("sensitivity", "specificity"):
        test = result[key]
        diff = "n/a" if test["difference"] is None else f"{test['difference']:+.3f}"
        lines.append(
            f"{key:<13}{number(test['rate_a']):>7}{number(test['rate_b']):>7}{diff:>9}  {'':<18}  "
            f"{interval(ci[key]):<18}  {p(test['p_value'])} (McNemar, {test['method']}; "
            f"{test['table']['only_a_right']} only A right, {test['table']['only_b_right']} only B right)"
        )
    notes = result["notes"] + ([auc["note"]] if auc.get("note") else [])
    return "\n".join(lines + [f"note: {n}" for n in notes])
