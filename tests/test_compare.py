"""carotid-compare: DeLong against the pair-by-pair structural components and a bootstrap, McNemar against
a hand count, refusals of mismatched folders, and the real CLIs on a trained run (two models, a reader)."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image
from scipy.stats import binomtest, chi2, norm

from carotid import compare, evaluate
from carotid.evaluation.compare import delong, mcnemar_test
from tests.browser import find_chromium, open_page
from tests.conftest import read_json, write_xlsx

QUICK = ["--num-workers", "0", "--batch-size", "8", "--bootstrap", "50", "--no-paper-figures"]


def correlated_scores(n_pos: int, n_neg: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    shared = rng.normal(size=len(y))
    a = 1.0 * y + shared + 0.5 * rng.normal(size=len(y))
    b = 0.6 * y + shared + 0.8 * rng.normal(size=len(y))
    return y, np.round(a, 1), np.round(b, 1)  # rounded: ties, which the midranks must count one half


def test_delong_equals_the_structural_components_written_out():
    """DeLong (1988): V10(X_i) = mean_j ψ(X_i, Y_j), V01(Y_j) = mean_i ψ(X_i, Y_j), ψ = 1, ½, 0;
    var(AUC_a − AUC_b) = (S10_aa + S10_bb − 2 S10_ab) / m + (S01_aa + S01_bb − 2 S01_ab) / n."""
    y, a, b = correlated_scores(23, 31)
    m, n = y.sum(), (~y).sum()
    v10, v01, aucs = [], [], []
    for score in (a, b):
        x, z = score[y], score[~y]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
        aucs.append(psi.mean())
    s10, s01 = np.cov(v10), np.cov(v01)
    variance = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z_value = (aucs[0] - aucs[1]) / np.sqrt(variance)
    out = delong(y, a, b)
    assert out["auc_a"] == pytest.approx(aucs[0], abs=1e-12) and out["auc_b"] == pytest.approx(aucs[1], abs=1e-12)
    assert out["se"] == pytest.approx(np.sqrt(variance), rel=1e-10)
    assert out["p_value"] == pytest.approx(2 * norm.sf(abs(z_value)), rel=1e-10)
    half = 1.959963984540054 * np.sqrt(variance)
    assert out["ci"]["low"] == pytest.approx(aucs[0] - aucs[1] - half) and out["ci"]["high"] == pytest.approx(
        aucs[0] - aucs[1] + half
    )


def test_delong_standard_error_agrees_with_a_paired_bootstrap():
    y, a, b = correlated_scores(120, 150, seed=3)
    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    diffs = []
    for _ in range(2000):
        pick = np.r_[rng.choice(pos, len(pos)), rng.choice(neg, len(neg))]
        diffs.append(delong(y[pick], a[pick], b[pick])["difference"])
    assert delong(y, a, b)["se"] == pytest.approx(np.std(diffs), rel=0.1)


def test_identical_scores_have_no_difference():
    y, a, _ = correlated_scores(10, 10)
    out = delong(y, a, a)
    assert out["difference"] == 0 and out["se"] == 0
    assert out["p_value"] is None and out["ci"] is None and out["note"].startswith("not estimable")


@pytest.mark.parametrize("a_only, b_only", [(3, 9), (20, 35)])
def test_mcnemar_matches_a_hand_count(a_only, b_only):
    both, neither = 40, 7
    correct_a = np.r_[np.ones(both), np.ones(a_only), np.zeros(b_only), np.zeros(neither)].astype(bool)
    correct_b = np.r_[np.ones(both), np.zeros(a_only), np.ones(b_only), np.zeros(neither)].astype(bool)
    out = mcnemar_test(correct_a, correct_b)
    assert out["table"] == {"both_right": both, "only_a_right": a_only, "only_b_right": b_only, "both_wrong": neither}
    if a_only + b_only < 25:
        assert out["method"] == "exact binomial"
        assert out["p_value"] == pytest.approx(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    else:
        statistic = (abs(a_only - b_only) - 1) ** 2 / (a_only + b_only)
        assert out["statistic"] == pytest.approx(statistic) and out["p_value"] == pytest.approx(chi2.sf(statistic, 1))
    assert out["difference"] == pytest.approx((a_only - b_only) / len(correct_a))


def test_mcnemar_without_a_discordant_person_is_not_estimable():
    agree = np.r_[np.ones(5), np.zeros(2)].astype(bool)
    out = mcnemar_test(agree, agree)
    assert out["p_value"] is None and out["note"].startswith("not estimable")


def write_eval(folder: Path, persons: dict[str, tuple[str, float]], threshold: float = 0.5) -> Path:
    """An evaluation folder as carotid-evaluate writes it (metrics.json + person_predictions.csv)."""
    folder.mkdir(parents=True)
    metrics = {"class_names": ["normal", "plaque"], "positive_class": "plaque", "threshold": threshold, "person": {}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    with (folder / "person_predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["person_id", "true_label", "n_frames", "prob_normal", "prob_plaque", "predicted_label"])
        for person, (label, p) in persons.items():
            writer.writerow([person, label, 4, 1 - p, p, "plaque" if p >= threshold else "normal"])
    return folder


def test_compare_refuses_different_persons_or_labels(tmp_path, capsys):
    persons = {f"p{i}": ("plaque" if i % 2 else "normal", (i % 5) / 5 + 0.1) for i in range(12)}
    a = write_eval(tmp_path / "a", persons)
    fewer = write_eval(tmp_path / "fewer", {k: v for k, v in persons.items() if k != "p3"})
    relabelled = write_eval(tmp_path / "relabelled", persons | {"p4": ("plaque", 0.3)})
    assert compare.main([str(a), str(fewer), "--out", str(tmp_path / "c1")]) == 2
    err = capsys.readouterr().err
    assert "different persons: 1 only in" in err and "--shared-persons" in err and not (tmp_path / "c1").exists()
    assert compare.main([str(a), str(relabelled), "--out", str(tmp_path / "c2")]) == 2
    assert "different true labels" in capsys.readouterr().err
    assert compare.main([str(a), str(fewer), "--shared-persons", "--out", str(tmp_path / "c3")]) == 0
    result = read_json(tmp_path / "c3" / "compare.json")
    assert result["n_persons"] == 11 and f"1 only in {a} left out" in result["notes"][0]
    assert compare.main([str(a), str(tmp_path / "nope")]) == 2
    assert "evaluation folder not found" in capsys.readouterr().err


def test_compare_two_models_of_a_run_end_to_end(trained_run, tmp_path, capsys):
    final = tmp_path / "final"
    assert evaluate.main(["--run-dir", str(trained_run), "--model", "final", "--out", str(final), *QUICK]) == 0
    out = tmp_path / "cmp"
    capsys.readouterr()
    assert compare.main([str(trained_run / "eval_test_best"), str(final), "--out", str(out), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "DeLong" in printed and "McNemar" in printed and f"written to {out}" in printed
    result = read_json(out / "compare.json")
    best_metrics = read_json(trained_run / "eval_test_best" / "metrics.json")
    assert result["n_persons"] == best_metrics["n_persons"]
    best = result["models"][0]
    assert best["auc"] == pytest.approx(best_metrics["person"]["auc"])
    assert best["sensitivity"] == pytest.approx(best_metrics["person"]["sensitivity"])
    config = (trained_run / "config.yaml").read_text(encoding="utf-8")
    assert (
        best["description"]["best_epoch"] == best_metrics["model_epoch"]
        and str(best["description"]["epochs"]) in config
    )
    assert best["name"].startswith(best_metrics["arch"].split("/")[-1] + " · frames")
    assert set(result["pairs"][0]["bootstrap_ci"]) == {"auc", "sensitivity", "specificity", "method"}
    # Another split's persons: refused.
    val = tmp_path / "val"
    assert evaluate.main(["--run-dir", str(trained_run), "--split", "val", "--out", str(val), *QUICK]) == 0
    assert compare.main([str(final), str(val), "--out", str(tmp_path / "no")]) == 2


def test_reader_column_is_scored_and_compared_end_to_end(trained_run, data_dir, tmp_path, capsys):
    _, label = data_dir
    sheet = openpyxl.load_workbook(label).active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    calls = [rows[0] + ["radiologist", "confidence"]]
    for i, (person, diagnosis) in enumerate(rows[1:]):
        wrong = i % 4 == 0
        call = ("normal" if diagnosis == "plaque" else "plaque") if wrong else diagnosis
        calls.append([person, diagnosis, call, (4 if diagnosis == "plaque" else 2) + (i % 2)])
    study = write_xlsx(tmp_path / "study.xlsx", calls, sheet=sheet.title)
    out = tmp_path / "model"
    argv = ["--run-dir", str(trained_run), "--label-excel", str(study), "--out", str(out), *QUICK]
    assert evaluate.main([*argv, "--reader-column", "radiologist"]) == 0
    printed = capsys.readouterr().out
    reader = tmp_path / "model_reader_radiologist"
    assert "reader 'radiologist' (call" in printed and f"carotid.compare {out} {reader}" in printed
    report = read_json(reader / "metrics.json")
    assert report["reader"] == {"column": "radiologist", "kind": "call"}
    truth = {str(r[0]): r[1] for r in calls[1:]}
    with (reader / "person_predictions.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {r["person_id"] for r in table} == set(read_json(trained_run / "splits.json")["test"])
    called = {str(r[0]): r[2] for r in calls[1:]}
    assert all(
        r["true_label"] == truth[r["person_id"]] and r["predicted_label"] == called[r["person_id"]] for r in table
    )
    assert compare.main([str(out), str(reader), "--out", str(tmp_path / "cmp"), "--bootstrap", "100"]) == 0
    compared = read_json(tmp_path / "cmp" / "compare.json")
    assert compared["models"][1]["name"] == "reader radiologist"
    # A 1-5 score needs its cut-off.
    assert evaluate.main([*argv, "--out", str(tmp_path / "m2"), "--reader-column", "confidence"]) == 2
    assert "--reader-threshold" in capsys.readouterr().err
    assert (
        evaluate.main(
            [*argv, "--out", str(tmp_path / "m3"), "--reader-column", "confidence", "--reader-threshold", "4"]
        )
        == 0
    )
    scored = read_json(tmp_path / "m3_reader_confidence" / "metrics.json")
    assert scored["reader"]["kind"] == "score" and scored["person"]["sensitivity"] == 1.0


def test_compare_writes_an_overlaid_roc_and_a_page_naming_both_classes(tmp_path, capsys):
    rng = np.random.default_rng(3)
    truth = ["plaque" if i % 2 else "normal" for i in range(20)]
    a = write_eval(
        tmp_path / "run_a" / "eval_test_best",
        {
            f"p{i}": (t, float(rng.uniform(0.3, 1.0) if t == "plaque" else rng.uniform(0, 0.7)))
            for i, t in enumerate(truth)
        },
    )
    b = write_eval(
        tmp_path / "run_b" / "eval_test_best",
        {f"p{i}": (t, float(rng.uniform(0, 1))) for i, t in enumerate(truth)},
        threshold=0.4,
    )
    out = tmp_path / "cmp"
    assert compare.main([str(a), str(b), "--out", str(out), "--bootstrap", "200"]) == 0
    printed = capsys.readouterr().out
    assert "20 persons (10 plaque, 10 normal)" in printed and "other" not in printed
    result = read_json(out / "compare.json")
    assert result["negative_class"] == "normal" and result["class_names"] == ["normal", "plaque"]
    with Image.open(out / "roc_overlay.png") as figure:
        assert figure.width > 400 and figure.height > 400
    page = html.unescape((out / "compare.html").read_text(encoding="utf-8"))
    # Both default to 'model · frames' (no arch in these folders): the run folder tells them apart.
    assert "model · frames (run_a)" in page and "model · frames (run_b)" in page
    assert "10 plaque, 10 normal (positive: plaque)" in page
    assert f"{result['models'][0]['auc']:.3f}" in page and f"{result['pairs'][0]['auc']['difference']:+.3f}" in page
    assert "data:image/png;base64," in page and "<script" not in page
    if find_chromium() is None:
        return
    report = open_page(out / "compare.html")
    assert report.title == "carotid — comparison of 2 models"
    assert not report.exceptions and not report.failed and not report.blanks, report.blanks
    assert len(report.images) == 4 and all(i["ok"] and i["width"] > 400 for i in report.images)  # 4 curves
