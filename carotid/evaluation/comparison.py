"""The comparison of two or more evaluations of the same persons (compare.json): one row per model (AUC with
its person-bootstrap CI; sensitivity, specificity, PPV, NPV and accuracy at the model's own threshold with
Clopper–Pearson intervals; Brier score; calibration slope) and every pair's DeLong and McNemar tests
(`carotid.evaluation.compare`) with Holm-adjusted p-values (statsmodels' multipletests), one family per
test: the AUC tests, the sensitivity tests, the specificity tests.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from carotid.core.errors import UserError
from carotid.core.run_dir import read_run_config
from carotid.evaluation.bootstrap import _RankAUC, resample_counts
from carotid.evaluation.calibration import logistic_recalibration, too_few_persons
from carotid.evaluation.compare import (
    Side,
    delong,
    interval,
    mcnemar_test,
    negative_class,
    p,
    paired_bootstrap,
)
from carotid.evaluation.intervals import METHOD_NAMES, PROPORTIONS, counts_at_threshold, proportion_intervals

FAMILIES = ("auc", "sensitivity", "specificity")  # each a family of pairwise tests for Holm's adjustment
SHA_PREFIX = 12  # hex digits of a weights file's SHA-256 shown beside its name


def description(side: Side) -> dict:
    """What the evaluated model is: backbone, person model, image size, initial weights (and their SHA-256
    prefix), epochs and best epoch, from metrics.json and the run's config.yaml (None where unknown)."""
    metrics = side.metrics
    options, extra = _run_config(metrics.get("run_dir"))
    weights = options.get("pretrained_weights") or ("library default" if options.get("pretrained") else None)
    sha = (extra.get("initial_weights") or {}).get("sha256")
    if weights and sha:
        weights = f"{Path(str(weights)).name} (SHA-256 {sha[:SHA_PREFIX]}…)"
    elif options and not weights:
        weights = "random initialisation"
    reader = side.reader or {}
    return {
        "folder": str(side.folder),
        "backbone": "reader" if side.reader else metrics.get("arch"),
        "person_model": None if side.reader else metrics.get("person_model"),
        "image_size": options.get("image_size"),
        "weights": weights,
        "epochs": options.get("epochs"),
        "best_epoch": metrics.get("model_epoch"),
        "reader": reader.get("column") or reader.get("name"),
        "threshold": side.threshold,
    }


def _run_config(run_dir: str | None) -> tuple[dict, dict]:
    """(options, the rest) of a run's config.yaml; empty when the evaluation has no readable run folder."""
    if not run_dir:
        return {}, {}
    try:
        config = read_run_config(run_dir)
    except UserError:
        return {}, {}
    return config["options"], {k: v for k, v in config.items() if k != "options"}


def default_names(sides: list[Side]) -> list[str]:
    """'resnet18 · attention' per model ('reader <column>' for a reader); names that repeat get their run
    folder's name, then their position, added."""
    names = []
    for side in sides:
        about = description(side)
        if about["reader"]:
            names.append(f"reader {about['reader']}")
        else:
            backbone = str(about["backbone"] or "model").split("/")[-1]
            names.append(f"{backbone} · {about['person_model'] or 'frames'}")
    for suffix in (lambda i, s: f" ({s.folder.parent.name})", lambda i, s: f" #{i + 1}"):
        repeated = {n for n in names if names.count(n) > 1}
        names = [n + suffix(i, s) if n in repeated else n for i, (n, s) in enumerate(zip(names, sides))]
    return names


