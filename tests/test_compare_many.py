"""carotid-compare with three models: one table, pairwise tests with Holm-adjusted p-values recomputed by hand,
"not estimable" for a zero standard error, the default folder beside the first evaluation, the paper files
(SVG, PDF, 300-dpi PNG, CSV/LaTeX/Markdown tables) and the page in Chromium with CJK names."""

from __future__ import annotations

import csv
import html
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from carotid import compare
from carotid.evaluation.curves import calibration_curve, decision_curve, net_benefit
from tests.browser import find_chromium, open_page
from tests.conftest import read_json
from tests.test_compare import write_eval

TRUTH = ["plaque" if i % 3 == 0 else "normal" for i in range(30)]  # 10 plaque, 20 normal


def three_models(root):
    rng = np.random.default_rng(11)
    y = np.array([t == "plaque" for t in TRUTH])
    scores = {
        "strong": np.clip(0.7 * y + 0.3 * rng.uniform(size=30), 0, 1),
        "middle": np.clip(0.35 * y + 0.6 * rng.uniform(size=30), 0, 1),
        "weak": rng.uniform(size=30),
    }
    folders = [
        write_eval(
            root / f"run_{name}" / "eval_test_best", {f"p{i:02d}": (t, float(s[i])) for i, t in enumerate(TRUTH)}
        )
        for name, s in scores.items()
    ]
    return folders, scores, y


