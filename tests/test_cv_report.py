"""A cross-validation's own page (CV_DIR/report.html), its fold runs' words, and the pooled warnings."""

from __future__ import annotations

import csv
import html
import json
import re

import numpy as np
import openpyxl
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from carotid.core.files import file_sha256
from carotid.evaluation.inference import FramePredictions
from carotid.evaluation.pooling import pooled_metrics
from tests.browser import find_chromium, open_page
from tests.latex import check_latex_table


def test_cv_ends_with_its_report_out_of_fold_result_first(cv_run):
    cv_dir = cv_run[0]
    log = (cv_dir / "cv.log").read_text(encoding="utf-8").splitlines()
    assert log[-1].endswith(f"report: {cv_dir / 'report.html'}")
    page = html.unescape((cv_dir / "report.html").read_text(encoding="utf-8"))
    order = ["oof", "folds", "calibration", "ensemble", "data", "persons", "checklist", "provenance"]
    places = [page.index(f'<h2 id="{name}">') for name in order]
    assert places == sorted(places), "sections out of order"
    metrics = json.loads((cv_dir / "cv_metrics.json").read_text(encoding="utf-8"))
    auc = metrics["out_of_fold"]["person"]["auc"]
    interval = metrics["out_of_fold"]["ci"]["person"]["auc"]
    assert f"{auc:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]" in page[: places[1]]
    spread = metrics["fold_mean_sd"]["person"]["auc"]
    assert f"{spread['mean']:.3f} ± {spread['sd']:.3f}" in page[places[1] : places[2]]
    assert "<th>calibration</th>" in page[places[2] : places[3]] and "<pre>" not in page[places[2] : places[3]]
    ensemble = page[places[3] : places[4]]
    assert "Test set: the fold ensemble" in ensemble
    for k in (1, 2):  # the ensemble's models and their hashes
        assert file_sha256(cv_dir / f"fold_{k}" / "models" / "best_model.pth") in ensemble
    assert "fold 2: held out" in page[places[4] : places[5]]
    assert page.count('<tr class="wrong">') + page[places[5] : places[6]].count("<tr>") >= 12
    checklist = page[places[6] : places[7]]
    assert "2-fold cross-validation by person" in checklist and "each person its own group" in checklist
    assert "the best epoch by val_auc on that fold's validation persons" in checklist
    assert "convert('L'), weights 0.299, 0.587, 0.114" in checklist and "the same in all 2 folds" in checklist
    oof_calibration = metrics["out_of_fold"]["calibration"]["person"]  # the calibration row: cv_metrics.json's
    assert f"Brier score {oof_calibration['brier']:.3f}, ECE {oof_calibration['ece']:.3f}" in checklist
    few = any("too few to judge calibration" in w for w in metrics["out_of_fold"]["warnings"])
    assert few == (f"{metrics['n_persons']} persons are too few to judge calibration" in checklist)
    assert "person probability = mean of its frames' probabilities" in checklist
    ensemble_page = (cv_dir / "eval_test_ensemble" / "report.html").read_text(encoding="utf-8")
    assert "test split, ensemble of the 2 fold models" in ensemble_page and "small_cnn" in ensemble_page
    assert "2-fold cross-validation of the persons not in the test set" in ensemble_page  # not train/val/test ratios
    for k in (1, 2):
        assert file_sha256(cv_dir / f"fold_{k}" / "models" / "best_model.pth") in ensemble_page
    folds_section = page[places[1] : places[2]]
    for k in (1, 2):  # each fold's own report, linked and there
        assert re.search(rf'<a href="(fold_{k}/[^"]*report\.html)">fold {k}</a>', folds_section)
    first = [f["fold"] for f in metrics["per_fold"] if f["model_epoch"] == 1]
    assert ("chose epoch 1" in folds_section) == bool(first)
    # The paper's curves of the out-of-fold persons, with their numbers and methods.md.
    for stem in ("pr_curve", "decision_curve", "calibration_curve"):
        assert (cv_dir / f"{stem}.csv").is_file() and (cv_dir / "figures" / f"{stem}.svg").is_file()
    methods = (cv_dir / "methods.md").read_text(encoding="utf-8")
    assert f"AUC {auc:.3f} (95% CI {interval['low']:.3f}–{interval['high']:.3f})" in methods
    assert "2-fold cross-validation by person" in methods
    # The folds' table under tables/: cv_metrics.json's numbers, every digit in the CSV, LaTeX that parses.
    with (cv_dir / "tables" / "cv_folds.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert [r["fold"] for r in table] == ["1", "2", "out of fold"]
    for row, fold in zip(table, metrics["per_fold"] + [None]):
        person = fold["person"] if fold else metrics["out_of_fold"]["person"]
        for key in ("auc", "sensitivity", "specificity"):
            assert (float(row[f"person {key}"]) if row[f"person {key}"] else None) == person[key]
        assert row["threshold"] == (repr(fold["threshold"]) if fold else "")
    assert len(check_latex_table(cv_dir / "tables" / "cv_folds.tex")) == 3
    assert (cv_dir / "tables" / "cv_folds.md").read_text(encoding="utf-8").count("\n") == 5


def test_fold_runs_name_their_held_out_fold_and_the_startup_block_prints_once(cv_run):
    cv_dir = cv_run[0]
    cv_log = (cv_dir / "cv.log").read_text(encoding="utf-8")
    assert cv_log.count("label sheet:") == 1
    assert "processes: 1 (one process, not distributed)" in cv_log  # not Accelerate's internal "NO"
    for k in (1, 2):
        log = (cv_dir / f"fold_{k}" / "train.log").read_text(encoding="utf-8")
        assert f"held-out fold {k}: 6 persons" in log
        assert not re.search(r"^\s*test:", log, re.MULTILINE), "a fold calls its held-out persons test"
        assert "label sheet:" not in log and "processes:" not in log
        assert re.search(r"best val_auc: \d\.\d{3} \(epoch \d\)", log), "the best value in 3 decimals"
        metrics = json.loads((cv_dir / f"fold_{k}" / "eval_test_best" / "metrics.json").read_text())
        assert metrics["split"] == f"held-out fold {k}"


def test_pooled_warnings_say_which_threshold_they_belong_to():
    """At 0.5 nobody is called negative (npv undefined), at each fold's own threshold they are."""

    def fold(probs, labels, tag):
        n = len(probs)
        return FramePredictions(
            paths=np.array([f"{tag}{i}.png" for i in range(n)]),
            frames=np.zeros(n, dtype=np.int64),
            person_ids=np.array([f"{tag}{i}" for i in range(n)]),
            labels=np.array(labels),
            probs=np.array([[1 - p, p] for p in probs]),
        )

    folds = [
        (fold([0.6, 0.7, 0.8, 0.9], [0, 0, 1, 1], "a"), 0.75),
        (fold([0.55, 0.65, 0.85, 0.95], [0, 0, 1, 1], "b"), 0.7),
    ]
    out, _, _ = pooled_metrics(folds, ["normal", "plaque"], 1, aggregation="mean", bootstrap=0, seed=0)
    assert out["person"]["npv"] == pytest.approx(1.0)
    npv = [w for w in out["warnings"] if "npv is undefined" in w]
    assert npv and all("at threshold 0.5 (at_threshold_0.5)" in w for w in npv), out["warnings"]
    assert out["person"]["at_threshold_0.5"]["npv"] is None


def test_cv_report_opens_in_headless_chromium_with_no_empty_table_or_blank_field(cv_run, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    cv_dir = cv_run[0]
    report = open_page(cv_dir / "report.html")
    assert report.title == "carotid — 2-fold cross-validation"
    assert not report.exceptions and not report.failed
    assert not report.blanks, report.blanks
    assert len(report.images) >= 3 and all(image["ok"] for image in report.images)  # ROC, reliability, ensemble
    (tmp_path / "cv.png").write_bytes(report.screenshot)
    with Image.open(tmp_path / "cv.png") as shot:
        assert shot.width <= 1280 and shot.height > 3000  # nothing wider than the window; the whole page drawn
    ensemble = open_page(cv_dir / "eval_test_ensemble" / "report.html")  # was: blank subtitle, empty table, "-"
    assert ensemble.title == "carotid — test split, ensemble of the 2 fold models"
    assert not ensemble.blanks, ensemble.blanks


def test_cv_page_has_the_out_of_fold_auc_per_subgroup_recomputed_from_its_files(cv_run):
    """--subgroup-column: each fold's evaluation and the pooled out-of-fold persons get a forest plot whose CSV
    is the AUC of the persons of each value, recomputed here from oof_person_predictions.csv and the sheet."""
    cv_dir, _, label = cv_run
    sheet = openpyxl.load_workbook(label).active
    hospital = {str(r[0]): r[2] for r in sheet.iter_rows(min_row=2, values_only=True)}
    with (cv_dir / "oof_person_predictions.csv").open(encoding="utf-8") as handle:
        persons = list(csv.DictReader(handle))
    with (cv_dir / "forest_plot.csv").open(encoding="utf-8") as handle:
        forest = list(csv.DictReader(handle))
    assert [(r["column"], r["value"]) for r in forest] == [("医院", "H0"), ("医院", "H1")]
    for row in forest:
        mine = [p for p in persons if hospital[p["person_id"]] == row["value"]]
        y = [p["true_label"] == "plaque" for p in mine]
        assert int(row["n_persons"]) == len(mine)
        if len(set(y)) == 2:
            assert float(row["auc"]) == roc_auc_score(y, [float(p["prob_plaque"]) for p in mine])
        else:
            assert row["auc"] == ""
    assert sum(int(r["n_persons"]) for r in forest) == len(persons) and any(r["auc"] for r in forest)
    oof = json.loads((cv_dir / "cv_metrics.json").read_text(encoding="utf-8"))["out_of_fold"]
    assert [r["person"]["auc"] for r in oof["subgroups"]["医院"]] == [
        float(r["auc"]) if r["auc"] else None for r in forest
    ]
    for stem in ("svg", "pdf", "png"):
        assert (cv_dir / "figures" / f"forest_plot.{stem}").is_file()
    table = check_latex_table(cv_dir / "tables" / "subgroups.tex")  # the paper's table: the same AUCs
    assert [row[:2] for row in table] == [["医院", "H0"], ["医院", "H1"]]
    assert [row[-1].split(" ")[0] for row in table] == [f"{float(r['auc']):.3f}" if r["auc"] else "n/a" for r in forest]
    page = html.unescape((cv_dir / "report.html").read_text(encoding="utf-8"))
    assert "<h3>AUC per subgroup</h3>" in page and "numbers: forest_plot.csv" in page
    for k in (1, 2):  # each fold's test evaluation: its own subgroups
        assert (cv_dir / f"fold_{k}" / "eval_test_best" / "forest_plot.csv").is_file()
