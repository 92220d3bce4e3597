"""Figures written into run and evaluation folders (matplotlib, no display needed)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from carotid.files import atomic_write_bytes


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def save_figure(fig, path: str | Path) -> None:
    """Render in memory, then write atomically like every other file of a run."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_curves(rows: list[dict], monitor: str, path: str | Path) -> None:
    """Loss and the monitored metric per epoch, train and validation."""
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        values = [_number(r.get(key)) for r in rows]
        if any(v is not None for v in values):
            loss_ax.plot(epochs, values, marker="o", label=label)
    loss_ax.set(title="loss", xlabel="epoch")
    loss_ax.legend()
    metric = monitor.removeprefix("val_")
    train_key = f"train_{metric}" if any(f"train_{metric}" in r for r in rows) else None
    for key, label in ((train_key, "train"), (monitor, "validation")):
        values = [_number(r.get(key)) for r in rows] if key else []
        if any(v is not None for v in values):
            metric_ax.plot(epochs, values, marker="o", label=label)
    metric_ax.set(title=metric, xlabel="epoch")
    if metric_ax.lines:
        metric_ax.legend()
    save_figure(fig, path)


def plot_roc(
    levels: dict[str, tuple],
    class_names: list[str],
    positive_index: int,
    path: str | Path,
    operating_points: dict[str, dict] | None = None,
) -> None:
    """ROC curves, one panel per level ('image', 'person'); binary: the positive class, else one-vs-rest.

    `operating_points` ({level: metrics with sensitivity, specificity, threshold}) marks where the
    reported threshold sits on each binary curve, so a reader sees the trade-off that was chosen."""
    from sklearn.metrics import roc_auc_score, roc_curve  # only here: curves.png needs no scikit-learn

    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.5), squeeze=False)
    for ax, (level, (y_true, probs)) in zip(axes[0], levels.items()):
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
        ax.set(title=f"ROC per {level}", xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.02))
        if len(ax.lines) > 1:
            ax.legend(loc="lower right")
    _save_quietly(fig, path)


def plot_confusion(levels: dict[str, list[list[int]]], class_names: list[str], path: str | Path) -> None:
    """Confusion matrices (rows: true class, columns: predicted), one panel per level."""
    fig, axes = plt.subplots(1, len(levels), figsize=(4.5 * len(levels), 4), squeeze=False)
    for ax, (level, matrix) in zip(axes[0], levels.items()):
        matrix = np.asarray(matrix)
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
        ax.set(
            title=f"per {level}",
            xlabel="predicted",
            ylabel="true",
            xticks=range(len(class_names)),
            yticks=range(len(class_names)),
            xticklabels=class_names,
            yticklabels=class_names,
        )
    _save_quietly(fig, path)


def _save_quietly(fig, path: str | Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing glyphs, e.g. Chinese class names with a Latin-only font
        save_figure(fig, path)