def model_row(side: Side, y_pos: np.ndarray, auc_ci: dict | None) -> dict:
    """One model's numbers on the aligned persons, at its own threshold."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    probs = np.c_[1.0 - side.call, side.call].astype(np.float64)  # the model's own calls, as a 0/1 probability
    counts = counts_at_threshold(y_pos.astype(int), probs, 1, 0.5)
    cis = proportion_intervals(counts, "exact")
    calibration, notes = logistic_recalibration(y_pos, side.score) if side.reader is None else ({}, [])
    return {
        "auc": float(roc_auc_score(y_pos, side.score)),
        "auc_ci": auc_ci,
        "threshold": side.threshold,
        **{key: (k / n if n else None) for key, (k, n) in counts.items()},
        "counts": {key: {"successes": k, "total": n} for key, (k, n) in counts.items()},
        "ci": cis,
        "brier": float(brier_score_loss(y_pos, np.clip(side.score, 0, 1))) if side.reader is None else None,
        "calibration_slope": calibration.get("calibration_slope"),
        "notes": notes,
    }


def compare_models(
    sides: list[Side], names: list[str], notes: list[str], *, bootstrap: int = 1000, seed: int = 42
) -> dict:
    """The compare.json dict of aligned sides (`compare.align`), named `names`."""
    y_pos = sides[0].truth == sides[0].positive_class
    counts = resample_counts(y_pos.astype(int), bootstrap, np.random.default_rng(seed))  # the same for every model
    models = []
    for name, side in zip(names, sides):
        aucs = _RankAUC(side.score, y_pos, np.arange(len(y_pos)))(counts)
        aucs = aucs[np.isfinite(aucs)]
        auc_ci = (
            {"low": float(np.quantile(aucs, 0.025)), "high": float(np.quantile(aucs, 0.975))} if len(aucs) else None
        )
        models.append({"name": name, "description": description(side)} | model_row(side, y_pos, auc_ci))
    pairs = []
    for (i, a), (j, b) in combinations(enumerate(sides), 2):
        pairs.append(
            {
                "a": names[i],
                "b": names[j],
                "auc": delong(y_pos, a.score, b.score),
                "sensitivity": mcnemar_test(a.call[y_pos], b.call[y_pos]),
                "specificity": mcnemar_test(~a.call[~y_pos], ~b.call[~y_pos]),
                "bootstrap_ci": paired_bootstrap(y_pos, a, b, bootstrap, seed),
            }
        )
    holm_adjust(pairs)
    few = too_few_persons(int(len(y_pos)))  # the evaluations' rule: one line, not one per model's failed fit
    if few:
        notes = [*notes, few]
        for model in models:
            model["notes"] = []
    return {
        "class_names": sides[0].class_names,
        "positive_class": sides[0].positive_class,
        "negative_class": negative_class(sides[0]),
        "n_persons": int(len(y_pos)),
        "counts": {"positive": int(y_pos.sum()), "negative": int((~y_pos).sum())},
        "models": models,
        "pairs": pairs,
        "difference": "a - b",
        "method": {
            "auc_ci": f"person bootstrap, percentile ({bootstrap} resamples stratified by label, seed {seed})",
            "proportion_ci": METHOD_NAMES["exact"],
            "proportions": list(PROPORTIONS),
            "auc_test": "DeLong (paired)",
            "rate_test": "McNemar (paired; exact binomial under 25 discordant persons)",
            "adjustment": "Holm, within each family of pairwise tests (AUC, sensitivity, specificity)",
            "resamples": bootstrap,
            "seed": seed,
        },
        "notes": notes,
    }


def holm_adjust(pairs: list[dict]) -> None:
    """Add `p_holm` to every pairwise test, Holm-adjusted within its family; a test without a p-value (not
    estimable) is left out of its family and keeps p_holm None."""
    from statsmodels.stats.multitest import multipletests

    for family in FAMILIES:
        tests = [pair[family] for pair in pairs]
        given = [t for t in tests if t["p_value"] is not None]
        for t in tests:
            t["p_holm"] = None
        if given:
            adjusted = multipletests([t["p_value"] for t in given], method="holm")[1]
            for t, value in zip(given, adjusted):
                t["p_holm"] = float(value)


def proportion(row: dict, key: str) -> str:
    """'0.750 [0.194, 0.994] (3/4)': a proportion with its exact interval and its count."""
    value, ci, count = row[key], row["ci"][key], row["counts"][key]
    if value is None:
        return f"n/a (0/{count['total']})"
    return f"{value:.3f} [{ci['low']:.3f}, {ci['high']:.3f}] ({count['successes']}/{count['total']})"


def auc_cell(row: dict) -> str:
    """'0.912 [0.850, 0.960]'; n/a where the AUC is undefined (persons of one class)."""
    ci = row["auc_ci"]
    if row["auc"] is None:
        return "n/a"
    return f"{row['auc']:.3f}" + (f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else "")


def test_cell(test: dict) -> str:
    """'p 0.0123, Holm 0.0369' or the reason a test has no p-value."""
    if test["p_value"] is None:
        return "not estimable" if "not estimable" in (test.get("note") or "") else "n/a"
    return f"p {p(test['p_value'])}, Holm {p(test['p_holm'])}"


def format_comparison(result: dict) -> str:
    """The console summary: one row per model, then one row per pair."""
    width = max(len(m["name"]) for m in result["models"]) + 2
    lines = [
        f"{result['n_persons']} persons ({result['counts']['positive']} {result['positive_class']}, "
        f"{result['counts']['negative']} {result['negative_class']}), the same for every model",
        f"{'model':<{width}}{'AUC [95% CI]':<22}{'sensitivity':<30}{'specificity':<30}",
    ]
    for m in result["models"]:
        lines.append(f"{m['name']:<{width}}{auc_cell(m):<22}{proportion(m, 'sensitivity'):<30}")
        lines[-1] += proportion(m, "specificity")
    for pair in result["pairs"]:
        auc = pair["auc"]
        lines.append(
            f"{pair['a']} vs {pair['b']}: AUC {auc['difference']:+.3f} {interval(auc['ci'])} "
            f"DeLong {test_cell(auc)}; sensitivity McNemar {test_cell(pair['sensitivity'])}; "
            f"specificity McNemar {test_cell(pair['specificity'])}"
        )
    notes = result["notes"] + [n for pair in result["pairs"] for n in [pair["auc"].get("note")] if n]
    return "\n".join(lines + [f"note: {n}" for n in notes])
