"""Same data and --seed → the same split and, on the CPU, the same numbers; another seed → another split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from carotid.model.file import ModelFile
from tests.conftest import FAST, make_data, only_run_dir, train_in_process

TIMING = {"epoch_seconds", "images_per_second", "data_wait_fraction"}  # wall-clock columns: never reproducible


def run(root: Path, label: Path, output: Path, *extra: str) -> Path:
    assert (
        train_in_process(
            "--root-dir",
            str(root),
            "--label-excel",
            str(label),
            "--output-dir",
            str(output),
            *FAST,
            "--epochs",
            "2",
            "--no-test",
            *extra,
        )
        == 0
    )
    return only_run_dir(output)


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def test_same_seed_same_split_and_metrics_other_seed_other_split(tmp_path):
    root, label = make_data(tmp_path / "frames", persons=16, frames=2, size=32)
    first = run(root, label, tmp_path / "a", "--seed", "3")
    second = run(root, label, tmp_path / "b", "--seed", "3")
    assert (first / "splits.json").read_bytes() == (second / "splits.json").read_bytes()
    assert (first / "data_report.json").read_bytes() == (second / "data_report.json").read_bytes()
    rows = metric_rows(first)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows == metric_rows(second)
    ours, theirs = (ModelFile.load(r / "models" / "final_model.pth").state_dict for r in (first, second))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    other = run(root, label, tmp_path / "c", "--seed", "4", "--epochs", "1")
    splits, other_splits = (json.loads((r / "splits.json").read_text()) for r in (first, other))
    assert splits != other_splits
    assert sorted(sum(splits.values(), [])) == sorted(sum(other_splits.values(), [])), (
        "the same persons, split otherwise"
    )
