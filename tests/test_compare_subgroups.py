"""carotid-compare by subgroup: each model's person AUC per value of a column of the label sheet the evaluations
recorded (or --subgroup-column), in a forest plot with its CSV beside it, under figures/ (SVG, PDF, 300-dpi PNG)
and tables/ (CSV, LaTeX, Markdown), and a section of compare.html; evaluations that disagree are named."""

from __future__ import annotations

import csv
import html
import json
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from carotid import compare
from carotid.evaluation.bootstrap import bootstrap_ci
from tests.browser import find_chromium, open_page
from tests.conftest import read_json, write_xlsx
from tests.latex import check_latex_table
from tests.test_compare_many import TRUTH, three_models

HOSPITAL = ["北院" if i < 18 else "south" for i in range(len(TRUTH))]  # 6 + 12 and 4 + 8 persons per class


def recorded(folders, sheet, columns_of):
    """Make each evaluation record the label sheet and its subgroup columns, as carotid-evaluate writes them."""
    for folder, columns in zip(folders, columns_of):
        metrics = read_json(folder / "metrics.json")
        metrics["data"] = {"label_excel": str(sheet), "sheet": None, "id_column": None, "label_column": None}
        metrics["data"]["header_row"] = None
        metrics["subgroups"] = {column: [] for column in columns}
        (folder / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")


def label_sheet(path):
    rows = [["ID", "diagnosis", "hospital", "sex"]]
    rows += [[f"p{i:02d}", t, h, "F" if i % 2 else "M"] for i, (t, h) in enumerate(zip(TRUTH, HOSPITAL))]
    return write_xlsx(path, rows)


def person_table(folder) -> dict[str, dict]:
    with (folder / "person_predictions.csv").open(encoding="utf-8") as handle:
        return {row["person_id"]: row for row in csv.DictReader(handle)}


def test_compare_draws_every_models_auc_per_subgroup_from_the_recorded_sheet(tmp_path, capsys):
    folders, _, _ = three_models(tmp_path)
    sheet = label_sheet(tmp_path / "labels.xlsx")
    recorded(folders, sheet, [["hospital"]] * 3)
    names = ["强 model", "middle", "weak"]
    out = tmp_path / "cmp"
    argv = [*map(str, folders), *(a for n in names for a in ("--name", n)), "--out", str(out), "--bootstrap", "200"]
    assert compare.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"subgroups: hospital (the columns the evaluations recorded) of {sheet}" in printed

    # The CSV beside the figure: each model's AUC per hospital, recomputed from its person CSV and the sheet.
    with (out / "forest_plot.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["model"], r["value"]) for r in rows] == [(n, h) for n in names for h in ("south", "北院")]
    for folder, name in zip(folders, names):
        persons = person_table(folder)
        north = sorted(p for p, h in zip(persons, HOSPITAL) if h == "北院")
        y = np.array([persons[p]["true_label"] == "plaque" for p in north])
        score = np.array([float(persons[p]["prob_plaque"]) for p in north])
        mine = next(r for r in rows if r["model"] == name and r["value"] == "北院")
        assert int(mine["n_persons"]) == 18 and float(mine["auc"]) == roc_auc_score(y, score)
        # Its interval is the evaluation's own person bootstrap of these persons, with compare's seed.
        ci = bootstrap_ci(
            np.array(north), y.astype(int), np.c_[1 - score, score], n_classes=2, n_resamples=200, seed=42
        )
        assert (float(mine["auc_low"]), float(mine["auc_high"])) == (
            ci["person"]["auc"]["low"],
            ci["person"]["auc"]["high"],
        )

    for suffix in ("svg", "pdf", "png"):
        assert (out / "figures" / f"forest_plot.{suffix}").stat().st_size > 1000
    ET.parse(out / "figures" / "forest_plot.svg")
    pdf = (out / "figures" / "forest_plot.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    with Image.open(out / "figures" / "forest_plot.png") as png:
        assert round(png.info["dpi"][0]) == 300
    body = check_latex_table(out / "tables" / "compare_subgroups.tex")
    assert len(body) == 2 and body[1][0] == "hospital" and body[1][1] == "北院"
    with (out / "tables" / "compare_subgroups.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert table[1]["persons"] == "18 (12 normal, 6 plaque)" and table[1]["small"] == "no"
    assert table[1][f"{names[0]}: AUC [95% CI]"].startswith(f"{float(rows[1]['auc']):.3f} [")
    assert (out / "tables" / "compare_subgroups.md").read_text(encoding="utf-8").count("\n") == 4

    page = html.unescape((out / "compare.html").read_text(encoding="utf-8"))
    assert '<h2 id="subgroups">Subgroups</h2>' in page and "forest_plot.csv" in page and "北院" in page
    assert "data:image/png;base64," in page.split('id="subgroups"')[1]
    assert read_json(out / "compare.json")["subgroups"]["by_model"][names[2]]["hospital"][0]["value"] == "south"
    methods = (out / "methods.md").read_text(encoding="utf-8")
    assert (
        "**Subgroups.** Each model's person AUC per value of hospital (columns of the label sheet labels.xlsx)"
        in methods
    )
    if find_chromium() is None:
        return
    report = open_page(out / "compare.html")
    assert not report.exceptions and not report.failed and not report.blanks, report.blanks
    assert len(report.images) == 5 and all(i["ok"] for i in report.images)  # the four curves and the forest plot


def test_compare_names_evaluations_that_recorded_different_subgroups(tmp_path, capsys):
    folders, _, _ = three_models(tmp_path)
    sheet = label_sheet(tmp_path / "labels.xlsx")
    recorded(folders, sheet, [["hospital"], ["hospital", "sex"], []])
    out = tmp_path / "cmp"
    assert compare.main([*map(str, folders), "--out", str(out), "--bootstrap", "50"]) == 0
    result = read_json(out / "compare.json")
    assert result["subgroups"]["columns"] == ["hospital", "sex"]
    note = result["subgroups"]["notes"][0]
    assert f"{folders[1]}: hospital, sex" in note and f"{folders[2]}: none" in note
    assert f"warning: {note}" in capsys.readouterr().out
    assert html.escape(note) in (out / "compare.html").read_text(encoding="utf-8")

    # --subgroup-column chooses; a column the sheet lacks, or no recorded sheet, is one error line, nothing written.
    assert compare.main([*map(str, folders), "--out", str(tmp_path / "c2"), "--subgroup-column", "age"]) == 2
    assert "'age' not found" in capsys.readouterr().err and not (tmp_path / "c2").exists()
    bare = tmp_path / "bare"
    bare_folders, _, _ = three_models(bare)
    assert compare.main([*map(str, bare_folders), "--out", str(tmp_path / "c3"), "--subgroup-column", "sex"]) == 2
    assert "--label-excel" in capsys.readouterr().err and not (tmp_path / "c3").exists()
    argv = [*map(str, bare_folders), "--out", str(tmp_path / "c4"), "--subgroup-column", "sex", "--bootstrap", "50"]
    assert compare.main([*argv, "--label-excel", str(sheet)]) == 0
    with (tmp_path / "c4" / "forest_plot.csv").open(encoding="utf-8") as handle:
        assert [(r["value"], r["n_persons"]) for r in csv.DictReader(handle)][:2] == [("F", "15"), ("M", "15")]
    assert compare.main([*argv, "--subgroup-column", "sex"]) == 2
    assert "repeats a column" in capsys.readouterr().err
