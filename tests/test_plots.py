"""Figures: Chinese class names drawn with real glyphs, readable training curves, confusion matrix with row
percentages and threshold, ROC with its person-bootstrap band, split and counts."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from carotid.evaluation.bootstrap import roc_band
from carotid.report import plots

CHINESE = ["斑块", "正常"]


def binary_data(seed: int = 0, persons: int = 30, frames: int = 5):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(persons) % 2, frames)
    person_ids = np.repeat(np.arange(persons), frames)
    p = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.2, len(labels)), 0, 1)
    return person_ids, labels, np.stack([1 - p, p], axis=1)


def test_every_figure_draws_chinese_class_names_without_missing_glyphs(tmp_path):
    """A missing glyph only shows as an empty box in the PNG; matplotlib's warning about it is turned into this
    test's failure (install fonts-noto-cjk, which .ci/run does, to pass)."""
    person_ids, labels, probs = binary_data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_confusion(
            {"image": [[40, 35], [10, 65]], "person": [[8, 7], [2, 13]]},
            CHINESE,
            tmp_path / "confusion.png",
            threshold=0.5,
            positive_class="正常",
        )
        plots.plot_roc({"image": (labels, probs)}, CHINESE, 1, tmp_path / "roc.png", split="测试")
        plots.plot_probability_strip(
            probs[:5, 1], "正常", tmp_path / "strip.png", person_prob=0.6, threshold=0.5, title="患者 1001: 斑块"
        )
    missing = [str(w.message) for w in caught if "missing from font" in str(w.message) or "Glyph" in str(w.message)]
    assert not missing, f"{missing[0]} — {plots.FONT_HINT}"
    assert plots.cjk_font() is not None, plots.FONT_HINT
    assert plots.fonts_note(CHINESE) is None
    for name in ("confusion.png", "roc.png", "strip.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 300 and image.height > 100


def captured(monkeypatch) -> list:
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **_: figures.append(fig))
    return figures


def test_curves_have_labels_integer_epochs_the_best_epoch_and_metric_axes_within_range(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    rows = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_auc": min(1.0, 0.6 + 0.1 * e)} for e in range(1, 8)
    ]
    plots.plot_curves(rows, "val_auc", tmp_path / "curves.png", best_epoch=4)
    loss_ax, metric_ax = figures[0].axes
    assert loss_ax.get_ylabel() and metric_ax.get_ylabel() == "auc" and loss_ax.get_xlabel() == "epoch"
    assert metric_ax.get_ylim()[1] == 1.0 and metric_ax.get_ylim()[0] >= 0
    ticks = [t for t in metric_ax.get_xticks() if 1 <= t <= 7]
    assert ticks and all(float(t).is_integer() for t in ticks)
    legend = [t.get_text() for t in metric_ax.get_legend().get_texts()]
    assert any("best: epoch 4" in text for text in legend)


def test_confusion_matrix_shows_counts_row_percentages_and_threshold(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    plots.plot_confusion({"person": [[3, 1], [0, 4]]}, ["normal", "plaque"], tmp_path / "c.png", 0.42, "plaque")
    ax = figures[0].axes[0]
    cells = sorted(t.get_text() for t in ax.texts)
    assert cells == ["0\n0%", "1\n25%", "3\n75%", "4\n100%"]
    assert "P(plaque) ≥ 0.420" in ax.get_title()


def test_roc_names_split_and_counts_and_draws_the_band(monkeypatch, tmp_path):
    figures = captured(monkeypatch)
    person_ids, labels, probs = binary_data()
    band = roc_band(person_ids, labels == 1, probs[:, 1], np.arange(30) % 2, n_resamples=200, seed=1)
    plots.plot_roc(
        {"image": (labels, probs)}, ["normal", "plaque"], 1, tmp_path / "r.png", bands={"image": band}, split="test"
    )
    ax = figures[0].axes[0]
    assert "test split, 150 images: 75 normal, 75 plaque" in ax.get_title()
    assert ax.collections, "no band drawn"
    assert any("95% band (200 person resamples)" in t.get_text() for t in ax.get_legend().get_texts())


def test_roc_band_surrounds_the_curve_and_is_reproducible():
    person_ids, labels, probs = binary_data(seed=3)
    strata = np.arange(30) % 2
    band = roc_band(person_ids, labels == 1, probs[:, 1], strata, n_resamples=300, seed=7)
    again = roc_band(person_ids, labels == 1, probs[:, 1], strata, n_resamples=300, seed=7)
    np.testing.assert_array_equal(band["low"], again["low"])
    fpr, tpr, _ = roc_curve(labels, probs[:, 1])
    observed = np.interp(band["fpr"], fpr, tpr)
    assert np.all(band["low"] <= band["high"]) and band["low"].min() >= 0 and band["high"].max() <= 1
    assert np.all(np.diff(band["low"]) >= -1e-12) and np.all(np.diff(band["high"]) >= -1e-12)
    inside = (band["low"] - 1e-9 <= observed) & (observed <= band["high"] + 1e-9)
    assert inside.mean() > 0.95
    assert 0.05 < np.mean(band["high"] - band["low"]) < 0.5  # 30 persons: a real, not a degenerate, band
    assert roc_band(person_ids, labels == 1, probs[:, 1], strata, n_resamples=0) is None


@pytest.mark.parametrize("classes", [["normal", "plaque"], ["斑块", "正常"]])
def test_fonts_note_only_when_chinese_names_lack_a_font(classes, monkeypatch):
    monkeypatch.setattr(plots, "cjk_font", lambda: None)
    note = plots.fonts_note(classes)
    assert (note is not None) == plots.needs_cjk(classes)
    if note:
        assert "fonts-noto-cjk" in note


def test_the_reliability_legend_does_not_cover_the_curve(monkeypatch, tmp_path):
    """A curve near the top left, where an inside legend used to sit: the legend is below the axes."""
    figures = captured(monkeypatch)
    bins = [{"mean_predicted": x, "observed": min(1.0, x + 0.5), "n": 5} for x in (0.05, 0.15, 0.3, 0.5)]
    plots.plot_reliability(
        {"image": bins, "person": bins}, tmp_path / "rel.png", before={"image": bins, "person": bins}
    )
    figure = figures[0]
    figure.canvas.draw()
    for ax in figure.axes:
        legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.y1 <= axes_box.y0, "the legend overlaps the plotting area"
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert "perfect calibration" in labels and "before temperature scaling" in labels


def test_dollar_signs_and_backslashes_from_the_data_are_drawn_as_typed(tmp_path):
    """Person IDs and class names with '$' or '\\' (mathtext to matplotlib): an odd '$' used to stop the figure
    with a ParseFatalException, a pair turned 'a$b$c' into italics."""
    person_ids, labels, probs = binary_data()
    classes = ["US$ 5", "C:\\scans\\$x$"]
    plots.plot_confusion({"person": [[3, 1], [0, 4]]}, classes, tmp_path / "c.png", 0.5, classes[1])
    plots.plot_roc({"image": (labels, probs)}, classes, 1, tmp_path / "roc.png", split="$test")
    plots.plot_probability_strip(
        probs[:5, 1], classes[1], tmp_path / "s.png", person_prob=0.6, threshold=0.5, title="person $1001: \\alpha"
    )
    for name in ("c.png", "roc.png", "s.png"):
        with Image.open(tmp_path / name) as image:
            assert image.width > 300
    fig, ax = plots.new_figure()
    title = ax.set_title("a$b$c")
    assert not title.get_parse_math()  # drawn as typed, not as math
