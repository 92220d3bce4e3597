"""Figures written into run and evaluation folders (matplotlib, no display needed).

Class names are often Chinese (斑块/正常): every figure draws with a Latin font and falls back to a CJK
font for the characters it lacks (`cjk_font`). Without one, matplotlib's "Glyph … missing" warnings
are left to reach the user (they are the only sign of empty boxes in a PNG), and `fonts_note` says
what to install.
"""

from __future__ import annotations

import functools
import io
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_bytes
from carotid.report.paper import save_figure_set

# Fonts with Chinese glyphs, most common first: Debian/Ubuntu (fonts-noto-cjk, fonts-wqy-*), macOS, Windows.
CJK_FAMILIES = (
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans CJK TC",
    "Source Han Sans SC",
    "Source Han Sans CN",
    "WenQuanYi Zen Hei",
    "WenQuanYi Micro Hei",
    "Droid Sans Fallback",
    "PingFang SC",
    "Heiti SC",
    "STHeiti",
    "Microsoft YaHei",
    "SimHei",
    "Arial Unicode MS",
    "Noto Serif CJK SC",
)
CJK_FILE = re.compile(r"cjk|sourcehan|wqy|wenquanyi|droidsansfallback|pingfang|heiti|msyh|simhei|arialuni", re.I)
FONT_HINT = "install a font with Chinese glyphs (Debian/Ubuntu: apt install fonts-noto-cjk; conda: noto-cjk)"


