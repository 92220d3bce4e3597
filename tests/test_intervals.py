"""Per-person proportions get Wilson (default) or Clopper–Pearson intervals; AUC keeps the person bootstrap."""

from __future__ import annotations

import numpy as np
import pytest

from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.intervals import describe, proportion_interval

# Newcombe (1998), Statistics in Medicine 17:857, Table I: methods 3 (Wilson score) and 5 (Clopper–Pearson).
NEWCOMBE = [
    (81, 263, (0.2553, 0.3662), (0.2527, 0.3676)),
    (15, 148, (0.0624, 0.1605), (0.0578, 0.1617)),
    (0, 20, (0.0000, 0.1611), (0.0000, 0.1684)),
    (1, 29, (0.0061, 0.1718), (0.0009, 0.1776)),
]


@pytest.mark.parametrize(("k", "n", "wilson", "exact"), NEWCOMBE)
def test_wilson_and_clopper_pearson_match_newcombe_table(k, n, wilson, exact):
    for method, reference in (("wilson", wilson), ("exact", exact)):
        got = proportion_interval(k, n, method)
        assert (round(got["low"], 4), round(got["high"], 4)) == reference, method
        assert (got["successes"], got["total"]) == (k, n)


def _persons(tp: int, fn: int, tn: int, fp: int, frames: int = 3):
    """Frames of persons whose mean P(positive) lands on the given side of 0.5."""
    kinds = [(1, 0.9)] * tp + [(1, 0.1)] * fn + [(0, 0.1)] * tn + [(0, 0.9)] * fp
    ids, y, p = [], [], []
    for i, (label, prob) in enumerate(kinds):
        ids += [f"p{i:03d}"] * frames
        y += [label] * frames
        p += [prob] * frames
    p = np.array(p)
    return np.array(ids), np.array(y), np.c_[1 - p, p]


def test_person_proportions_get_wilson_by_default_and_auc_the_bootstrap():
    ids, y, probs = _persons(tp=3, fn=0, tn=9, fp=1)
    ci = bootstrap_ci(ids, y, probs, n_classes=2, threshold=0.5, n_resamples=200, seed=1)
    person = ci["person"]
    # 3 of 3 positives found: Wilson [0.4385, 1], not the bootstrap's degenerate [1, 1].
    assert round(person["sensitivity"]["low"], 4) == 0.4385 and person["sensitivity"]["high"] == pytest.approx(1.0)
    assert (person["specificity"]["successes"], person["specificity"]["total"]) == (9, 10)
    assert (person["ppv"]["successes"], person["ppv"]["total"]) == (3, 4)
    assert (person["npv"]["successes"], person["npv"]["total"]) == (9, 9)
    assert (person["accuracy"]["successes"], person["accuracy"]["total"]) == (12, 13)
    assert "successes" not in person["auc"]  # the bootstrap's interval
    by_metric = ci["method"]["by_metric"]
    assert by_metric["person"]["sensitivity"] == "Wilson score interval"
    assert by_metric["person"]["auc"] == by_metric["image"]["sensitivity"] == "person bootstrap, percentile"
    assert "Wilson" in describe(ci["method"])


def test_exact_and_bootstrap_are_kept_as_options():
    ids, y, probs = _persons(tp=3, fn=0, tn=9, fp=1)
    exact = bootstrap_ci(ids, y, probs, n_classes=2, threshold=0.5, n_resamples=200, seed=1, proportions="exact")
    # Clopper–Pearson of n out of n: the lower bound solves p^n = α/2.
    assert exact["person"]["sensitivity"]["low"] == pytest.approx(0.025 ** (1 / 3))
    boot = bootstrap_ci(ids, y, probs, n_classes=2, threshold=0.5, n_resamples=200, seed=1, proportions="bootstrap")
    assert boot["person"]["sensitivity"]["low"] == 1.0  # every resample finds every positive
    assert "ppv" not in boot["person"]
    assert boot["method"]["by_metric"]["person"]["sensitivity"] == "person bootstrap, percentile"
