"""The main tables of a result under tables/ as CSV, LaTeX (booktabs) and Markdown, written by the one writer
compare uses (`paper.write_table_set`): an evaluation's metrics (per image and per person, each with its 95% CI
and the method that made it) and its subgroups, a cross-validation's folds (each fold and the pooled out-of-fold
persons). Every number is metrics.json's or cv_metrics.json's: the CSV holds it with every digit, LaTeX and
Markdown with three decimals."""

from __future__ import annotations

from pathlib import Path

from carotid.evaluation.comparison import auc_cell
from carotid.evaluation.registry import BOOTSTRAP_METRICS, table_metrics
from carotid.report.paper import write_table_set

METRICS_HEADER = ["metric", "level", "value", "95% CI low", "95% CI high", "CI method"]


def metrics_rows(metrics: dict) -> list[list]:
    """One row per metric and level (a person model has no image level), in registry order."""
    binary = metrics.get("threshold") is not None
    ci = metrics.get("ci") or {}
    by_metric = (ci.get("method") or {}).get("by_metric") or {}
    rows = []
    for level in ("person", "image"):
        if metrics.get(level) is None:
            continue
        for key in table_metrics(binary):
            interval = (ci.get(level) or {}).get(key) or {}
            method = (by_metric.get(level) or {}).get(key) or ("person bootstrap" if interval else None)
            rows.append([key, level, metrics[level].get(key), interval.get("low"), interval.get("high"), method])
    return rows


def subgroup_rows(subgroups: dict) -> tuple[list[str], list[list]]:
    """Per subgroup value: its persons and each bootstrap metric per person with its CI."""
    parts = ("", " low", " high")
    header = ["column", "value", "persons"] + [f"{k}{part}" for k in BOOTSTRAP_METRICS for part in parts]
    rows = []
    for column, values in subgroups.items():
        for row in values:
            cells = [column, row["value"], row["n_persons"]]
            for key in BOOTSTRAP_METRICS:
                interval = ((row.get("ci") or {}).get("person") or {}).get(key) or {}
                cells += [row["person"].get(key), interval.get("low"), interval.get("high")]
            rows.append(cells)
    return header, rows


def write_evaluation_tables(folder: Path, metrics: dict) -> list[Path]:
    """tables/metrics.* and, with subgroups, tables/subgroups.* in an evaluation folder."""
    where = f"{metrics['split']} split, {metrics['n_persons']} persons"
    written = write_table_set(folder, "metrics", METRICS_HEADER, metrics_rows(metrics), f"Metrics ({where})")
    if metrics.get("subgroups"):
        header, rows = subgroup_rows(metrics["subgroups"])
        written += write_table_set(folder, "subgroups", header, rows, f"Per-person metrics by subgroup ({where})")
    return written


def forest_table(results: dict[str, dict]) -> tuple[list[str], list[list]]:
    """The forest plot's table: one row per subgroup value, its persons per class, whether it is small, and each
    result's person AUC [95% CI] ({model name: its subgroups}; one unnamed result for an evaluation or a CV)."""
    names = list(results)
    header = [
        "column",
        "value",
        "persons",
        "small",
        *(f"{name}: AUC [95% CI]" if name else "AUC [95% CI]" for name in names),
    ]
    rows = []
    for column, values in results[names[0]].items():
        for i, row in enumerate(values):
            counts = row["counts"]["persons"]
            cells = [column, row["value"], f"{row['n_persons']} ({', '.join(f'{n} {c}' for c, n in counts.items())})"]
            cells.append("yes" if row["small"] else "no")
            for name in names:
                mine = results[name][column][i]
                cells.append(auc_cell({"auc": mine["person"]["auc"], "auc_ci": mine["ci"]["person"]["auc"]}))
            rows.append(cells)
    return header, rows


def cv_fold_rows(metrics: dict) -> tuple[list[str], list[list]]:
    """One row per fold (its held-out persons, best epoch, threshold and person metrics) and the pooled
    out-of-fold persons."""
    keys = table_metrics(metrics.get("positive_class") is not None)
    header = ["fold", "persons", "frames", "best epoch", "threshold", *(f"person {k}" for k in keys)]
    rows = [
        [f["fold"], f["n_persons"], f["n_images"], f["model_epoch"], f["threshold"]]
        + [f["person"].get(k) for k in keys]
        for f in metrics["per_fold"]
    ]
    oof = metrics["out_of_fold"]
    rows.append(
        ["out of fold", metrics["n_persons"], metrics["n_images"], None, None, *(oof["person"].get(k) for k in keys)]
    )
    return header, rows


def write_cv_tables(folder: Path, metrics: dict) -> list[Path]:
    """tables/cv_folds.* and, with subgroups, tables/subgroups.* (the out-of-fold AUC per value)."""
    header, rows = cv_fold_rows(metrics)
    caption = f"{metrics['folds']}-fold cross-validation: each fold's held-out persons and all out of fold"
    written = write_table_set(folder, "cv_folds", header, rows, caption)
    if metrics["out_of_fold"].get("subgroups"):
        header, rows = forest_table({"": metrics["out_of_fold"]["subgroups"]})
        caption = f"Out-of-fold person AUC by subgroup ({metrics['n_persons']} persons, 95% CIs)"
        written += write_table_set(folder, "subgroups", header, rows, caption)
    return written