def holm_by_hand(p_values: list[float]) -> list[float]:
    """Holm (1979): the k-th smallest p times (m − k + 1), made monotone, capped at 1."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def test_three_models_one_table_holm_adjusted_and_paper_files(tmp_path, capsys):
    folders, scores, y = three_models(tmp_path)
    names = ["强 model", "middle", "weak"]
    argv = [str(f) for f in folders] + [a for n in names for a in ("--name", n)] + ["--bootstrap", "200"]
    assert compare.main(argv) == 0
    out = folders[0].parent / "compare"  # the default: beside the first evaluation, printed
    assert f"written to {out}" in capsys.readouterr().out
    result = read_json(out / "compare.json")
    assert [m["name"] for m in result["models"]] == names
    assert [(p["a"], p["b"]) for p in result["pairs"]] == [
        (names[0], names[1]),
        (names[0], names[2]),
        (names[1], names[2]),
    ]
    for family in ("auc", "sensitivity", "specificity"):
        raw = [p[family]["p_value"] for p in result["pairs"]]
        assert [p[family]["p_holm"] for p in result["pairs"]] == pytest.approx(holm_by_hand(raw), rel=1e-12)
    strong = result["models"][0]
    called = scores["strong"] >= 0.5
    assert strong["counts"]["sensitivity"] == {"successes": int((called & y).sum()), "total": 10}
    assert strong["counts"]["ppv"]["total"] == int(called.sum())
    assert "Clopper" in result["method"]["proportion_ci"] and "Holm" in result["method"]["adjustment"]

    # The decision curve's CSV holds the net benefit computed by hand.
    with (out / "decision_curve.csv").open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["model"] == names[0] and r["threshold_probability"] == "0.2"]
    tp, fp = int(((scores["strong"] >= 0.2) & y).sum()), int(((scores["strong"] >= 0.2) & ~y).sum())
    assert float(rows[0]["net_benefit"]) == pytest.approx(tp / 30 - fp / 30 * 0.2 / 0.8, abs=1e-15)

    # The calibration curve of every model, with its band: the CSV is each model's curve recomputed.
    with (out / "calibration_curve.csv").open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    for name, key in zip(names, scores):
        curve = calibration_curve(y, scores[key], n_resamples=200, seed=42)
        mine = [r for r in written if r["model"] == name]
        assert [float(r["observed"]) for r in mine] == curve["observed"]
        assert [float(r["low"]) if r["low"] else None for r in mine] == curve["low"]
    assert any(r["low"] for r in written)  # a band, not only points

    for stem in ("roc_overlay", "pr_overlay", "decision_curve", "calibration_curve"):
        ET.parse(out / "figures" / f"{stem}.svg")  # well-formed XML
        pdf = (out / "figures" / f"{stem}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
        with Image.open(out / "figures" / f"{stem}.png") as png:
            assert round(png.info["dpi"][0]) == 300
    tex = (out / "tables" / "compare_models.tex").read_text(encoding="utf-8")
    body = tex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    header = tex.split("\\toprule")[1].split("\\midrule")[0]
    assert len(body) == 3 and all(line.count(" & ") == header.count(" & ") == 7 for line in body)
    assert "\\begin{tabular}{llllllll}" in tex and "\\usepackage{booktabs}" in tex
    if shutil.which("pdflatex"):
        doc = tmp_path / "doc.tex"
        doc.write_text(
            "\\documentclass{article}\\usepackage{booktabs}\\begin{document}\\input{"
            + str(out / "tables" / "compare_models.tex")
            + "}\\end{document}",
            encoding="utf-8",
        )
        subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, check=True, timeout=120)
    markdown = (out / "tables" / "compare_models.md").read_text(encoding="utf-8")
    assert markdown.count("\n") == 5 and names[0] in markdown

    page = html.unescape((out / "compare.html").read_text(encoding="utf-8"))
    assert "comparison of 3 models" in page and "Holm" in page and "强 model" in page
    assert "Calibration curve per person (95% band)" in page
    assert re.search(r"Clopper–Pearson", page)
    if find_chromium() is None:
        return
    report = open_page(out / "compare.html")
    assert not report.exceptions and not report.failed and not report.blanks, report.blanks
    assert len(report.images) == 4 and all(i["ok"] for i in report.images)  # ROC, PR, decision, calibration
    assert report.title == "carotid — comparison of 3 models" and len(report.screenshot) > 10_000


def test_two_perfect_models_are_not_estimable_and_a_second_run_gets_its_own_folder(tmp_path, capsys):
    persons = {f"p{i}": (t, 0.9 if t == "plaque" else 0.1 + i / 100) for i, t in enumerate(TRUTH[:12])}
    a, b = write_eval(tmp_path / "a" / "eval", persons), write_eval(tmp_path / "b" / "eval", persons)
    assert compare.main([str(a), str(b), "--bootstrap", "50"]) == 0
    assert compare.main([str(a), str(b), "--bootstrap", "50"]) == 0
    assert (tmp_path / "a" / "compare_2" / "compare.json").is_file()
    result = read_json(tmp_path / "a" / "compare" / "compare.json")
    auc = result["pairs"][0]["auc"]
    assert auc["p_value"] is None and auc["p_holm"] is None and auc["ci"] is None
    assert "not estimable" in auc["note"]
    page = html.unescape((tmp_path / "a" / "compare" / "compare.html").read_text(encoding="utf-8"))
    assert "not estimable" in page and "p 1.0000" not in page


def test_compare_refusals_name_the_folder_and_the_fix(tmp_path, capsys):
    folders, _, _ = three_models(tmp_path)
    fewer = write_eval(tmp_path / "fewer", {f"p{i:02d}": (t, 0.5) for i, t in enumerate(TRUTH[:-1])})
    assert compare.main([str(folders[0]), str(folders[1]), str(fewer), "--out", str(tmp_path / "no")]) == 2
    err = capsys.readouterr().err
    assert f"1 only in {folders[0]}" in err and str(fewer) in err and not (tmp_path / "no").exists()
    assert compare.main([str(folders[0])]) == 2
    assert "two or more evaluation folders" in capsys.readouterr().err
    assert compare.main([str(folders[0]), str(folders[1]), "--name", "only one"]) == 2
    assert "one --name per evaluation" in capsys.readouterr().err


def test_net_benefit_equals_a_hand_computation():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], bool)
    score = np.array([0.9, 0.6, 0.2, 0.7, 0.4, 0.3, 0.1, 0.1, 0.05, 0.5])
    # At pt = 0.25: called 0.9, 0.6, 0.7, 0.4, 0.3, 0.5 → TP 2, FP 4; NB = 2/10 − 4/10 · 0.25/0.75 = 0.0666…
    assert net_benefit(y, score, 0.25) == pytest.approx(0.2 - 0.4 / 3)
    curve = decision_curve(y, score, np.array([0.25, 0.5]))
    assert curve["treat_all"] == pytest.approx([0.3 - 0.7 / 3, 0.3 - 0.7])
    assert curve["model"][1] == pytest.approx(2 / 10 - 2 / 10 * 1.0)  # pt 0.5: 0.9, 0.6 true; 0.7, 0.5 false


def test_compare_methods_md_copies_compare_json(tmp_path):
    folders, _, _ = three_models(tmp_path)
    out = tmp_path / "cmp"
    assert compare.main([*map(str, folders), "--out", str(out), "--bootstrap", "100"]) == 0
    result, text = read_json(out / "compare.json"), (out / "methods.md").read_text(encoding="utf-8")
    assert "The same 30 persons for every model: 10 plaque (positive) and 20 normal." in text
    for m in result["models"]:
        ci = m["auc_ci"]
        assert f"{m['name']}: AUC {m['auc']:.3f} (95% CI {ci['low']:.3f}–{ci['high']:.3f})" in text
    for pair in result["pairs"]:
        auc = pair["auc"]
        assert f"p = {auc['p_value']:.4f}, Holm-adjusted {auc['p_holm']:.4f}" in text
