"""A person model's attention as a figure: the strip of its weights over the frame order (the report's heat-map
section and failure gallery, predict's montages and its page: one drawing everywhere). carotid.evaluation.attention
has the rule and the words."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carotid.report.plots import figure_png, new_figure, save_figure


def plot_attention_strip(
    attention: np.ndarray, path: Path, *, title: str, marked: np.ndarray | None = None, note: str | None = None
) -> None:
    """Each frame's attention in frame order (the `marked` positions, e.g. a montage's frames, in red), beside the
    uniform weight 1/n; `note` (e.g. the uniform sentence) is written under the title."""
    save_figure(attention_figure(attention, title=title, marked=marked, note=note), path)


def attention_png(
    attention: np.ndarray, *, title: str, marked: np.ndarray | None = None, note: str | None = None
) -> bytes:
    """The same strip as PNG bytes, for a page that embeds it without writing a file (predict --report)."""
    return figure_png(attention_figure(attention, title=title, marked=marked, note=note))


def attention_figure(attention: np.ndarray, *, title: str, marked: np.ndarray | None, note: str | None):
    """The strip's figure, not yet saved."""
    x = np.arange(1, len(attention) + 1)
    marked = np.zeros(0, dtype=int) if marked is None else np.asarray(marked)
    fig, ax = new_figure(figsize=(7, 1.9))
    ax.bar(x, attention, color=np.where(np.isin(x - 1, marked), "crimson", "tab:blue"), width=0.8)
    ax.axhline(1 / len(attention), color="grey", linestyle="--", linewidth=1, label=f"uniform 1/{len(attention)}")
    ax.set(ylim=(0, max(1.0 / len(attention), float(np.nanmax(attention))) * 1.1), ylabel="attention")
    ax.set(xlabel="frame in order (files by name, then frame)")
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    ax.set_xticks(x if len(x) <= 30 else x[:: len(x) // 10])
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    return fig
