"""CV_DIR/report.html: a K-fold cross-validation's result on one self-contained page, built only from the
files the cross-validation left (cv_metrics.json, splits.json, oof_person_predictions.csv, the out-of-fold
figures, the folds' run directories and the test-set ensemble's evaluation), so it can be rebuilt any time.

Sections in the order a paper reports them: the out-of-fold result (person and image metrics with CIs,
the pooled ROC with its band, the folds' table with mean ± SD, calibration of the pooled probabilities),
the test-set ensemble, the data flow through the folds, the per-person out-of-fold table, the reporting
checklist filled from the cross-validation's own facts, and provenance.
"""

from __future__ import annotations

import statistics
import time
from html import escape
from pathlib import Path

import numpy as np
import yaml

from carotid.core.files import atomic_write_text
from carotid.core.run_dir import RunDir
from carotid.core.text import plural
from carotid.evaluation.inference import FramePredictions, PersonPredictions
from carotid.evaluation.intervals import describe as describe_intervals
from carotid.evaluation.records import read_cv_metrics
from carotid.evaluation.registry import table_metrics
from carotid.report.checklist import cv_checklist
from carotid.report.figures import figures_section, person_figures
from carotid.report.methods import results_sentence, write_methods
from carotid.report.outputs import roc_bands
from carotid.report.page import (
    calibration_table,
    checklist_table,
    document,
    flow_boxes,
    image,
    notes,
    number,
    persons_table,
    read_config,
    read_csv,
    read_json,
    read_model,
    table,
    with_ci,
)
from carotid.report.plots import plot_reliability, plot_roc
from carotid.report.tables import write_cv_tables


def write_cv_figures(
    cv_dir: Path,
    pooled: dict,
    frames: FramePredictions,
    persons: PersonPredictions,
    class_names: list[str],
    positive: int,
) -> None:
    """The out-of-fold ROC (with the person bootstrap's 95% band) and reliability diagram."""
    levels = {"image": (frames.labels, frames.probs), "person": (persons.labels, persons.probs)}
    if pooled.get("image", {}) is None:  # person models: no image level
        del levels["image"]
    bands = roc_bands({"threshold": pooled["threshold"], "ci": pooled["ci"]}, frames, persons, positive)
    plot_roc(levels, class_names, positive, cv_dir / "roc_curve.png", bands=bands, split="out of fold")
    calibration = pooled["calibration"]
    plot_reliability(
        {level: calibration[level]["reliability"] for level in levels},
        cv_dir / "reliability_diagram.png",
        binary=len(class_names) == 2,
    )
    record = {"class_names": class_names, "positive_class": class_names[positive], "ci": pooled["ci"]}
    record["subgroups"] = pooled.get("subgroups")  # the out-of-fold AUC per subgroup: the forest plot
    counts = np.bincount(persons.labels, minlength=len(class_names))
    who = "out of fold: " + ", ".join(f"{n} {name}" for name, n in zip(class_names, counts))
    person_figures(cv_dir, record, persons.labels, persons.probs, who=who)


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _metrics_table(result: dict, binary: bool) -> str:
    person_model = result.get("image", {}) is None  # no image level
    rows = [
        [key, with_ci(result, "person", key), "not applicable" if person_model else with_ci(result, "image", key)]
        for key in table_metrics(binary)
    ]
    return table(["metric", "per person", "per image"], rows)


def _cards(result: dict, binary: bool) -> str:
    keys = ("auc", "sensitivity", "specificity") if binary else ("auc", "accuracy", "balanced_accuracy")
    return "".join(
        f'<div class="card">{key} per person<br><b>{escape(with_ci(result, "person", key))}</b></div>' for key in keys
    )


def _ci_note(result: dict) -> str:
    return describe_intervals((result.get("ci") or {}).get("method"))


def section_out_of_fold(cv_dir: Path, metrics: dict) -> str:
    oof, binary = metrics["out_of_fold"], metrics.get("positive_class") is not None
    head = (
        f"{metrics['folds']}-fold cross-validation: {metrics['n_persons']} persons ({metrics['n_images']} frames), "
        f"each predicted once by the fold model that did not train on them; person probability = "
        f"{metrics['person_aggregation']} of its frames"
    )
    if oof.get("image", {}) is None:
        head = head.replace(f"{metrics['person_aggregation']} of its frames", "the fold's person model's own")
    if binary:
        head += f"; positive class {metrics['positive_class']}, each person called at its own fold's threshold"
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in oof.get("warnings", []))
    return (
        f'<h2 id="oof">Out-of-fold result</h2><p>{escape(head)}.</p>{_cards(oof, binary)}{warnings}'
        + _metrics_table(oof, binary)
        + notes([_ci_note(oof) + "; AUC from the pooled out-of-fold probabilities"])
        + image(cv_dir / "roc_curve.png", "out-of-fold ROC")
    )


def _mean_sd(values: list) -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return "n/a"
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.3f}{sd}"


