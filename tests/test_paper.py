"""What a paper takes from an evaluation folder: every metric recomputed from the written CSVs equals the page's
exactly, the precision–recall / decision / calibration curves with their CSVs, the figures as SVG, PDF and
300-dpi PNG, near-ties at the threshold reported, and the page in Chromium."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import roc_auc_score

from carotid.core.run_dir import RunDir
from carotid.evaluation.curves import decision_curve
from carotid.evaluation.evaluator import _near_ties
from tests.browser import find_chromium, open_page
from tests.conftest import read_json
from tests.latex import check_latex_table


def _rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_person_metrics_recomputed_from_the_csv_equal_metrics_json_exactly(trained_run):
    folder = RunDir(trained_run).evaluation().path
    metrics = read_json(folder / "metrics.json")
    positive, threshold = metrics["positive_class"], metrics["threshold"]
    rows = _rows(folder / "person_predictions.csv")
    y = np.array([r["true_label"] == positive for r in rows])
    p = np.array([float(r[f"prob_{positive}"]) for r in rows])
    call = p >= threshold
    assert [r["predicted_label"] == positive for r in rows] == call.tolist()
    tp, fn, tn, fp = (int(v) for v in ((call & y).sum(), (~call & y).sum(), (~call & ~y).sum(), (call & ~y).sum()))
    person = metrics["person"]
    assert person["sensitivity"] == tp / (tp + fn) and person["specificity"] == tn / (tn + fp)
    assert person["accuracy"] == (tp + tn) / len(y)
    assert person["auc"] == roc_auc_score(y, p)  # equal, not approximately: the CSV holds every digit
    frames = _rows(folder / "predictions.csv")
    frame_p = np.array([float(r[f"prob_{positive}"]) for r in frames])
    assert metrics["image"]["auc"] == roc_auc_score([r["true_label"] == positive for r in frames], frame_p)
    # The Wilson interval of the sensitivity is of this very count, and says so.
    interval = metrics["ci"]["person"]["sensitivity"]
    assert (interval["successes"], interval["total"]) == (tp, tp + fn)
    assert metrics["ci"]["method"]["by_metric"]["person"]["sensitivity"] == "Wilson score interval"
    # The decision curve's CSV is the net benefit of these probabilities.
    written = _rows(folder / "decision_curve.csv")
    curve = decision_curve(y, p)
    assert [float(r["net_benefit_model"]) for r in written] == curve["model"]
    assert [float(r["net_benefit_treat_all"]) for r in written] == pytest.approx(curve["treat_all"], abs=0)


def test_evaluation_writes_paper_figures_and_shows_them(trained_run):
    folder = RunDir(trained_run).evaluation().path
    for stem in ("roc_curve", "reliability_diagram", "confusion_matrix", "pr_curve", "decision_curve"):
        assert (folder / f"{stem}.png").is_file(), stem
        ET.parse(folder / "figures" / f"{stem}.svg")
        assert (folder / "figures" / f"{stem}.pdf").read_bytes().startswith(b"%PDF-")
        with Image.open(folder / "figures" / f"{stem}.png") as png:
            assert round(png.info["dpi"][0]) == 300
    assert (folder / "pr_curve.csv").is_file() and (folder / "calibration_curve.csv").is_file()
    calibration = _rows(folder / "calibration_curve.csv")
    assert sum(int(r["n"]) for r in calibration) == read_json(folder / "metrics.json")["n_persons"]
    page = (folder / "report.html").read_text(encoding="utf-8")
    assert "Decision curve (net benefit) per person" in page and "decision_curve.csv" in page
    if find_chromium() is None:
        return
    report = open_page(folder / "report.html")
    assert not report.exceptions and not report.failed
    assert all(i["ok"] for i in report.images)


def test_no_paper_figures_writes_the_screen_figures_only_and_the_page_names_no_figures_file(trained_run, tmp_path):
    from carotid import evaluate

    out = tmp_path / "eval"
    assert evaluate.main(["--run-dir", str(trained_run), "--out", str(out), "--no-paper-figures"]) == 0
    for stem in ("roc_curve", "reliability_diagram", "confusion_matrix", "pr_curve", "decision_curve"):
        assert (out / f"{stem}.png").is_file(), stem
    assert not (out / "figures").exists()
    assert (out / "tables" / "metrics.csv").is_file()  # the tables are kept: they cost nothing to write
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "decision_curve.csv" in page and "figures/" not in page and "300 dpi" not in page
    # The same numbers as the evaluation that wrote them
    assert (
        read_json(out / "metrics.json")["person"]
        == read_json(RunDir(trained_run).evaluation().path / "metrics.json")["person"]
    )


def test_near_ties_at_the_threshold_are_reported():
    persons = SimpleNamespace(
        person_ids=np.array(["a", "b", "c"]), probs=np.array([[0.1, 0.9], [7.6e-8, 0.999999924], [1e-9, 0.999999999]])
    )
    warning = _near_ties(persons, 1, 0.9999999245)
    assert len(warning) == 1 and warning[0].startswith("2 persons within 1e-06 of the threshold 0.9999999245")
    assert "b (0.999999924)" in warning[0] and "a (" not in warning[0]
    assert _near_ties(persons, 1, 0.5) == []


def test_methods_md_takes_its_numbers_from_the_run_files(trained_run):
    folder = RunDir(trained_run).evaluation().path
    text = (folder / "methods.md").read_text(encoding="utf-8")
    metrics = read_json(folder / "metrics.json")
    config = yaml.safe_load((trained_run / "config.yaml").read_text(encoding="utf-8"))
    options = config["options"]
    person, ci = metrics["person"], metrics["ci"]["person"]
    assert f"AUC {person['auc']:.3f} (95% CI {ci['auc']['low']:.3f}–{ci['auc']['high']:.3f})" in text
    sensitivity = ci["sensitivity"]
    assert (
        f"sensitivity {person['sensitivity']:.3f} (95% CI {sensitivity['low']:.3f}–{sensitivity['high']:.3f}, "
        f"{sensitivity['successes']}/{sensitivity['total']})" in text
    )
    assert f"seed {options['seed']}" in text and f"{options['epochs']} epochs" in text and f"lr {options['lr']}" in text
    assert f"threshold of {metrics['threshold']:.3f}" in text and "Wilson score interval" in text
    assert f"torch {config['versions']['torch']}" in text
    for split, counts in read_json(trained_run / "data_report.json")["splits"].items():
        assert f"{split}: {sum(counts['persons'].values())} persons" in text.lower()  # the first one capitalised
    assert "## For the authors to write" in text
    # Plain words, each checked against the files: no "at most all frames", the numbers of metrics.json.
    assert "at most all" not in text and "all frames of each person" in text and options["max_imgs_per_person"] is None
    assert f"the {options['augment']} preset (--augment {options['augment']})" in text
    assert f"{options['warmup_epochs']:g} warm-up epoch" in text and "None" not in text
    calibration = metrics["calibration"]["person"]
    assert f"Brier score {calibration['brier']:.3f}, ECE {calibration['ece']:.3f}" in text
    few = [w for w in metrics["warnings"] if "too few to judge calibration" in w]
    assert bool(few) == (f"{metrics['n_persons']} persons are too few to judge calibration" in text)
    assert (folder / "calibration_curve.png").is_file() and "calibration_curve.png" in text


def test_config_records_the_initial_weights_and_library_versions(trained_run, tmp_path):
    from carotid.core.files import file_sha256
    from carotid.core.run_dir import initial_weights

    config = yaml.safe_load((trained_run / "config.yaml").read_text(encoding="utf-8"))
    assert config["initial_weights"] == {"source": "random initialisation"}
    assert {"torch", "torchvision", "timm"} <= set(config["versions"])
    weights = tmp_path / "imagenet.safetensors"
    weights.write_bytes(b"\x00" * 1234)
    record = initial_weights({"pretrained": False, "pretrained_weights": str(weights)})
    assert record == {"source": "file", "file": str(weights), "sha256": file_sha256(weights), "bytes": 1234}
    text = (RunDir(trained_run).evaluation().path / "methods.md").read_text(encoding="utf-8")
    assert "**Initial weights.** Random initialisation." in text


def test_the_metrics_table_is_written_as_csv_latex_and_markdown_with_metrics_json_numbers(trained_run):
    folder = RunDir(trained_run).evaluation().path
    metrics = read_json(folder / "metrics.json")
    rows = _rows(folder / "tables" / "metrics.csv")
    expected = {(key, level) for level in ("person", "image") for key in metrics[level]}
    assert {(r["metric"], r["level"]) for r in rows} <= expected and len(rows) >= 16
    for row in rows:  # every digit of metrics.json, and the interval's method as metrics.json names it
        value = metrics[row["level"]][row["metric"]]
        assert (float(row["value"]) if row["value"] else None) == value
        interval = metrics["ci"][row["level"]].get(row["metric"])
        assert (float(row["95% CI low"]) if row["95% CI low"] else None) == (interval or {}).get("low")
    sensitivity = next(r for r in rows if (r["metric"], r["level"]) == ("sensitivity", "person"))
    assert sensitivity["CI method"] == metrics["ci"]["method"]["by_metric"]["person"]["sensitivity"]
    cells = check_latex_table(folder / "tables" / "metrics.tex")
    assert [c[:3] for c in cells] == [
        [r["metric"].replace("_", r"\_"), r["level"], f"{float(r['value']):.3f}" if r["value"] else "n/a"] for r in rows
    ]
    markdown = (folder / "tables" / "metrics.md").read_text(encoding="utf-8").splitlines()
    assert len(markdown) == 2 + len(rows) and markdown[0].startswith("| metric | level | value |")
