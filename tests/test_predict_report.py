"""carotid-predict --report: one self-contained, escaped page per input with each person's verdict, probability
and the model file's threshold, top frames, heat maps and what the model was trained on; CJK in Chromium."""

from __future__ import annotations

import csv
import html
import shutil

from carotid import predict
from tests.browser import find_chromium, open_page
from tests.conftest import load_model

QUICK = ["--num-workers", "0", "--batch-size", "8"]


def test_predict_report_page_per_input(trained_run, data_dir, tmp_path, capsys):
    root, _ = data_dir
    people = tmp_path / "new"
    sources = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    names = ["患者 <张三>", "病人&2"]  # CJK and characters HTML must escape
    for source, name in zip(sources, names):
        shutil.copytree(source, people / name)
    out = tmp_path / "pred.csv"
    model = trained_run / "models" / "best_model.pth"
    argv = ["--model", str(model), "--input", str(people), "--out", str(out), "--heatmaps", "2", "--report", *QUICK]
    assert predict.main(argv) == 0
    page_path = tmp_path / "pred_report.html"
    assert f"report: {page_path}" in capsys.readouterr().out
    raw = page_path.read_text(encoding="utf-8")
    assert "<张三>" not in raw and "&lt;张三&gt;" in raw and "<script" not in raw
    page = html.unescape(raw)
    threshold = load_model(model)["threshold"]
    with (tmp_path / "pred_persons.csv").open(encoding="utf-8") as handle:
        persons = list(csv.DictReader(handle))
    positive = load_model(model)["class_names"][load_model(model)["positive_index"]]
    for row in persons:
        cells = f"<td>{row['person_id']}</td><td>{row['predicted_label']}</td>"
        assert cells in page and f"{float(row[f'prob_{positive}']):.3f}" in page
    assert page.count(f"<td>{threshold:.3f}</td>") == len(persons)
    assert "What the model was trained on" in page and "data:image/png;base64," in page
    if find_chromium() is None:
        return
    report = open_page(page_path)
    assert not report.exceptions and not report.failed
    assert len(report.images) == 2 and all(i["ok"] for i in report.images)
