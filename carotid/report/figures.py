"""A paper's person-level figures of one result (an evaluation, or the pooled out-of-fold persons of a CV):
precision–recall with average precision, the decision curve (net benefit against treat-all and treat-none),
the calibration curve with its person-bootstrap band, and the subgroup forest plot. Each is written as
<name>.png for the page, <name>.csv with its numbers beside it, and under figures/ (`paper.save_figure_set`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carotid.core.files import write_table
from carotid.evaluation.curves import calibration_curve, decision_curve, precision_recall
from carotid.report.page import image
from carotid.report.paper import exact, print_files, save_figure_set
from carotid.report.plots import new_figure

COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:grey")
PERSON_FIGURES = {  # file stem → heading on the page
    "pr_curve": "Precision–recall per person",
    "decision_curve": "Decision curve (net benefit) per person",
    "calibration_curve": "Calibration curve per person",
    "forest_plot": "AUC per subgroup",
}


def _write_csv(path: Path, header: list[str], rows) -> None:
    write_table(path, header, [[exact(v) for v in row] for row in rows])


def _finish(fig, ax, title: str, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.title.set_fontsize(9)
    ax.legend(loc="best", fontsize=8, frameon=False)
    save_figure_set(fig, path)


def write_person_curves(
    y_pos: np.ndarray, score: np.ndarray, out: Path, *, who: str, positive: str, n_resamples: int, seed: int
) -> list[str]:
    """pr_curve, decision_curve and calibration_curve (.png, .csv, figures/) in `out`; returns their stems.
    `who` names the persons in each title ("test split: 6 plaque, 6 normal")."""
    y_pos = np.asarray(y_pos, dtype=bool)
    if y_pos.all() or not y_pos.any():
        return []
    pr = precision_recall(y_pos, score)
    fig, ax = new_figure(figsize=(5.5, 5))
    ax.step(pr["recall"], pr["precision"], where="post", label=f"model (AP {pr['average_precision']:.3f})")
    ax.axhline(pr["prevalence"], color="grey", linestyle="--", linewidth=1, label=f"prevalence {pr['prevalence']:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    _finish(
        fig,
        ax,
        f"Precision–recall per person, {who}",
        "recall (sensitivity)",
        f"precision (PPV, {positive})",
        out / "pr_curve.png",
    )
    _write_csv(
        out / "pr_curve.csv", ["recall", "precision", "threshold"], zip(pr["recall"], pr["precision"], pr["thresholds"])
    )

    curve = decision_curve(y_pos, score)
    fig, ax = new_figure(figsize=(5.5, 5))
    ax.plot(curve["threshold"], curve["model"], label="model")
    ax.plot(curve["threshold"], curve["treat_all"], color="black", linestyle=":", label="treat all")
    ax.axhline(0, color="grey", linestyle="--", linewidth=1, label="treat none")
    ax.set(xlim=(0, 1), ylim=(-0.05, max(pr["prevalence"], 0.05) * 1.1))
    _finish(
        fig, ax, f"Decision curve per person, {who}", "threshold probability", "net benefit", out / "decision_curve.png"
    )
    _write_csv(
        out / "decision_curve.csv",
        ["threshold_probability", "net_benefit_model", "net_benefit_treat_all", "net_benefit_treat_none"],
        zip(curve["threshold"], curve["model"], curve["treat_all"], curve["treat_none"]),
    )

    cal = calibration_curve(y_pos, score, n_resamples=n_resamples, seed=seed)
    fig, ax = new_figure(figsize=(5.5, 5))
    banded = [i for i, low in enumerate(cal["low"]) if low is not None]
    if banded:
        ax.fill_between(
            [cal["mean_predicted"][i] for i in banded],
            [cal["low"][i] for i in banded],
            [cal["high"][i] for i in banded],
            alpha=0.2,
            label=f"95% band ({n_resamples} person resamples)",
        )
    ax.plot(cal["mean_predicted"], cal["observed"], "o-", label="observed share per bin")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    _finish(
        fig,
        ax,
        f"Calibration per person, {who}",
        f"predicted P({positive})",
        f"observed share {positive}",
        out / "calibration_curve.png",
    )
    _write_csv(out / "calibration_curve.csv", list(cal), zip(*cal.values()))
    return ["pr_curve", "decision_curve", "calibration_curve"]


def forest_rows(subgroups: dict | None, model: str = "") -> list[list]:
    """[model, column, value, persons, small, AUC, CI low, CI high] per subgroup value of one result's subgroups
    (small: fewer persons than the result's minimum, or one class)."""
    rows = []
    for column, values in (subgroups or {}).items():
        for row in values:
            auc = (row.get("person") or {}).get("auc")
            ci = ((row.get("ci") or {}).get("person") or {}).get("auc") or {}
            cells = [column, row.get("value"), row.get("n_persons"), bool(row.get("small"))]
            rows.append([model, *cells, auc, ci.get("low"), ci.get("high")])
    return rows


def write_forest_plot(results: dict[str, dict | None], out: Path, *, who: str) -> list[str]:
    """forest_plot (.png, .csv, figures/): person AUC with its CI per subgroup value, one marker per result of
    `results` ({model name: its subgroups}; one unnamed result for an evaluation); [] without subgroups."""
    rows = [row for name, subgroups in results.items() for row in forest_rows(subgroups, name)]
    if not rows:
        return []
    groups = list(dict.fromkeys((column, value, n, small) for _, column, value, n, small, *_ in rows))
    models = list(results)
    step = 0.7 / len(models)  # the models' markers side by side within their subgroup's row
    fig, ax = new_figure(figsize=(6, 1.2 + 0.25 * len(groups) * (1 + len(models))))
    for k, name in enumerate(models):
        shift, colour = (k - (len(models) - 1) / 2) * step, COLOURS[k % len(COLOURS)]
        mine = [(groups.index(tuple(group)), auc, low, high) for m, *group, auc, low, high in rows if m == name]
        for y, auc, low, high in mine:
            if low is not None:
                ax.plot([low, high], [y + shift] * 2, color=colour)
            if auc is not None:
                ax.plot([auc], [y + shift], "s", color=colour)
        if name:  # a comparison's legend names each model, in the colours of its other figures
            ax.plot([], [], "s-", color=colour, label=name)
    ax.set_yticks(range(len(groups)), [f"{c} = {v} ({n} persons{', small' if s else ''})" for c, v, n, s in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set(xlim=(0, 1.02))
    _finish(fig, ax, f"AUC per subgroup (95% CI), {who}", "person AUC", "", out / "forest_plot.png")
    header = ["column", "value", "n_persons", "small", "auc", "auc_low", "auc_high"]
    named = any(models)  # a comparison's CSV names the model of each row
    _write_csv(out / "forest_plot.csv", ["model", *header] if named else header, [r if named else r[1:] for r in rows])
    return ["forest_plot"]


def person_figures(folder: Path, report: dict, persons_labels: np.ndarray, persons_probs: np.ndarray, who: str) -> None:
    """The paper's person-level figures of a result whose record is `report` (metrics.json or the CV's
    out-of-fold section, with `ci.method`, `positive_class`, `subgroups`); binary tasks only."""
    positive = report.get("positive_class")
    class_names = report.get("class_names") or []
    if positive is None or positive not in class_names or len(class_names) != 2:
        return
    index = class_names.index(positive)
    method = (report.get("ci") or {}).get("method") or {}
    write_person_curves(
        np.asarray(persons_labels) == index,
        np.asarray(persons_probs)[:, index],
        folder,
        who=who,
        positive=positive,
        n_resamples=min(int(method.get("resamples") or 200), 1000),
        seed=int(method.get("seed") or 0),
    )
    write_forest_plot({"": report.get("subgroups")}, folder, who=who)


def figures_section(folder: Path, skip: tuple[str, ...] = ()) -> str:
    """The page section showing whichever of PERSON_FIGURES were written, each with its files named."""
    parts = []
    for stem, heading in PERSON_FIGURES.items():
        if stem in skip or not (folder / f"{stem}.png").is_file():
            continue
        parts.append(
            f"<h3>{heading}</h3>{image(folder / f'{stem}.png', heading)}<p class='sub'>numbers: {stem}.csv"
            f"{print_files(folder, stem)}</p>"
        )
    if not parts:
        return ""
    return '<h2 id="paper-figures">Precision–recall, decision and calibration curves, subgroups</h2>' + "".join(parts)
