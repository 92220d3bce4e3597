"""The files `carotid.compare` writes beside compare.json: roc_overlay.png (both sides' person-level ROC
curves on the same persons, each with the 95% band of the person bootstrap) and compare.html (one
self-contained page: what was compared, the overlaid ROC, the paired tests, the notes)."""

from __future__ import annotations

import time
from html import escape
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_text
from carotid.evaluation.bootstrap import roc_band
from carotid.evaluation.compare import Side, interval, number, p
from carotid.report.page import document, image, table
from carotid.report.plots import new_figure, save_figure

BAND_RESAMPLES = 1000  # person resamples behind each ROC band (at most --bootstrap)


def side_name(letter: str, side: Side) -> str:
    """'A: RUN/eval_test_best' (or the reader's name for a reader study)."""
    reader = (side.reader or {}).get("column") or (side.reader or {}).get("name")
    where = f"{side.folder.parent.name}/{side.folder.name}"
    return f"{letter}: {where}" + (f" (reader {reader})" if reader else "")


def plot_roc_overlay(a: Side, b: Side, path: Path, *, n_resamples: int, seed: int) -> None:
    """Both sides' person ROC curves on one axes (the same persons), each with its bootstrap band."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y_pos = a.truth == a.positive_class
    strata = y_pos.astype(int)
    fig, axes = new_figure(1, 1, figsize=(6, 6), squeeze=False)
    ax = axes[0][0]
    for (letter, side), colour in zip((("A", a), ("B", b)), ("tab:blue", "tab:orange")):
        band = roc_band(np.arange(len(y_pos)), y_pos, side.score, strata, n_resamples=n_resamples, seed=seed)
        if band:
            ax.fill_between(band["fpr"], band["low"], band["high"], color=colour, alpha=0.15)
        fpr, tpr, _ = roc_curve(y_pos, side.score)
        ax.plot(fpr, tpr, color=colour, label=f"{side_name(letter, side)} (AUC {roc_auc_score(y_pos, side.score):.3f})")
        if side.threshold is not None:  # the side's own operating point
            sensitivity, specificity = side.call[y_pos].mean(), (~side.call[~y_pos]).mean()
            ax.plot(1 - specificity, sensitivity, "o", color=colour, markeredgecolor="black")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    negative = next(c for c in a.class_names if c != a.positive_class)
    ax.set(
        title=f"ROC per person, the same {len(y_pos)} persons: {int(y_pos.sum())} {a.positive_class}, "
        f"{int((~y_pos).sum())} {negative}\nshaded: 95% band ({n_resamples} person resamples); dot: threshold",
        xlabel="1 - specificity (false-positive rate)",
        ylabel=f"sensitivity (true-positive rate, {a.positive_class} positive)",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    ax.title.set_fontsize(9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=8, frameon=False)
    save_figure(fig, path)


def build_compare_page(result: dict, a: Side, b: Side, out: Path) -> str:
    auc, boot = result["auc"], result["bootstrap_ci"]
    names = [side_name("A", a), side_name("B", b)]
    title = "carotid — comparison of two evaluations"
    rows = [
        [
            "AUC",
            number(auc["auc_a"]),
            number(auc["auc_b"]),
            f"{auc['difference']:+.3f}",
            interval(auc["ci"]),
            interval(boot["auc"]),
            f"{p(auc['p_value'])} (DeLong)",
        ]
    ]
    for key in ("sensitivity", "specificity"):
        test = result[key]
        rows.append(
            [
                key,
                number(test["rate_a"]),
                number(test["rate_b"]),
                "n/a" if test["difference"] is None else f"{test['difference']:+.3f}",
                "n/a (McNemar test)",
                interval(boot[key]),
                f"{p(test['p_value'])} (McNemar, {test['method']}; {test['table']['only_a_right']} only A right, "
                f"{test['table']['only_b_right']} only B right)",
            ]
        )
    sides = [
        [letter, name, str(side.folder), "n/a (scores only)" if side.threshold is None else f"{side.threshold:.3f}"]
        for letter, name, side in (("A", names[0], a), ("B", names[1], b))
    ]
    counts = result["counts"]
    head = (
        f"{result['n_persons']} persons, the same for both: {counts['positive']} {result['positive_class']} "
        f"(positive), {counts['negative']} {result['negative_class']}; every difference is A − B, per person."
    )
    method = boot["method"]
    notes = result["notes"] + ([auc["note"]] if auc.get("note") else [])
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(' · '.join(names))}</p>",
        '<h2 id="sides">What is compared</h2>' + table(["", "name", "evaluation folder", "threshold"], sides),
        f"<p>{escape(head)}</p>",
        '<h2 id="roc">ROC per person</h2>' + image(out / "roc_overlay.png", "overlaid ROC curves"),
        '<h2 id="tests">Paired tests</h2>'
        + table(["metric", "A", "B", "A − B", "DeLong 95% CI", "bootstrap 95% CI", "p"], rows)
        + f"<p class='sub'>{escape(str(method['resamples']))} paired person resamples stratified by "
        f"{escape(method['stratified_by'])}, seed {method['seed']}; sensitivity and specificity at each side's own "
        "threshold.</p>",
        "".join(f'<div class="warn">{escape(n)}</div>' for n in notes),
        '<h2 id="provenance">Provenance</h2>'
        + table(
            ["what", "value"],
            [["compare.json", str(out / "compare.json")], ["written", time.strftime("%Y-%m-%d %H:%M:%S %z")]],
        ),
    ]
    return document(title, body)


def write_compare_page(result: dict, a: Side, b: Side, out: Path, *, n_resamples: int, seed: int) -> Path:
    """roc_overlay.png and compare.html in `out`; returns the page's path."""
    plot_roc_overlay(a, b, out / "roc_overlay.png", n_resamples=min(n_resamples, BAND_RESAMPLES), seed=seed)
    path = out / "compare.html"
    atomic_write_text(path, build_compare_page(result, a, b, out))
    return path
