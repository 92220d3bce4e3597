"""metrics.py against scikit-learn on hand-made arrays: binary, one-class, multi-class, persons, bootstrap."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from carotid.evaluation import registry
from carotid.evaluation.aggregation import aggregate_persons
from carotid.evaluation.bootstrap import ResampledMetrics, bootstrap_ci, resample_counts
from carotid.evaluation.metrics import classification_metrics, epoch_metrics, youden_threshold

Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 0, 1])
P1 = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.55, 0.5, 0.5])
PROBS = np.stack([1 - P1, P1], axis=1)


def two_class(p_pos: np.ndarray) -> np.ndarray:
    return np.stack([1 - p_pos, p_pos], axis=1)


@pytest.mark.parametrize("threshold", [0.5, 0.45, 0.75])
def test_binary_metrics_equal_sklearn(threshold):
    out, notes = classification_metrics(Y, PROBS, ["normal", "plaque"], positive_index=1, threshold=threshold)
    pred = (P1 >= threshold).astype(int)
    assert notes == []
    assert out["threshold"] == threshold
    assert out["auc"] == pytest.approx(roc_auc_score(Y, P1))
    assert out["accuracy"] == pytest.approx(accuracy_score(Y, pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y, pred))
    assert out["f1"] == pytest.approx(f1_score(Y, pred))
    assert out["sensitivity"] == pytest.approx(recall_score(Y, pred))
    assert out["specificity"] == pytest.approx(recall_score(Y, pred, pos_label=0))
    assert out["ppv"] == pytest.approx(precision_score(Y, pred))
    assert out["npv"] == pytest.approx(precision_score(Y, pred, pos_label=0))
    assert out["confusion_matrix"] == confusion_matrix(Y, pred).tolist()
    half = out["at_threshold_0.5"]
    assert half["threshold"] == 0.5
    assert half["sensitivity"] == pytest.approx(recall_score(Y, (P1 >= 0.5).astype(int)))


def test_positive_class_first_keeps_class_order_in_confusion_matrix():
    """positive_index 0: 'abnormal' is class 0; rows and columns still follow class_names."""
    out, _ = classification_metrics(1 - Y, PROBS[:, ::-1], ["abnormal", "normal"], positive_index=0, threshold=0.5)
    pred = np.where(P1 >= 0.5, 0, 1)
    assert out["confusion_matrix"] == confusion_matrix(1 - Y, pred, labels=[0, 1]).tolist()
    assert out["sensitivity"] == pytest.approx(recall_score(1 - Y, pred, pos_label=0))
    assert out["auc"] == pytest.approx(roc_auc_score(Y, P1))


def test_one_class_gives_null_with_a_note_not_a_crash():
    y = np.zeros(4, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn warning leaks out: the notes say it once
        out, notes = classification_metrics(y, two_class(np.array([0.1, 0.6, 0.3, 0.2])), ["normal", "plaque"])
    assert out["auc"] is None and out["sensitivity"] is None and out["npv"] is not None
    assert out["specificity"] == pytest.approx(0.75)
    assert any("AUC is undefined" in n for n in notes)
    assert any("sensitivity is undefined" in n for n in notes)


def test_multiclass_metrics_equal_sklearn():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 8)
    probs = rng.dirichlet([1, 1, 1], size=len(y)) + np.eye(3)[y] * 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    names = ["normal", "stenosis", "plaque"]
    out, notes = classification_metrics(y, probs, names)
    pred = probs.argmax(axis=1)
    assert notes == []
    assert out["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert out["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert out["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert out["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert out["confusion_matrix"] == confusion_matrix(y, pred).tolist()
    recalls = recall_score(y, pred, average=None)
    for k, name in enumerate(names):
        assert out["per_class"][name]["sensitivity"] == pytest.approx(recalls[k])
        assert out["per_class"][name]["specificity"] == pytest.approx(recall_score(y != k, pred != k))
        assert out["per_class"][name]["auc"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))


def test_multiclass_with_an_absent_class_has_no_macro_auc():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    out, notes = classification_metrics(y, probs, ["a", "b", "c"])
    assert out["auc"] is None and out["per_class"]["c"]["sensitivity"] is None
    assert out["per_class"]["a"]["auc"] == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))
    assert any("'c'" in n for n in notes)


@pytest.mark.parametrize("method", ["mean", "median", "max"])
def test_person_aggregation(method):
    persons = np.array(["b", "a", "b", "a", "a", "c"])
    probs = two_class(np.array([0.2, 0.9, 0.6, 0.1, 0.4, 0.3]))
    ids, out = aggregate_persons(persons, probs, method, positive_index=1)
    expected = {"mean": [(0.9 + 0.1 + 0.4) / 3, 0.4, 0.3], "median": [0.4, 0.4, 0.3], "max": [0.9, 0.6, 0.3]}[method]
    assert ids.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(out[:, 1], expected)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)


def test_max_aggregation_multiclass_renormalises_per_class_maxima():
    ids, out = aggregate_persons(np.array(["p", "p"]), np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), "max")
    np.testing.assert_allclose(out[0], np.array([0.7, 0.3, 0.6]) / 1.6)


def test_youden_threshold_maximises_j():
    threshold = youden_threshold(Y, PROBS)

    def j(t):
        pred = P1 >= t
        return recall_score(Y, pred) + recall_score(Y, pred, pos_label=0) - 1

    assert j(threshold) == pytest.approx(max(j(t) for t in np.unique(P1)))
    assert not np.isin(threshold, P1)  # the middle of a gap between scores, not a score
    assert youden_threshold(np.ones(3, dtype=int), two_class(np.array([0.2, 0.5, 0.9]))) is None


def test_youden_threshold_is_the_middle_of_the_gap():
    """Perfectly separated persons: every threshold in (0.3, 0.7] has J = 1; the middle is 0.5."""
    assert youden_threshold(np.array([0, 0, 1, 1]), two_class(np.array([0.1, 0.3, 0.7, 0.9]))) == pytest.approx(0.5)
    assert youden_threshold(np.array([0, 0, 1, 1]), two_class(np.array([0.1, 0.6, 0.8, 0.9]))) == pytest.approx(0.7)


def test_youden_ties_go_to_the_threshold_nearest_half():
    """A model no better than chance: J is 0 for 'nothing positive' (0.85) and 'all positive' (0.2)."""
    assert youden_threshold(np.array([0, 1]), two_class(np.array([0.7, 0.4]))) == pytest.approx(0.2)


def person_data(n_persons: int = 30, frames: int = 5, seed: int = 0, classes: int = 2):
    rng = np.random.default_rng(seed)
    person_y = np.arange(n_persons) % classes
    persons = np.repeat([f"p{i:03d}" for i in range(n_persons)], frames)
    y = np.repeat(person_y, frames)
    logits = rng.normal(size=(len(y), classes)) + 1.2 * np.eye(classes)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return persons, y, np.round(probs, 2)  # rounding makes ties, which the fast AUC must count as sklearn does


@pytest.mark.parametrize("classes", [2, 3])
def test_resampled_metrics_equal_sklearn_on_the_resampled_frames(classes):
    persons, y, probs = person_data(classes=classes, seed=classes)
    _, group = np.unique(persons, return_inverse=True)
    resampled = ResampledMetrics(group, y, probs, positive_index=1, threshold=0.4)
    counts = resample_counts(y[::5], 4, np.random.default_rng(1))
    got = resampled(counts)
    for r in range(len(counts)):
        rows = np.concatenate([np.repeat(np.flatnonzero(group == g), int(c)) for g, c in enumerate(counts[r])])
        yr, pr = y[rows], probs[rows]
        pred = (pr[:, 1] >= 0.4).astype(int) if classes == 2 else pr.argmax(axis=1)
        auc = (
            np.mean([roc_auc_score(yr == k, pr[:, k]) for k in range(classes)])
            if classes > 2
            else roc_auc_score(yr, pr[:, 1])
        )
        assert got["auc"][r] == pytest.approx(auc)
        assert got["accuracy"][r] == pytest.approx(accuracy_score(yr, pred))
        assert got["balanced_accuracy"][r] == pytest.approx(balanced_accuracy_score(yr, pred))
        if classes == 2:
            assert got["sensitivity"][r] == pytest.approx(recall_score(yr, pred))
            assert got["specificity"][r] == pytest.approx(recall_score(yr, pred, pos_label=0))


def test_resample_counts_keep_each_class_size():
    strata = np.array([0, 0, 0, 1, 1, 2])
    counts = resample_counts(strata, 50, np.random.default_rng(0))
    for k, size in ((0, 3), (1, 2), (2, 1)):
        assert (counts[:, strata == k].sum(axis=1) == size).all()


def test_bootstrap_interval_contains_the_estimate_and_is_reproducible():
    persons, y, probs = person_data()
    ci = bootstrap_ci(persons, y, probs, n_classes=2, threshold=0.5, n_resamples=300, seed=7, proportions="bootstrap")
    image, _ = classification_metrics(y, probs, ["normal", "plaque"])
    ids, person_probs = aggregate_persons(persons, probs)
    person, _ = classification_metrics(y[::5], person_probs, ["normal", "plaque"])
    for level, point in (("image", image), ("person", person)):
        for key in ("auc", "accuracy", "sensitivity", "specificity"):
            interval = ci[level][key]
            assert interval["low"] <= point[key] <= interval["high"], (level, key)
            assert interval["n"] == 300
    again = {"n_classes": 2, "threshold": 0.5, "n_resamples": 300, "proportions": "bootstrap"}
    assert ci == bootstrap_ci(persons, y, probs, seed=7, **again)
    assert ci != bootstrap_ci(persons, y, probs, seed=8, **again)
    assert ci["method"]["unit"] == "person"


def test_bootstrap_of_a_one_class_split_has_no_auc_interval():
    persons, y, probs = person_data()
    keep = y == 1
    ci = bootstrap_ci(persons[keep], y[keep], probs[keep], n_classes=2, n_resamples=50)
    assert ci["person"]["auc"] is None and ci["person"]["specificity"] is None
    assert ci["person"]["sensitivity"] is not None


def test_epoch_metrics_are_the_registry_columns_and_use_the_run_aggregation():
    persons, y, probs = person_data()
    out = epoch_metrics(y, probs, persons, 1, "mean")
    assert set(out) == set(registry.VAL_COLUMNS)
    assert set(registry.VAL_COLUMNS) <= set(registry.METRIC_COLUMNS) and set(registry.VAL_COLUMNS) <= set(
        registry.MONITORS
    )
    assert out["val_auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
    ids, by_max = aggregate_persons(persons, probs, "max", 1)
    with_max = epoch_metrics(y, probs, persons, 1, "max")
    person_y = np.array([y[persons == p][0] for p in ids])
    assert with_max["val_person_auc"] == pytest.approx(roc_auc_score(person_y, by_max[:, 1]))


@pytest.mark.parametrize("n_classes,positive_index,seed", [(2, 1, 0), (2, 0, 1), (3, 1, 2), (2, 1, 3)])
def test_epoch_metrics_and_roc_points_equal_sklearn_with_ties_and_missing_classes(n_classes, positive_index, seed):
    """Training computes its per-epoch numbers in numpy (no scikit-learn import): they must be sklearn's."""
    from sklearn.metrics import roc_curve

    from carotid.evaluation.metrics import roc_points

    rng = np.random.default_rng(seed)
    n = 60
    persons = np.array([f"p{i % 12}" for i in range(n)])
    y = np.array([int(p[1:]) % n_classes for p in persons])
    if seed == 3:  # a validation split holding one class only: AUCs are undefined
        y[:] = 1
    raw = np.round(rng.random((n, n_classes)), 1) + 0.1  # rounded: many tied scores, some rows exactly 0.5/0.5
    probs = raw / raw.sum(axis=1, keepdims=True)
    out = epoch_metrics(y, probs, persons, positive_index, "mean")
    pred = probs.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert out["val_accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert out["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    if len(np.unique(y)) < n_classes:
        assert out["val_auc"] is None and out["val_person_auc"] is None
        return
    expected = (
        roc_auc_score(y == positive_index, probs[:, positive_index])
        if n_classes == 2
        else np.mean([roc_auc_score(y == k, probs[:, k]) for k in range(n_classes)])
    )
    assert out["val_auc"] == pytest.approx(expected)
    ids, person_probs = aggregate_persons(persons, probs, "mean", positive_index)
    person_y = np.array([y[persons == p][0] for p in ids])
    person_pred = person_probs.argmax(axis=1)
    assert out["val_person_accuracy"] == pytest.approx(accuracy_score(person_y, person_pred))
    for k in range(n_classes):
        ours = roc_points(y == k, probs[:, k])
        theirs = roc_curve(y == k, probs[:, k], drop_intermediate=False)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b)
