"""The files `carotid.compare` writes beside compare.json: the overlaid person-level ROC (each with the 95%
band of the person bootstrap), precision–recall, decision and calibration curves (each model's with its 95% band)
of every model on the same persons, with subgroups the forest plot of every model's AUC per subgroup (each with a
CSV of its numbers, and under figures/ as SVG, PDF and 300-dpi PNG), the tables under tables/ (CSV, LaTeX,
Markdown), and compare.html: one self-contained page."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_text, write_table
from carotid.evaluation.bootstrap import roc_band
from carotid.evaluation.compare import Side
from carotid.evaluation.comparison import auc_cell, proportion, test_cell
from carotid.evaluation.curves import calibration_curve, decision_curve, precision_recall
from carotid.report.figures import COLOURS, write_forest_plot
from carotid.report.methods import compare_methods
from carotid.report.page import document, image, table
from carotid.report.paper import exact, print_files, save_figure_set, write_table_set
from carotid.report.plots import new_figure
from carotid.report.tables import forest_table

BAND_RESAMPLES = 1000  # person resamples behind each ROC band (at most --bootstrap)
FIGURES = ("roc_overlay", "pr_overlay", "decision_curve")


def _counts(result: dict) -> str:
    c = result["counts"]
    return f"{c['positive']} {result['positive_class']}, {c['negative']} {result['negative_class']}"


def plot_overlays(result: dict, sides: list[Side], out: Path, *, n_resamples: int, seed: int) -> None:
    """roc_overlay, pr_overlay and decision_curve (.png and .csv, and figures/) of every model."""
    from sklearn.metrics import roc_curve

    y_pos = sides[0].truth == sides[0].positive_class
    names = [m["name"] for m in result["models"]]
    figs = {name: new_figure(1, 1, figsize=(6.5, 6), squeeze=False) for name in FIGURES}
    axes = {name: fig[1][0][0] for name, fig in figs.items()}
    rows = {name: [] for name in FIGURES}
    for name, side, colour, row in zip(names, sides, COLOURS * 4, result["models"]):
        band = roc_band(np.arange(len(y_pos)), y_pos, side.score, y_pos.astype(int), n_resamples=n_resamples, seed=seed)
        if band:
            axes["roc_overlay"].fill_between(band["fpr"], band["low"], band["high"], color=colour, alpha=0.12)
        fpr, tpr, cut = roc_curve(y_pos, side.score)
        axes["roc_overlay"].plot(fpr, tpr, color=colour, label=f"{name} (AUC {row['auc']:.3f})")
        if side.threshold is not None:
            axes["roc_overlay"].plot(1 - row["specificity"], row["sensitivity"], "o", color=colour, mec="black")
        rows["roc_overlay"] += [[name, f, t, c] for f, t, c in zip(fpr, tpr, cut)]
        pr = precision_recall(y_pos, side.score)
        axes["pr_overlay"].step(pr["recall"], pr["precision"], where="post", color=colour)
        axes["pr_overlay"].lines[-1].set_label(f"{name} (AP {pr['average_precision']:.3f})")
        rows["pr_overlay"] += [[name, r, p, t] for r, p, t in zip(pr["recall"], pr["precision"], pr["thresholds"])]
        curve = decision_curve(y_pos, side.score)
        axes["decision_curve"].plot(curve["threshold"], curve["model"], color=colour, label=name)
        rows["decision_curve"] += [[name, t, b] for t, b in zip(curve["threshold"], curve["model"])]
    curve = decision_curve(y_pos, sides[0].score)
    axes["decision_curve"].plot(curve["threshold"], curve["treat_all"], color="black", linestyle=":", label="treat all")
    axes["decision_curve"].axhline(0, color="grey", linestyle="--", linewidth=1, label="treat none")
    rows["decision_curve"] += [["treat all", t, b] for t, b in zip(curve["threshold"], curve["treat_all"])]
    prevalence = float(y_pos.mean())
    axes["roc_overlay"].plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes["pr_overlay"].axhline(
        prevalence, color="grey", linestyle="--", linewidth=1, label=f"prevalence {prevalence:.3f}"
    )
    who = f"the same {result['n_persons']} persons ({_counts(result)})"
    titles = {
        "roc_overlay": (
            f"ROC per person, {who}\nshaded: 95% band ({n_resamples} person resamples); dot: threshold",
            "1 - specificity",
            f"sensitivity ({result['positive_class']} positive)",
        ),
        "pr_overlay": (f"Precision–recall per person, {who}", "recall (sensitivity)", "precision (PPV)"),
        "decision_curve": (f"Decision curve per person, {who}", "threshold probability", "net benefit"),
    }
    for name, (title, xlabel, ylabel) in titles.items():
        ax = axes[name]
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1))
        ax.set_ylim((-0.05, max(prevalence, 0.05) * 1.1) if name == "decision_curve" else (0, 1.02))
        ax.title.set_fontsize(9)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
        save_figure_set(figs[name][0], out / f"{name}.png")
    header = {
        "roc_overlay": ["model", "false_positive_rate", "true_positive_rate", "threshold"],
        "pr_overlay": ["model", "recall", "precision", "threshold"],
        "decision_curve": ["model", "threshold_probability", "net_benefit"],
    }
    for name in FIGURES:
        write_table(out / f"{name}.csv", header[name], [[exact(v) for v in r] for r in rows[name]])


def plot_calibration_overlay(result: dict, sides: list[Side], out: Path, *, n_resamples: int, seed: int) -> bool:
    """calibration_curve (.png, .csv, figures/): each model's observed share per bin of its P(positive) with the
    95% band of the person bootstrap (figures.write_person_curves' curve, one per model); readers give calls, not
    probabilities, and are left out. False when no model has probabilities."""
    y_pos = sides[0].truth == sides[0].positive_class
    curves = [
        (row["name"], colour, calibration_curve(y_pos, side.score, n_resamples=n_resamples, seed=seed))
        for row, side, colour in zip(result["models"], sides, COLOURS * 4)
        if side.reader is None
    ]
    if not curves:
        return False
    fig, ax = new_figure(figsize=(6.5, 6))
    rows = []
    for name, colour, cal in curves:
        banded = [i for i, low in enumerate(cal["low"]) if low is not None]
        if banded:
            x = [cal["mean_predicted"][i] for i in banded]
            low, high = [cal["low"][i] for i in banded], [cal["high"][i] for i in banded]
            ax.fill_between(x, low, high, color=colour, alpha=0.12)
        ax.plot(cal["mean_predicted"], cal["observed"], "o-", color=colour, label=name)
        rows += [[name, *values] for values in zip(*cal.values())]
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    who = f"the same {result['n_persons']} persons ({_counts(result)})"
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=f"predicted P({result['positive_class']})")
    ax.set(ylabel=f"observed share {result['positive_class']}")
    ax.set_title(f"Calibration per person, {who}\nshaded: 95% band ({n_resamples} person resamples)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    save_figure_set(fig, out / "calibration_curve.png")
    header = ["model", "bin_low", "bin_high", "n", "mean_predicted", "observed", "low", "high"]
    write_table(out / "calibration_curve.csv", header, [[exact(v) for v in r] for r in rows])
    return True


def model_table(result: dict) -> tuple[list[str], list[list]]:
    header = ["model", "AUC [95% CI]", "sensitivity", "specificity", "PPV", "NPV", "Brier", "calibration slope"]
    rows = [
        [m["name"], auc_cell(m), *(proportion(m, k) for k in ("sensitivity", "specificity", "ppv", "npv"))]
        + [_three(m["brier"]), _three(m["calibration_slope"])]
        for m in result["models"]
    ]
    return header, rows


def description_table(result: dict) -> tuple[list[str], list[list]]:
    header = ["model", "backbone", "person model", "image size", "initial weights", "epochs", "best epoch", "threshold"]
    rows = []
    for m in result["models"]:
        d = m["description"]
        rows.append(
            [m["name"], d["backbone"], d["person_model"], d["image_size"], d["weights"], d["epochs"], d["best_epoch"]]
            + [_three(d["threshold"])]
        )
    return header, [["n/a" if c is None else c for c in r] for r in rows]


def pair_table(result: dict) -> tuple[list[str], list[list]]:
    header = ["A vs B", "AUC A − B [DeLong 95% CI]", "DeLong", "sensitivity McNemar", "specificity McNemar"]
    rows = []
    for pair in result["pairs"]:
        auc = pair["auc"]
        ci = auc["ci"]
        diff = f"{auc['difference']:+.3f}" + (f" [{ci['low']:+.3f}, {ci['high']:+.3f}]" if ci else "")
        rows.append(
            [f"{pair['a']} vs {pair['b']}", diff, test_cell(auc)]
            + [test_cell(pair["sensitivity"]), test_cell(pair["specificity"])]
        )
    return header, rows


def subgroup_table(result: dict) -> tuple[list[str], list[list]]:
    return forest_table(result["subgroups"]["by_model"])


def _three(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def section_subgroups(result: dict, out: Path) -> str:
    """The forest plot of every model's AUC per subgroup and its table; empty without subgroups."""
    subgroups = result.get("subgroups")
    if not subgroups:
        return ""
    label = "AUC per subgroup (95% CI)"
    return (
        '<h2 id="subgroups">Subgroups</h2>'
        + f"<p>By {escape(', '.join(subgroups['columns']))} of {escape(subgroups['label_excel'])}: each model's "
        f"person AUC with its 95% CI ({escape(result['method']['auc_ci'])}, within each subgroup). A subgroup "
        f"with fewer than {subgroups['min_persons']} persons or of one class is small: its interval is too wide "
        "to read as a difference.</p>"
        + (image(out / "forest_plot.png", label) if (out / "forest_plot.png").is_file() else "")
        + f"<p class='sub'>numbers: forest_plot.csv{print_files(out, 'forest_plot')}</p>"
        + table(*subgroup_table(result))
        + f"<p class='sub'>Tables: tables/compare_subgroups.csv, .tex, .md. {escape('; '.join(subgroups['read']))}.</p>"
        + "".join(f'<div class="warn">{escape(n)}</div>' for n in subgroups["notes"])
    )


def build_compare_page(result: dict, out: Path) -> str:
    title = f"carotid — comparison of {len(result['models'])} models"
    method = result["method"]
    notes = result["notes"] + [
        f"{pair['a']} vs {pair['b']}: {pair['auc']['note']}" for pair in result["pairs"] if pair["auc"].get("note")
    ]
    notes += [f"{m['name']}: {n}" for m in result["models"] for n in m["notes"]]
    figures = "".join(
        f'<h3>{label}</h3>{image(out / f"{name}.png", label)}<p class="sub">numbers: {name}.csv'
        f"{print_files(out, name)}</p>"
        for name, label in (
            ("roc_overlay", "ROC per person"),
            ("pr_overlay", "Precision–recall per person"),
            ("decision_curve", "Decision curve (net benefit) per person"),
            ("calibration_curve", "Calibration curve per person (95% band)"),
        )
        if (out / f"{name}.png").is_file()
    )
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(' · '.join(m['name'] for m in result['models']))}</p>",
        f"<p>{escape(str(result['n_persons']))} persons, the same for every model: {escape(_counts(result))} "
        f"(positive: {escape(result['positive_class'])}).</p>",
        '<h2 id="models">What is compared</h2>' + table(*description_table(result)),
        '<h2 id="metrics">Each model at its own threshold</h2>'
        + table(*model_table(result))
        + f"<p class='sub'>AUC: {escape(method['auc_ci'])}. Sensitivity, specificity, PPV and NPV: "
        f"{escape(method['proportion_ci'])} (count in brackets). Tables: tables/compare_models.csv, .tex, .md.</p>",
        '<h2 id="tests">Pairwise tests</h2>'
        + table(*pair_table(result))
        + f"<p class='sub'>{escape(method['auc_test'])}; {escape(method['rate_test'])}; p-values adjusted by "
        f"{escape(method['adjustment'])}. A test whose standard error is 0 is not estimable.</p>",
        '<h2 id="curves">Curves</h2>' + figures,
        section_subgroups(result, out),
        "".join(f'<div class="warn">{escape(n)}</div>' for n in notes),
        '<h2 id="provenance">Provenance</h2>'
        + table(
            ["what", "value"],
            [["compare.json", str(out / "compare.json")], ["written", time.strftime("%Y-%m-%d %H:%M:%S %z")]]
            + [[m["name"], m["description"]["folder"]] for m in result["models"]],
        ),
    ]
    return document(title, body)


def write_compare_page(result: dict, sides: list[Side], out: Path, *, n_resamples: int, seed: int) -> Path:
    """The figures, tables and compare.html in `out`; returns the page's path."""
    plot_overlays(result, sides, out, n_resamples=min(n_resamples, BAND_RESAMPLES), seed=seed)
    plot_calibration_overlay(result, sides, out, n_resamples=min(n_resamples, BAND_RESAMPLES), seed=seed)
    for stem, (header, rows), caption in (
        ("compare_models", model_table(result), "Each model at its own threshold (95% CIs)"),
        ("compare_description", description_table(result), "The models compared"),
        ("compare_tests", pair_table(result), "Pairwise tests, Holm-adjusted p-values"),
    ):
        write_table_set(out, stem, header, rows, caption)
    if result.get("subgroups"):
        who = f"the same {result['n_persons']} persons ({_counts(result)})"
        write_forest_plot(result["subgroups"]["by_model"], out, who=who)
        header, rows = subgroup_table(result)
        write_table_set(out, "compare_subgroups", header, rows, "Each model's person AUC by subgroup (95% CIs)")
    atomic_write_text(out / "methods.md", compare_methods(result))
    path = out / "compare.html"
    atomic_write_text(path, build_compare_page(result, out))
    return path
