"""The training CLI end to end: one process, two DDP processes on the CPU, --load-model, --demo."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import torch
import torch.nn.functional as F
import yaml

from carotid.data.frames.decode import load_frame
from carotid.model.registry import build_model
from tests.conftest import (
    FAST,
    load_model,
    make_data,
    only_run_dir,
    read_json,
    run_module,
    tensorboard_scalars,
    train_in_process,
)

REPO = Path(__file__).resolve().parents[1]
RUN_FILES = [
    "config.yaml",
    "splits.json",
    "data_report.json",
    "metrics.csv",
    "train.log",
    "curves.png",
    "models/best_model.pth",
    "models/final_model.pth",
    "eval_test_best/metrics.json",
    "eval_test_best/report.html",
    "report.html",
]
MODEL_KEYS = {
    "state_dict",
    "arch",
    "num_classes",
    "class_names",
    "in_channels",
    "image_size",
    "normalization",
    "epoch",
    "metrics",
    "threshold",
}


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_single_process_run_directory_is_complete(trained_run, data_dir):
    assert trained_run.name.startswith("train_") and len(trained_run.name) == len("train_YYYYMMDD_HHMMSS")
    for name in RUN_FILES:
        assert (trained_run / name).is_file(), name
    assert not (trained_run / "tensorboard").exists(), "--report-to none: no tracker files"
    assert list((trained_run / "checkpoints").glob("checkpoint-*"))
    splits = read_json(trained_run / "splits.json")
    persons = [p for s in ("train", "val", "test") for p in splits[s]]
    assert len(persons) == len(set(persons)) == 12, "every person in exactly one split"
    assert all(isinstance(p, str) for p in persons)
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["options"]["root_dir"] == str(data_dir[0].resolve())
    assert {"torch", "accelerate", "git_commit"} <= set(config["versions"]) and len(config["label_file_sha256"]) == 64
    rows = read_rows(trained_run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for column in (
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "val_auc",
        "lr",
        "epoch_seconds",
        "images_per_second",
        "data_wait_fraction",
    ):
        assert rows[0][column] != "", column
    report = read_json(trained_run / "data_report.json")
    assert report["splits"]["train"]["persons"] == {"normal": 3, "plaque": 3}
    for name in ("best_model.pth", "final_model.pth"):
        model = load_model(trained_run / "models" / name)
        assert MODEL_KEYS <= set(model) and model["class_names"] == ["normal", "plaque"]
        assert not any(k.startswith(("module.", "_orig_mod.")) for k in model["state_dict"])
    assert load_model(trained_run / "models" / "final_model.pth")["epoch"] == 2
    assert "epoch 2" in (trained_run / "train.log").read_text()


def val_loss_in_one_process(run_dir: Path, model_file: dict) -> float:
    """The validation loss of a model file, computed here in plain torch from the image files."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())["options"]
    root = Path(config["root_dir"])
    model = build_model(model_file["arch"], model_file["num_classes"], model_file["in_channels"])
    model.load_state_dict(model_file["state_dict"])
    model.eval()
    labels = {"normal": 0, "plaque": 1}
    persons = read_json(run_dir / "splits.json")["val"]
    sheet = {
        str(p): c
        for p, c in openpyxl.load_workbook(config["label_excel"]).active.iter_rows(min_row=2, values_only=True)
    }
    mean = torch.tensor(model_file["normalization"]["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model_file["normalization"]["std"]).view(1, -1, 1, 1)
    losses = []
    for person in persons:
        frames = sorted(p for p in (root / person).rglob("*.png"))
        x = torch.from_numpy(np.stack([load_frame(str(f), model_file["image_size"], 1) for f in frames])).float() / 255
        with torch.no_grad():
            logits = model((x - mean) / std)
        losses += F.cross_entropy(logits, torch.full((len(frames),), labels[sheet[person]]), reduction="none").tolist()
    return float(np.mean(losses))


@pytest.mark.slow
def test_two_process_ddp_run_and_its_model_reload_in_one_process(tmp_path, data_dir):
    root, label = data_dir
    result = run_module(
        "carotid.train",
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp_path),
        "--epochs",
        "1",
        "--train-ratio",
        "0.5",
        "--val-ratio",
        "0.25",
        "--test-ratio",
        "0.25",
        "--balanced-sampler",
        "--class-weights",
        "auto",
        *FAST,
        "--report-to",  # a tracker under DDP: closing it must leave the process group to the test evaluation
        "tensorboard",
        nproc=2,
        extra_launch=["--config_file", str(REPO / "configs/accelerate/cpu_ddp.yaml")],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout and "= 16 frames per optimizer step" in result.stdout
    run_dir = only_run_dir(tmp_path)
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert tensorboard_scalars(run_dir, "val_loss") == [1], "the main process alone writes the tracker's records"
    final = load_model(run_dir / "models" / "final_model.pth")
    logged = float(read_rows(run_dir / "metrics.csv")[0]["val_loss"])
    # The DDP-trained weights, loaded in one process, give the validation loss the 2-process run logged.
    assert val_loss_in_one_process(run_dir, final) == pytest.approx(logged, rel=1e-4)


def test_console_scripts_are_installed():
    from importlib.metadata import entry_points

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    # Every command module (carotid/<name>.py with a main) has its console script, named carotid-<name>.
    commands = {p.stem for p in (REPO / "carotid").glob("*.py") if "\ndef main(" in p.read_text(encoding="utf-8")}
    assert declared == {f"carotid-{name}": f"carotid.{name}:main" for name in commands}
    scripts = {e.name: e for e in entry_points(group="console_scripts") if e.name.startswith("carotid-")}
    assert set(scripts) == set(declared), "reinstall (pip install -e .): the installed console scripts are stale"
    assert all(callable(e.load()) for e in scripts.values())
    path = shutil.which("carotid-train") or str(Path(sys.executable).parent / "carotid-train")
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--max-imgs-per-person" in result.stdout


def test_load_model_starts_a_new_run_from_those_weights(trained_run, data_dir, tmp_path):
    root, label = data_dir
    best = trained_run / "models" / "best_model.pth"
    status = train_in_process(
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp_path),
        "--load-model",
        str(best),
        "--epochs",
        "1",
        "--no-test",
        "--augment",
        "none",
        *FAST[:-4],
        "--lr",
        "1e-12",
    )
    assert status == 0
    run_dir = only_run_dir(tmp_path)
    assert run_dir != trained_run
    start, end = load_model(best)["state_dict"], load_model(run_dir / "models" / "final_model.pth")["state_dict"]
    assert all(torch.allclose(start[k].float(), end[k].float(), atol=1e-6) for k in start)


def test_load_model_mismatches_say_what_differs(trained_run, data_dir, tmp_path, capsys):
    root, label = data_dir
    best = str(trained_run / "models" / "best_model.pth")
    args = [
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp_path / "out"),
        "--load-model",
        best,
    ]
    # A frame model's file under the default person model (attention): the error names both and the fix.
    assert train_in_process(*args, "--model", "small_cnn") == 2
    assert "is a --person-model frames model, this run is attention — pass --person-model frames" in (
        capsys.readouterr().err
    )
    args += ["--person-model", "frames"]
    assert train_in_process(*args, "--model", "resnet18") == 2
    assert "is a 'small_cnn' model, this run is 'resnet18'" in capsys.readouterr().err
    three = make_data(tmp_path / "three", persons=6, frames=1, size=32)[0]
    book = openpyxl.load_workbook(three / "label.xlsx")
    for i, row in enumerate(book.active.iter_rows(min_row=2)):
        row[1].value = ["a", "b", "c"][i % 3]
    book.save(three / "label.xlsx")
    assert (
        train_in_process(
            "--root-dir",
            str(three),
            "--label-excel",
            str(three / "label.xlsx"),
            "--output-dir",
            str(tmp_path / "out"),
            "--load-model",
            best,
            "--model",
            "small_cnn",
            "--person-model",
            "frames",
        )
        == 2
    )
    assert "has classes ['normal', 'plaque'], this run's labels are ['a', 'b', 'c']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "no run directory is left behind"


@pytest.mark.slow
def test_demo_flag_makes_data_and_trains(tmp_path):
    assert train_in_process("--demo", "--output-dir", str(tmp_path), "--epochs", "1", "--no-test", *FAST) == 0
    assert (tmp_path / "demo_data" / "label.xlsx").is_file()
    run_dir = only_run_dir(tmp_path)
    assert json.loads((run_dir / "splits.json").read_text())["train"]
    assert (run_dir / "models" / "final_model.pth").is_file()