@functools.cache
def _matplotlib():
    """matplotlib with the Agg backend (no display), imported at the first figure rather than with this module:
    the trainer imports this module, and matplotlib's ~0.5 s would otherwise come before the first training
    batch (docs/PERFORMANCE.md, "The layers and the first batch")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.font_manager
    import matplotlib.pyplot

    # Every text on a figure comes from the data (person IDs, class names, file names): '$' or '\\' in one is
    # drawn as typed, never parsed as mathtext (which fails on an odd '$' or renders 'a$b$c' in italics).
    matplotlib.rcParams["text.parse_math"] = False
    return matplotlib


def _pyplot():
    return _matplotlib().pyplot


def _integer_ticks():
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


@functools.cache
def cjk_font() -> str | None:
    """The family name of an installed font with Chinese glyphs, or None."""
    font_manager = _matplotlib().font_manager
    names = {f.name for f in font_manager.fontManager.ttflist}
    found = next((name for name in CJK_FAMILIES if name in names), None)
    if found is None:
        # matplotlib caches its font list at first use: a font installed since is only found on disk.
        for path in font_manager.findSystemFonts():
            if CJK_FILE.search(Path(path).name):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError, ValueError):
                    continue
        names = {f.name for f in font_manager.fontManager.ttflist}
        found = next((name for name in CJK_FAMILIES if name in names), None)
    return found


def use_fonts() -> None:
    """DejaVu Sans for Latin text, falling back to a CJK font glyph by glyph (matplotlib >= 3.6)."""
    family = ["DejaVu Sans"] + ([cjk_font()] if cjk_font() else [])
    _matplotlib().rcParams["font.family"] = family


def needs_cjk(texts: Iterable[str]) -> bool:
    return any(unicodedata.east_asian_width(ch) in ("W", "F") for text in texts for ch in str(text))


def fonts_note(texts: Iterable[str]) -> str | None:
    """A warning when some of `texts` need a CJK font and none is installed, else None."""
    if needs_cjk(texts) and cjk_font() is None:
        return f"no font with Chinese glyphs found: class names in the figures show as empty boxes; {FONT_HINT}"
    return None


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def save_figure(fig, path: str | Path, *, paper: bool = False) -> None:
    """Render in memory, then write atomically like every other file of a run. `paper`: also as SVG, PDF and
    a 300-dpi PNG under figures/ beside it (`carotid.report.paper`)."""
    if paper:
        save_figure_set(fig, Path(path))
        return
    atomic_write_bytes(path, figure_png(fig))


def figure_png(fig) -> bytes:
    """The figure as a screen PNG (120 dpi), closed after: for a file, or embedded in a page as it is."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def new_figure(*args, **kwargs):
    use_fonts()
    return _pyplot().subplots(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------------------


def _best_epoch(rows: list[dict], key: str) -> int | None:
    values = [(_number(r.get(key)), int(r["epoch"])) for r in rows]
    values = [(v, e) for v, e in values if v is not None]
    if not values:
        return None
    pick = min if key.endswith("loss") else max
    return pick(values, key=lambda pair: pair[0])[1]  # the first epoch reaching the best value, as the trainer


def plot_curves(rows: list[dict], monitor: str, path: str | Path, best_epoch: int | None = None) -> None:
    """Loss and a validation metric per epoch, train and validation, with the epoch of best_model.pth marked.

    The metric panel shows the monitored metric; when the monitor is a loss it shows val_auc (else val_accuracy)."""
    epochs = [int(r["epoch"]) for r in rows]
    best_epoch = best_epoch if best_epoch is not None else _best_epoch(rows, monitor)
    fig, (loss_ax, metric_ax) = new_figure(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = [_number(r.get(key)) for r in rows]
        if any(v is not None for v in values):
            loss_ax.plot(epochs, [np.nan if v is None else v for v in values], marker="o", markersize=3, label=label)
    loss_ax.set(title="loss", xlabel="epoch", ylabel="cross-entropy loss")
    loss_ax.set_ylim(bottom=0)
    shown = monitor
    if monitor.endswith("loss"):
        shown = next((k for k in ("val_auc", "val_accuracy") if any(_number(r.get(k)) is not None for r in rows)), "")
    metric = shown.removeprefix("val_").removeprefix("person_")
    train_key = f"train_{metric}" if metric and any(f"train_{metric}" in r for r in rows) else None
    for key, label in ((train_key, "train"), (shown, "validation")):
        values = [_number(r.get(key)) for r in rows] if key else []
        if any(v is not None for v in values):
            metric_ax.plot(
                epochs,
                [np.nan if v is None else v for v in values],
                marker="o",
                markersize=3,
                label=label + (" (per person)" if "person_" in key else ""),
                clip_on=False,  # a value of exactly 1.0 sits on the top edge
            )
    values = [v for line in metric_ax.lines for v in line.get_ydata() if np.isfinite(v)]
    low = np.floor((min(values) - 0.05) * 10) / 10 if values else 0.0
    metric_ax.set(title=shown or "no validation metric", xlabel="epoch", ylabel=shown.removeprefix("val_") or "")
    metric_ax.set_ylim(max(0.0, low), 1.0)  # every metric of the registry lies in [0, 1]
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(_integer_ticks())
        ax.grid(alpha=0.3)
    if best_epoch is not None:
        target = loss_ax if monitor.endswith("loss") else metric_ax
        value = next((_number(r.get(monitor)) for r in rows if int(r["epoch"]) == best_epoch), None)
        for ax in (loss_ax, metric_ax):
            ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        if value is not None:
            target.plot(
                [best_epoch],
                [value],
                "*",
                color="crimson",
                markersize=14,
                clip_on=False,
                label=f"best: epoch {best_epoch} ({monitor} {value:.3f})",
            )
    for ax in (loss_ax, metric_ax):
        if ax.lines:
            ax.legend(loc="best", fontsize=8)
    save_figure(fig, path, paper=True)


# ---------------------------------------------------------------------------------------------
# ROC and confusion matrix
# ---------------------------------------------------------------------------------------------


def _counts_text(y_true: np.ndarray, class_names: list[str], unit: str) -> str:
    counts = np.bincount(np.asarray(y_true), minlength=len(class_names))
    return f"{len(y_true)} {unit}: " + ", ".join(f"{n} {name}" for name, n in zip(class_names, counts))


def plot_roc(
    levels: dict[str, tuple],
    class_names: list[str],
    positive_index: int,
    path: str | Path,
    operating_points: dict[str, dict] | None = None,
    bands: dict[str, dict] | None = None,
    split: str | None = None,
) -> None:
    """ROC curves, one panel per level ('image', 'person'); binary: the positive class, else one-vs-rest.

    `operating_points` ({level: metrics with sensitivity, specificity, threshold}) marks where the
    reported threshold sits on each binary curve; `bands` ({level: {'fpr', 'low', 'high', 'resamples'}})
    draws the pointwise 95% band of the person bootstrap. Each panel names the split and its counts."""
    from sklearn.metrics import roc_auc_score, roc_curve  # only here: curves.png needs no scikit-learn

    fig, axes = new_figure(1, len(levels), figsize=(5.2 * len(levels), 5), squeeze=False)
    for ax, (level, (y_true, probs)) in zip(axes[0], levels.items()):
        band = (bands or {}).get(level)
        if band:
            ax.fill_between(
                band["fpr"],
                band["low"],
                band["high"],
                color="tab:blue",
                alpha=0.2,
                label=f"95% band ({band['resamples']} person resamples)",
            )
        targets = [positive_index] if len(class_names) == 2 else range(len(class_names))
        for k in targets:
            y_k = (np.asarray(y_true) == k).astype(int)
            if 0 < y_k.sum() < len(y_k):
                fpr, tpr, _ = roc_curve(y_k, probs[:, k])
                ax.plot(fpr, tpr, label=f"{class_names[k]} (AUC {roc_auc_score(y_k, probs[:, k]):.3f})")
        point = (operating_points or {}).get(level)
        if point and point.get("sensitivity") is not None and point.get("specificity") is not None:
            ax.plot(
                1 - point["specificity"],
                point["sensitivity"],
                "o",
                color="black",
                label=f"threshold {point['threshold']:.3f}",
            )
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        where = (f"{split} split, " if split in ("train", "val", "test") else f"{split}, ") if split else ""
        unit = "images" if level == "image" else "persons"
        ax.set(
            title=f"ROC per {level}\n{where}{_counts_text(y_true, class_names, unit)}",
            xlabel="1 - specificity (false-positive rate)",
            ylabel="sensitivity (true-positive rate)",
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        ax.title.set_fontsize(10)
        if len(ax.lines) > 1 or band:
            ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path, paper=True)


def plot_confusion(
    levels: dict[str, list[list[int]]],
    class_names: list[str],
    path: str | Path,
    threshold: float | None = None,
    positive_class: str | None = None,
) -> None:
    """Confusion matrices (rows: true class, columns: predicted), one panel per level: each cell's count and
    its share of the row (sensitivity and specificity on the diagonal), coloured by that share."""
    rule = f"positive if P({positive_class}) ≥ {threshold:.3f}" if threshold is not None else "predicted = argmax"
    fig, axes = new_figure(1, len(levels), figsize=(5 * len(levels), 4.4), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    for ax, (level, matrix) in zip(axes[0], levels.items()):
        matrix = np.asarray(matrix)
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for (i, j), value in np.ndenumerate(matrix):
            text = f"{value}\n{share[i, j]:.0%}" if totals[i, 0] else f"{value}"
            ax.text(j, i, text, ha="center", va="center", color="white" if share[i, j] > 0.5 else "black")
        ax.set(
            title=f"per {level} ({matrix.sum()}): count, % of the true class\n{rule}",
            xlabel="predicted",
            ylabel="true",
            xticks=range(len(class_names)),
            yticks=range(len(class_names)),
            xticklabels=class_names,
            yticklabels=class_names,
        )
        ax.title.set_fontsize(10)
    save_figure(fig, path, paper=True)


def plot_reliability(
    levels: dict[str, list[dict]], path: str | Path, before: dict[str, list[dict]] | None = None, binary: bool = True
) -> None:
    """Reliability diagram per level: observed rate against mean predicted probability in each bin (marker
    area ∝ persons or frames in the bin), the diagonal of perfect calibration, and, after temperature
    scaling, the curve before it (dashed)."""
    fig, axes = new_figure(1, len(levels), figsize=(5 * len(levels), 5.2), squeeze=False)
    for ax, (level, bins) in zip(axes[0], levels.items()):
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        after = "after temperature scaling" if before else "model"
        curves = [("before temperature scaling", (before or {}).get(level), ":"), (after, bins, "-")]
        for label, curve, style in curves:
            if not curve:
                continue
            used = [b for b in curve if b["n"]]
            x, y = [b["mean_predicted"] for b in used], [b["observed"] for b in used]
            total = sum(b["n"] for b in used)
            line = ax.plot(x, y, linestyle=style, label=label)[0]
            ax.scatter(x, y, s=[20 + 300 * b["n"] / total for b in used], color=line.get_color(), zorder=3)
        ax.set(
            title=f"reliability per {level}",
            xlabel="mean predicted probability" + (" (positive class)" if binary else " (predicted class)"),
            ylabel="observed rate" + (" of the positive class" if binary else " correct"),
            xlim=(0, 1),
            ylim=(0, 1.02),
        )
        # Below the axes: inside, the legend would hide the part of the curve it overlaps.
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, ncol=2, frameon=False)
    save_figure(fig, path, paper=True)


# ---------------------------------------------------------------------------------------------
# One person's frames
# ---------------------------------------------------------------------------------------------


def plot_probability_strip(
    frame_probs: np.ndarray,
    class_name: str,
    path: str | Path,
    *,
    person_prob: float,
    threshold: float | None,
    title: str,
    marked: Iterable[int] = (),
) -> None:
    """One person's frame probabilities P(class_name) in frame order, with the person's probability, the
    threshold, and the frames shown in the montage (`marked`) highlighted."""
    frame_probs = np.asarray(frame_probs, dtype=float)
    fig, ax = new_figure(figsize=(7, 1.9))
    x = np.arange(1, len(frame_probs) + 1)
    colors = np.where(np.isin(x - 1, list(marked)), "crimson", "tab:blue")
    ax.bar(x, frame_probs, color=colors, width=0.8)
    ax.axhline(person_prob, color="black", linewidth=1.2, label=f"person {person_prob:.3f}")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:.3f}")
    ax.set(ylim=(0, 1), xlabel="frame (sorted by file name)", ylabel=f"P({class_name})")
    ax.set_title(title, fontsize=9)
    ax.xaxis.set_major_locator(_integer_ticks())
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    save_figure(fig, path)
