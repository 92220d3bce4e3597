"""report.html: one self-contained page, written by training and by every evaluation, opened in a real
headless Chromium (no console errors, no failed or outside requests, every image decodes), with the
calibration section when metrics.json has one and the reporting checklist."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from PIL import Image

from carotid import evaluate
from carotid.report.html import build_report
from tests.browser import find_chromium, open_page


@pytest.fixture(scope="module")
def evaluation(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "eval"
    args = ["--run-dir", str(trained_run), "--out", str(out), "--heatmaps", "2", "--num-workers", "0"]
    assert evaluate.main([*args, "--bootstrap", "50"]) == 0
    return out


def test_training_and_evaluation_write_self_contained_reports(trained_run, evaluation):
    assert (trained_run / "report.html").is_file() and (trained_run / "eval_test_best" / "report.html").is_file()
    page = (evaluation / "report.html").read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert not re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page), "a resource outside the file"
    run_page = (trained_run / "report.html").read_text(encoding="utf-8")
    assert not re.findall(r"""src\s*=\s*["'](?!data:)""", run_page), "a resource outside the file"
    links = re.findall(r"""href\s*=\s*["'](?!data:)([^"'#]+)""", run_page)
    assert links == ["eval_test_best/report.html"], "the run's page links its evaluations, nothing else"
    for heading in ("Metrics", "Data flow", "Training", "ROC and confusion matrix", "Per person", "Heat maps"):
        assert f">{heading}</h2>" in page
    assert "Failure gallery" in page and "Reporting checklist" in page and "researcher to write" in page
    config = yaml.safe_load((trained_run / "config.yaml").read_text(encoding="utf-8"))
    assert config["label_file_sha256"] in page and config["versions"]["torch"] in page
    persons = json.loads((trained_run / "data_report.json").read_text(encoding="utf-8"))["persons_in_sheet"]
    assert f"<b>{persons}</b>persons in the label sheet" in page
    calibration = page[page.index('<h2 id="calibration">') :]
    assert "<th>calibration</th><th>per image</th><th>per person</th>" in calibration  # a table, not a console dump
    assert "<pre>" not in calibration[: calibration.index("</table>")]
    # The checklist's preprocessing is the model's own (letterbox and crop auto by default), not a fixed text.
    assert "centred on a black" in page and "--crop auto --resize letterbox" in page


