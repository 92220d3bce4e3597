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


def test_predict_report_of_an_attention_model_shows_its_attention_over_the_frame_order(data_dir, tmp_path, capsys):
    """A person model: the verdict at the model file's threshold, P(positive) in CJK, the frames of highest
    attention with their weights from the CSV, and each person's attention strip — in Chromium."""
    import numpy as np
    import torch

    from carotid.model.file import ModelFile
    from carotid.model.person import PersonModel

    torch.manual_seed(0)
    network = PersonModel("small_cnn", 2, 1, pooling="attention")
    model = tmp_path / "attention.pth"
    ModelFile(
        network.state_dict(), "small_cnn", ["正常", "斑块"], 1, 32, {"mean": [0.5], "std": [0.25]}, positive_index=1,
        person_model="attention", bag_size=4, threshold=0.4321, threshold_source="Youden's J on validation persons",
    ).save(model)  # fmt: skip
    people = tmp_path / "new"
    for source, name in zip(sorted(p for p in data_dir[0].iterdir() if p.is_dir())[:2], ["患者 <张三>", "病人&2"]):
        shutil.copytree(source, people / name)
    out = tmp_path / "pred.csv"
    argv = ["--model", str(model), "--input", str(people), "--out", str(out), "--heatmaps", "2", "--report", *QUICK]
    assert predict.main(argv) == 0
    raw = (tmp_path / "pred_report.html").read_text(encoding="utf-8")
    page = html.unescape(raw)
    assert "<张三>" not in raw and "<th>P(斑块)</th>" in page
    with (tmp_path / "pred_persons.csv").open(encoding="utf-8") as handle:
        persons = list(csv.DictReader(handle))
    with out.open(encoding="utf-8") as handle:
        frames = list(csv.DictReader(handle))
    assert page.count("<td>0.432</td>") == len(persons) == 2  # the model file's threshold, on every row
    for row in persons:
        p = float(row["prob_斑块"])
        assert row["predicted_label"] == ("斑块" if p >= 0.4321 else "正常")
        assert f"<td>{row['person_id']}</td><td>{row['predicted_label']}</td><td>{p:.3f}</td>" in page
        weights = sorted((float(f["attention"]) for f in frames if f["person_id"] == row["person_id"]), reverse=True)
        assert f"({weights[0]:.3f})" in page  # its frame of highest attention, with its weight
        assert np.isclose(sum(weights), 1.0, atol=1e-4)
        assert f'alt="attention of {html.escape(row["person_id"])}"' in raw  # report.attention's strip
    if find_chromium() is None:
        return
    report = open_page(tmp_path / "pred_report.html")
    assert not report.exceptions and not report.failed and not report.blanks
    assert len(report.images) == 4 and all(i["ok"] for i in report.images)  # 2 strips, 2 montages
