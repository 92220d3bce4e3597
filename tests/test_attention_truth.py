"""A person model's attention tells the truth: person_predictions.csv gives each person's attention entropy and
largest weight x n; a person whose attention is near uniform is said to have no preferred frame (report, predict's
montages) instead of being shown "top" frames; most persons near uniform is a warning of the run, evaluate and
predict; predict names the pooling it used."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from carotid import evaluate, predict
from carotid.evaluation.attention import UNIFORM_MAX_RATIO, UNIFORM_PERSON, attention_spread
from carotid.model.file import ModelFile
from carotid.report.heatmaps import PersonFrames, decisive_frames
from tests.conftest import FAST, make_data, only_run_dir, train_in_process
from tests.test_person_model import attention_run  # noqa: F401 (the module's trained attention run)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _weights(predictions: Path) -> dict[str, list[float]]:
    """Each person's frame weights from predictions.csv's attention column."""
    weights: dict[str, list[float]] = {}
    for row in _csv(predictions):
        weights.setdefault(row["person_id"], []).append(float(row["attention"]))
    return weights


def _collapsed(run_dir: Path, path: Path) -> Path:
    """The run's attention model with its last attention layer zeroed: every frame scores the same (collapsed)."""
    model_file = ModelFile.load(run_dir / "models" / "best_model.pth")
    model_file.state_dict = dict(model_file.state_dict)
    model_file.state_dict["attention_w.weight"] = torch.zeros_like(model_file.state_dict["attention_w.weight"])
    model_file.save(path)
    return path


def test_person_predictions_give_each_persons_attention_entropy_and_largest_weight(attention_run):  # noqa: F811
    evaluation = attention_run / "eval_test_best"
    weights = _weights(evaluation / "predictions.csv")
    persons = _csv(evaluation / "person_predictions.csv")
    assert sorted(r["person_id"] for r in persons) == sorted(weights)
    for row in persons:
        w = np.array(weights[row["person_id"]])
        entropy = -sum(a * math.log(a) for a in w / w.sum())
        assert float(row["attention_entropy"]) == pytest.approx(entropy, abs=1e-4)
        assert float(row["attention_max_ratio"]) == pytest.approx(w.max() * len(w), abs=1e-4)
        assert row["attention_uniform"] == ("yes" if w.max() * len(w) < UNIFORM_MAX_RATIO else "no")


def test_attention_spread_of_known_weights_and_uniform_persons_show_frames_in_order():
    ids = np.array(["a"] * 4 + ["b"] * 4 + ["c"])
    weights = np.array([0.25] * 4 + [0.7, 0.1, 0.1, 0.1] + [1.0])
    spread = attention_spread(ids, weights, np.array(["a", "b", "c"]))
    assert spread.entropy[:2] == pytest.approx([math.log(4), -(0.7 * math.log(0.7) + 0.3 * math.log(0.1))])
    assert spread.max_ratio.tolist() == pytest.approx([1.0, 2.8, 1.0])
    assert spread.uniform.tolist() == [True, False, False]  # one frame: nothing to prefer, nothing to hide
    flat = PersonFrames("a", np.arange(10), np.zeros((10, 2)), np.zeros(2), 0, None, np.full(10, 0.1))
    assert decisive_frames(flat, 0, 4).tolist() == [0, 3, 6, 9]  # spread over the sweep, in order
    peaked = PersonFrames("b", np.arange(4), np.zeros((4, 2)), np.zeros(2), 0, None, weights[4:8][::-1].copy())
    assert decisive_frames(peaked, 0, 2).tolist()[0] == 3


@pytest.mark.slow
def test_collapsed_attention_is_said_to_be_uniform_by_evaluate_report_and_predict(
    attention_run,  # noqa: F811
    tmp_path,
    capsys,
):
    model = _collapsed(attention_run, tmp_path / "collapsed.pth")
    out = tmp_path / "eval"
    args = ["--run-dir", str(attention_run), "--model", str(model), "--out", str(out), "--heatmaps", "2"]
    assert evaluate.main([*args, "--split", "val", "--num-workers", "0", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    persons = _csv(out / "person_predictions.csv")
    assert persons and all(r["attention_uniform"] == "yes" for r in persons)
    assert all(float(r["attention_max_ratio"]) == pytest.approx(1.0, abs=1e-5) for r in persons)
    warning = re.compile(r"warning: (attention: )?attention is near uniform for (\d+) of \2 persons( called plaque)? ")
    assert warning.search(printed), printed  # every person (called plaque) of the split
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert any(warning.search(f"warning: {w}") for w in metrics["warnings"])
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count(UNIFORM_PERSON) == len(persons) and "Highest attention first" not in page
    for row in persons:  # the heat-map section: each person's attention over its frame order
        assert (out / "heatmaps" / "attention" / f"{row['person_id']}.png").is_file()

    folder = tmp_path / "input"
    root = Path(json.loads((attention_run / "data_report.json").read_text(encoding="utf-8"))["root_dir"])
    for row in persons:
        shutil.copytree(root / row["person_id"], folder / row["person_id"])
    pred = tmp_path / "pred.csv"
    args = ["--model", str(model), "--input", str(folder), "--out", str(pred), "--heatmaps", "2"]
    assert predict.main([*args, "--num-workers", "0"]) == 0
    printed = capsys.readouterr().out
    assert "person probability: gated-attention pooling of the frames' embeddings (--person-model attention)" in printed
    assert warning.search(printed) and "mean of frames" not in printed
    assert all(r["attention_uniform"] == "yes" for r in _csv(tmp_path / "pred_persons.csv"))
    montages = tmp_path / "pred_heatmaps"
    assert sorted(p.stem for p in montages.glob("*.png")) == sorted(r["person_id"] for r in persons)
    assert sorted(p.stem for p in (montages / "attention").glob("*.png")) == sorted(r["person_id"] for r in persons)


def test_an_untrained_attention_run_warns_that_its_attention_is_uniform(tmp_path):
    root, label = make_data(tmp_path / "frames", persons=12, frames=5, size=32)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    args += [*FAST, "--batch-size", "2", "--bag-size", "3", "--person-model", "attention", "--epochs", "1"]
    args += ["--lr", "1e-9", "--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    assert train_in_process(*args) == 0
    run_dir = only_run_dir(tmp_path / "out")
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    assert re.search(r"warning: attention: attention is near uniform for (\d+) of \1 persons", log), log[-2000:]


def test_predict_names_the_pooling_of_a_frame_model(trained_run, data_dir, tmp_path, capsys):
    args = ["--model", str(trained_run / "models" / "best_model.pth"), "--input", str(data_dir[0])]
    for aggregation in ("mean", "max"):
        out = ["--out", str(tmp_path / f"{aggregation}.csv"), "--person-aggregation", aggregation]
        assert predict.main([*args, *out, "--num-workers", "0"]) == 0
        assert f"person probability: {aggregation} of the frames' probabilities" in capsys.readouterr().out