@pytest.mark.slow
def test_report_opens_in_headless_chromium_without_errors(evaluation, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    report = open_page(evaluation / "report.html")
    assert report.title.startswith("carotid — test split")
    assert not report.exceptions, report.exceptions
    assert not [m for m in report.console if m["level"] in ("error", "warning", "assert")], report.console
    assert not report.failed, report.failed
    own = (evaluation / "report.html").resolve().as_uri()
    assert all(url == own or url.startswith("data:") for url in report.requests), report.requests
    assert len(report.images) >= 6  # curves, ROC, confusion, heat maps (+ the gallery's strips and montages)
    assert all(image["ok"] and image["width"] > 100 and image["height"] > 50 for image in report.images), report.images
    shot = tmp_path / "report.png"
    shot.write_bytes(report.screenshot)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width >= 1000 and image.height > 2000
        colours = image.convert("L").getextrema()
    assert colours[0] < 60 and colours[1] > 200  # text on a light page, not a blank render


def test_report_shows_calibration_when_metrics_has_it(evaluation, tmp_path):
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    assert "Calibration</h2>" in build_report(folder, None)  # every evaluation now measures calibration
    metrics.pop("calibration", None)
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    (folder / "reliability_diagram.png").unlink(missing_ok=True)
    assert "Calibration</h2>" not in build_report(folder, None)
    metrics["calibration"] = {"ece": 0.071, "brier": 0.12, "bins": [{"mean_predicted": 0.1, "observed": 0.0}]}
    (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    shutil.copy(folder / "roc_curve.png", folder / "reliability_diagram.png")
    page = build_report(folder, None)
    assert '<h2 id="calibration">Calibration</h2>' in page and "0.071" in page
    assert "assess calibration" not in page  # the checklist item is filled, not left to the researcher


def test_a_later_evaluation_keeps_the_earlier_one_and_the_run_report_links_both(trained_run, tmp_path, capsys):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    first = (run / "eval_test_best" / "metrics.json").read_bytes()
    capsys.readouterr()
    assert evaluate.main(["--run-dir", str(run), "--heatmaps", "1", "--num-workers", "0", "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert f"note: {run / 'eval_test_best'} holds an earlier evaluation, kept; this one goes to " in printed
    tested = len(json.loads((run / "splits.json").read_text(encoding="utf-8"))["test"])
    assert f"  classes (the {tested} test persons evaluated): " in printed  # not the sheet's classes
    assert "  persons (the whole sheet): " in printed
    assert (run / "eval_test_best" / "metrics.json").read_bytes() == first, "training's evaluation overwritten"
    assert (run / "eval_test_best_2" / "report.html").is_file() and any(
        (run / "eval_test_best_2" / "heatmaps").iterdir()
    )
    assert f"run report (links every evaluation of the run): {run / 'report.html'}" in printed
    page = (run / "report.html").read_text(encoding="utf-8")
    links = re.findall(r"""href\s*=\s*["'](?!data:)([^"'#]+)""", page)
    assert links == ["eval_test_best/report.html", "eval_test_best_2/report.html"]
    assert all((run / link).is_file() for link in links)


def _write_csv(path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(str(c) for c in row) for row in [header, *rows]) + "\n", encoding="utf-8")


def _person_model_evaluation(folder, attention: dict[str, list[tuple[str, str]]]) -> None:
    """An evaluation folder as a person model leaves it: predictions.csv with an attention column (empty for a
    frame model), person_predictions.csv, failures.csv with its strip and montage, and the heat maps."""
    header = ["path", "frame", "person_id", "true_label", "prob_normal", "prob_plaque", "predicted_label", "attention"]
    rows = [
        [f"root/{p}/{name}", 0, p, "plaque", "", "", "", weight]
        for p, frames in attention.items()
        for name, weight in frames
    ]
    _write_csv(folder / "predictions.csv", header, rows)
    _write_csv(folder / "person_predictions.csv", ["person_id", "true_label", "predicted_label"],
               [[p, "plaque", "normal"] for p in sorted(attention)])  # fmt: skip
    failure = {"rank": 1, "person_id": "P 1", "kind": "false negative", "true_label": "plaque",
               "predicted_label": "normal", "score": "P(plaque) 0.2", "n_frames": 3,
               "strip": "failures/P_1_strip.png", "montage": "heatmaps/P_1.png"}  # fmt: skip
    _write_csv(folder / "failures.csv", list(failure), [list(failure.values())])
    for name in ("failures/P_1_strip.png", "heatmaps/P_1.png", "heatmaps/2.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(folder / name)


def test_report_lists_a_person_models_frames_by_attention_in_the_gallery_and_the_heat_maps(tmp_path):
    frames = {"P 1": [("a.png", "0.100000"), ("b.png", "0.600000"), ("c.png", "0.300000")],
              "2": [("d.png", "0.250000"), ("e.png", "0.750000")]}  # fmt: skip
    _person_model_evaluation(tmp_path / "person", frames)
    page = build_report(tmp_path / "person", None)
    gallery, heatmaps = page.split('id="failures"')[1].split('id="heatmaps"')
    assert "b.png <b>0.600</b> · c.png <b>0.300</b> · a.png <b>0.100</b>" in gallery  # highest first
    assert "3 frames; equal weights would be 0.333" in gallery and "each frame&#x27;s attention" in gallery
    assert "e.png <b>0.750</b> · d.png <b>0.250</b>" in heatmaps  # person "2", the montage not in the gallery
    assert heatmaps.count("Highest attention first") == 1 and "the frames of highest attention" in heatmaps
    # A frame model's folder (attention cells empty) keeps its report as it was.
    _person_model_evaluation(tmp_path / "frames", {p: [(n, "") for n, _ in f] for p, f in frames.items()})
    page = build_report(tmp_path / "frames", None)
    assert "ighest attention" not in page and "frame probabilities (the frames in the montage in red)" in page
