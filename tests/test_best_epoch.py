"""The best epoch on a saturated validation metric: when several epochs reach val AUC 1.0 (a handful of
validation persons), the lowest val_loss among them is best_model.pth, for every model kind and in each fold;
the run says so and records it (model file, metrics.json, cv_metrics.json)."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carotid.evaluation.selection import next_best, no_best
from carotid.model.file import ModelFile
from tests.conftest import FAST, only_run_dir, run_module, train_in_process, write_xlsx
from tests.test_resume import launch, wait_for
from tests.test_resume import rows as resume_rows


def _separable_data(root: Path, persons: int = 16, frames: int = 3) -> list[str]:
    """Persons whose frames are bright (plaque) or dark (normal) under noise: any model separates the validation
    persons within an epoch or two, so val AUC sits at 1.0 while val_loss keeps falling."""
    rng = np.random.default_rng(0)
    rows = [["ID", "label"]]
    for i in range(persons):
        person, positive = f"S{i:02d}", i % 2 == 1
        (root / person).mkdir(parents=True)
        for k in range(frames):
            frame = (0.65 if positive else 0.35) + 0.08 * rng.standard_normal((32, 32))
            Image.fromarray((np.clip(frame, 0, 1) * 255).astype(np.uint8)).save(root / person / f"f{k}.png")
        rows.append([person, "plaque" if positive else "normal"])
    write_xlsx(root / "label.xlsx", rows)
    return ["--root-dir", str(root), "--label-excel", str(root / "label.xlsx")]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_choice(run_dir: Path, monitor: str) -> dict:
    """The run's best epoch is the lowest val_loss among its epochs at the best monitored value; returns the
    model file's record of it."""
    rows = _rows(run_dir / "metrics.csv")
    values = [float(r[monitor]) for r in rows]
    at_best = [r for r, v in zip(rows, values) if v == max(values)]
    assert max(values) == 1.0 and len(at_best) >= 2, [(r["epoch"], r[monitor], r["val_loss"]) for r in rows]
    lowest = min(at_best, key=lambda r: (float(r["val_loss"]), int(r["epoch"])))
    model_file = ModelFile.load(run_dir / "models" / "best_model.pth")
    assert model_file.epoch == int(lowest["epoch"]) != int(at_best[0]["epoch"])  # not the first epoch at 1.0
    record = model_file.best_epoch
    assert record["saturated"] and record["saturated_from"] == int(at_best[0]["epoch"])
    assert record["tied_epochs"] == [int(r["epoch"]) for r in at_best] and record["tie_break"] == "val_loss"
    message = (
        f"{monitor.replace('_', ' ').replace('auc', 'AUC')} saturated at 1.0 from epoch {at_best[0]['epoch']}; "
        f"best epoch chosen by val loss: epoch {lowest['epoch']}"
    )
    assert record["message"].startswith(message)
    assert f"warning: {message}" in (run_dir / "train.log").read_text(encoding="utf-8")
    assert ModelFile.load(run_dir / "models" / "final_model.pth").best_epoch is None
    return record


def test_ties_go_to_the_lower_val_loss_and_a_loss_monitor_keeps_the_earlier_epoch():
    best, chosen = {**no_best("val_auc")}, []
    for epoch, auc, loss in [(1, 0.8, 0.6), (2, 0.9, 0.5), (3, 0.9, 0.55), (4, 0.9, 0.4), (5, 0.85, 0.1)]:
        record, improved = next_best(best, {"epoch": epoch, "val_auc": auc, "val_loss": loss})
        best.update(record)
        chosen.append((improved, record["epoch"]))
    assert chosen == [(True, 1), (True, 2), (False, 2), (True, 4), (False, 4)]
    assert not best["saturated"] and best["tied_epochs"] == [2, 3, 4]
    assert best["message"] == (
        "val AUC tied at 0.9000 in epochs 2, 3, 4; best epoch chosen by val loss: epoch 4 "
        "(val loss 0.4000, the lowest of 3 epochs at 0.9000)"
    )
    best = {**no_best("val_loss")}
    for epoch in (1, 2):
        record, improved = next_best(best, {"epoch": epoch, "val_loss": 0.5})
        best.update(record)
    assert (best["epoch"], improved, best["tie_break"], best["message"]) == (1, False, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["frames", "attention", "mean"])
def test_a_saturated_val_auc_picks_the_lower_loss_epoch(tmp_path, kind):
    data = _separable_data(tmp_path / "data")
    batch = ["--batch-size", "8"] if kind == "frames" else ["--batch-size", "2", "--bag-size", "3"]
    args = [*data, *FAST, *batch, "--epochs", "6", "--person-model", kind, "--bootstrap", "0", "--augment", "none"]
    args += ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25", "--output-dir", str(tmp_path)]
    assert train_in_process(*args) == 0
    run_dir = only_run_dir(tmp_path)
    monitor = "val_auc" if kind == "frames" else "val_person_auc"
    record = _check_choice(run_dir, monitor)
    metrics = json.loads((run_dir / "eval_test_best" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["best_epoch"] == record and metrics["model_epoch"] == record["epoch"]
    assert f"validation: {record['message']}" in metrics["warnings"]


@pytest.mark.slow
def test_each_cross_validation_fold_picks_its_lower_loss_epoch(tmp_path):
    data = _separable_data(tmp_path / "data", persons=20)
    args = [*data, *FAST, "--epochs", "5", "--folds", "2", "--bootstrap", "0", "--augment", "none"]
    args += ["--train-ratio", "0.75", "--val-ratio", "0.25", "--test-ratio", "0", "--output-dir", str(tmp_path / "cv")]
    assert train_in_process(*args) == 0
    cv_dir = next((tmp_path / "cv").glob("cv_*"))
    per_fold = json.loads((cv_dir / "cv_metrics.json").read_text(encoding="utf-8"))["per_fold"]
    for fold in per_fold:
        record = _check_choice(cv_dir / f"fold_{fold['fold']}", "val_auc")
        assert fold["best_epoch"] == record and fold["model_epoch"] == record["epoch"]


@pytest.mark.slow
def test_a_resumed_run_keeps_its_tie_break_state_and_chooses_the_same_epoch(tmp_path):
    """Killed in epoch 4, after val AUC saturated: the resumed run ranks the later epochs against the
    checkpointed best (its val_loss and tied epochs), so it ends with the uninterrupted run's choice."""
    data = _separable_data(tmp_path / "data")
    common = [*data, *FAST, "--epochs", "6", "--bootstrap", "0", "--augment", "none", "--no-test"]
    common += ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25", "--checkpoint-every-steps", "2"]
    straight = run_module("carotid.train", *common, "--output-dir", str(tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = launch([*common, "--output-dir", str(tmp_path / "killed")], nproc=1)
    # 8 training persons x 3 frames, 8 frames a step: 3 steps an epoch; step 10 is in epoch 4.
    wait_for("train_*/checkpoints/checkpoint-00000010", tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run_dir = only_run_dir(tmp_path / "killed")
    resumed = run_module("carotid.train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = only_run_dir(tmp_path / "straight")
    assert resume_rows(run_dir) == resume_rows(reference)
    record = _check_choice(reference, "val_auc")
    assert ModelFile.load(run_dir / "models" / "best_model.pth").best_epoch == record