def fold_links(cv_dir: Path, folds: list[dict]) -> str:
    """A link to each fold's own report (its run page, else its test evaluation's)."""
    links = []
    for f in folds:
        run = RunDir(cv_dir / f"fold_{f['fold']}")
        page = run.report if run.report.is_file() else run.evaluation().report
        if page.is_file():
            href = escape(page.relative_to(cv_dir).as_posix())
            links.append(f'<a href="{href}">fold {f["fold"]}</a>')
    return f"<p>Each fold's report: {' · '.join(links)}</p>" if links else ""


def fold_warnings(folds: list[dict]) -> str:
    """A warning when folds kept their first epoch or chose their epoch on a saturated validation metric:
    their model may be barely trained, or any of several epochs."""
    first = [f["fold"] for f in folds if f.get("model_epoch") == 1]
    saturated = [f["fold"] for f in folds if (f.get("best_epoch") or {}).get("saturated")]
    lines = []
    if first:
        lines.append(
            f"{plural(len(first), 'fold')} of {len(folds)} chose epoch 1 (folds {', '.join(map(str, first))}): "
            "their validation metric never improved after the first epoch; look at their curves before trusting them"
        )
    if saturated:
        lines.append(
            f"{plural(len(saturated), 'fold')} of {len(folds)} chose the best epoch on a saturated validation metric "
            f"(folds {', '.join(map(str, saturated))}): several epochs tied at the ceiling"
        )
    return "".join(f'<div class="warn">{escape(line)}</div>' for line in lines)


def section_folds(metrics: dict, cv_dir: Path | None = None) -> str:
    """One column per fold, and their mean ± SD, per person then per image."""
    folds, binary = metrics["per_fold"], metrics.get("positive_class") is not None
    header = ["", *(f"fold {f['fold']}" for f in folds), "mean ± SD"]
    rows = [
        [
            "held-out persons / frames",
            *(f"{f['n_persons']} / {f['n_images']}" for f in folds),
            f"{sum(f['n_persons'] for f in folds)} / {sum(f['n_images'] for f in folds)} in all",
        ],
        ["best epoch", *(f["model_epoch"] for f in folds), _mean_sd([f["model_epoch"] for f in folds])],
    ]
    if binary:
        rows.append(["threshold", *(number(f["threshold"]) for f in folds), _mean_sd([f["threshold"] for f in folds])])
    for level in ("person", "image"):
        if metrics["fold_mean_sd"].get(level) is None:  # person models: no image level
            continue
        for key in table_metrics(binary):
            spread = metrics["fold_mean_sd"][level][key]
            summary = "n/a" if spread["mean"] is None else f"{spread['mean']:.3f}"
            summary += f" ± {spread['sd']:.3f}" if spread["sd"] is not None else ""
            if spread["mean"] is not None and spread["n_folds"] < len(folds):
                summary += f" ({plural(spread['n_folds'], 'fold')})"
            rows.append([f"{key} per {level}", *(number(f[level].get(key)) for f in folds), summary])
    return (
        "<h2 id=\"folds\">Per fold</h2><p>Each fold's held-out persons, evaluated with that fold's best model "
        "(SD with ddof 1 over the folds where the metric is defined).</p>"
        + fold_warnings(folds)
        + table(header, rows)
        + "<p class='sub'>Tables: tables/cv_folds.csv, .tex, .md (each fold and all out of fold).</p>"
        + (fold_links(cv_dir, folds) if cv_dir else "")
    )


def section_calibration(cv_dir: Path, metrics: dict) -> str:
    calibration = metrics["out_of_fold"].get("calibration")
    if not calibration:
        return ""
    return (
        '<h2 id="calibration">Calibration of the out-of-fold probabilities</h2>'
        + image(cv_dir / "reliability_diagram.png", "out-of-fold reliability")
        + calibration_table(calibration)
    )


def _relative(path: str, folder: Path) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def section_ensemble(cv_dir: Path, metrics: dict) -> str:
    ensemble = metrics.get("test_ensemble")
    if not ensemble:
        return (
            '<h2 id="ensemble">Test set</h2><p>No test persons were set aside (--test-ratio 0 or --no-test): '
            "the out-of-fold result above is the only estimate.</p>"
        )
    binary = ensemble.get("threshold") is not None
    models = (ensemble.get("ensemble") or {}).get("models", [])
    head = (
        f"The {ensemble['n_persons']} test persons ({ensemble['n_images']} frames), kept out of every fold, "
        f"predicted by the mean probability of the {len(models) or metrics['folds']} folds' best models"
    )
    if binary:
        head += f", at threshold {ensemble['threshold']:.3f} ({ensemble['threshold_source']})"
    model_rows = [
        [m["fold"], m["epoch"], number(m["threshold"]), _relative(m["path"], cv_dir), m["sha256"]] for m in models
    ]
    return (
        f'<h2 id="ensemble">Test set: the fold ensemble</h2><p>{escape(head)}.</p>{_cards(ensemble, binary)}'
        + _metrics_table(ensemble, binary)
        + notes([_ci_note(ensemble), "the ensemble's own page: eval_test_ensemble/report.html"])
        + (table(["fold", "best epoch", "threshold", "model file", "SHA-256"], model_rows) if model_rows else "")
        + image(cv_dir / "eval_test_ensemble" / "roc_curve.png", "test-set ensemble ROC")
    )


def section_data(cv_dir: Path, metrics: dict, plan: dict) -> str:
    data_report = read_json(RunDir(cv_dir).data_report)
    classes = metrics["class_names"]
    rows = []
    ensemble = read_json(cv_dir / "eval_test_ensemble" / "metrics.json")
    if plan.get("test"):
        counts = ensemble.get("counts") or {}
        rows.append(
            ["test (no fold sees it)"]
            + [f"{counts.get('persons', {}).get(c, '?')} / {counts.get('images', {}).get(c, '?')}" for c in classes]
            + [f"{len(plan['test'])} / {ensemble.get('n_images', '?')}"]
        )
    for fold in plan.get("folds", []):
        splits = read_json(RunDir(cv_dir / f"fold_{fold['fold']}").data_report).get("splits", {})
        for split, name in (("train", "training"), ("val", "validation"), ("test", "held out")):
            counts = splits.get(split, {"persons": {}, "images": {}})
            rows.append(
                [f"fold {fold['fold']}: {name}"]
                + [f"{counts['persons'].get(c, 0)} / {counts['images'].get(c, 0)}" for c in classes]
                + [f"{sum(counts['persons'].values())} / {sum(counts['images'].values())}"]
            )
    cv_persons = sum(len(f["held_out"]) for f in plan.get("folds", []))
    extra = [f"{len(plan.get('test', []))} test persons", f"{cv_persons} persons in {metrics['folds']} folds"]
    method = [f"folds: {metrics.get('split_method')}"] if metrics.get("split_method") else []
    return (
        '<h2 id="data">Data flow</h2>'
        + flow_boxes(data_report, extra)
        + table(["partition (persons / frames)", *classes, "all"], rows)
        + notes(method + data_report.get("label_file", {}).get("notes", []) + data_report.get("split_notes", []))
    )


def section_provenance(cv_dir: Path, config: dict) -> str:
    rows = [[k, v] for k, v in config.get("versions", {}).items()]
    options = config.get("options") or {}
    rows += [
        ["cross-validation directory", str(cv_dir)],
        ["created", config.get("created", "-")],
        ["label file", options.get("label_excel") or "-"],
        ["label file SHA-256", config.get("label_file_sha256", "-")],
        ["report written", time.strftime("%Y-%m-%d %H:%M:%S %z")],
    ]
    dump = yaml.safe_dump(options, allow_unicode=True, sort_keys=False)
    return (
        '<h2 id="provenance">Provenance</h2>'
        + table(["what", "value"], rows)
        + f"<details><summary>all options (config.yaml)</summary><pre>{escape(dump)}</pre></details>"
    )


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def build_cv_report(cv_dir: Path) -> str:
    metrics = read_cv_metrics(RunDir(cv_dir).cv_metrics)
    plan = read_json(cv_dir / "splits.json")
    config = read_config(cv_dir)
    model = read_model(str(RunDir(cv_dir / "fold_1").best_model))
    fold_models = [read_model(str(RunDir(cv_dir / f"fold_{k}").best_model)) for k in range(1, 1 + len(plan["folds"]))]
    title = f"carotid — {metrics['folds']}-fold cross-validation"
    positive = f", positive class {metrics['positive_class']}" if metrics.get("positive_class") else ""
    classes = ", ".join(metrics["class_names"])
    sub = f"{model.get('arch', 'model file missing')} · {cv_dir.name} · classes {classes}{positive}"
    oof_rows = read_csv(cv_dir / "oof_person_predictions.csv")
    items = cv_checklist(
        config.get("options") or {}, read_json(RunDir(cv_dir).data_report), metrics, plan, model, fold_models
    )
    oof = metrics["out_of_fold"]
    write_methods(  # beside the page, from the same files
        cv_dir,
        f"Methods — {metrics['folds']}-fold cross-validation",
        items,
        results_sentence(oof, f"Out of fold ({metrics['n_persons']} persons, each fold's own threshold)"),
        config.get("versions"),
        [],  # the intervals: in the metrics item already
    )
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(sub)}</p>",
        section_out_of_fold(cv_dir, metrics),
        section_folds(metrics, cv_dir),
        section_calibration(cv_dir, metrics),
        figures_section(cv_dir),
        section_ensemble(cv_dir, metrics),
        section_data(cv_dir, metrics, plan),
        persons_table(oof_rows, "oof_person_predictions.csv", "Per person, out of fold"),
        checklist_table(items, "this cross-validation recorded"),
        section_provenance(cv_dir, config),
    ]
    return document(title, body)


def write_cv_report(cv_dir: Path) -> Path:
    """report.html, with methods.md and tables/cv_folds.* beside it, from the CV folder's files."""
    write_cv_tables(cv_dir, read_cv_metrics(RunDir(cv_dir).cv_metrics))
    path = cv_dir / "report.html"
    atomic_write_text(path, build_cv_report(cv_dir))
    return path
