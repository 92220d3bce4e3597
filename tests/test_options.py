"""Training options users expect: schedules, early stopping, tracking, class weights, precision fallbacks."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from carotid.core.runtime import cpu_has_native_bf16
from carotid.data.frames.transforms import train_preset
from carotid.data.manifest import DataManifest
from carotid.model.person import PersonModel
from carotid.model.registry import build_model
from carotid.training.engine import EpochProgress, train_one_epoch
from carotid.training.epoch import person_class_weights
from carotid.training.optim import lr_factor, make_optimizer, make_scheduler
from tests.conftest import FAST, only_run_dir, reset_accelerate, tensorboard_scalars, train_in_process


def test_cosine_schedule_warms_up_then_decays_to_zero():
    factors = [
        lr_factor(s, kind="cosine", warmup_steps=10, total_steps=110, steps_per_epoch=10, step_epochs=1, gamma=0.1)
        for s in range(111)
    ]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert (
        factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5) and factors[110] == pytest.approx(0.0)
    )
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_step_schedule_and_scheduler_objects():
    assert (
        lr_factor(25, kind="step", warmup_steps=0, total_steps=100, steps_per_epoch=5, step_epochs=2, gamma=0.5)
        == 0.5**2
    )
    model = build_model("small_cnn", 2, 1)
    optimizer = make_optimizer(model, 1e-3, 1e-4)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-4, 0.0]  # no decay on biases and norms
    cfg = SimpleNamespace(scheduler="cosine", epochs=2, warmup_epochs=0.5, lr_step_epochs=1, lr_gamma=0.1)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=4, monitor="val_auc")
    lrs = []
    for _ in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(5e-4) and lrs[1] == pytest.approx(1e-3) and lrs[-1] < 1e-4
    plateau = make_scheduler(optimizer, SimpleNamespace(**{**vars(cfg), "scheduler": "plateau"}), 4, "val_loss")
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau) and plateau.mode == "min"


def test_class_weights_use_persons_not_frames():
    manifest = DataManifest(
        "root",
        ["a", "b"],
        {"p1": 0, "p2": 0, "p3": 0, "p4": 1},
        {"p1": ["x"], "p2": ["x"], "p3": ["x"], "p4": ["x"] * 100},
        splits={"train": ["p1", "p2", "p3", "p4"], "val": [], "test": []},
    )
    assert person_class_weights(manifest).tolist() == pytest.approx([4 / 6, 4 / 2])


def test_early_stopping_plateau_the_default_tensorboard_and_curves(data_dir, tmp_path, capsys):
    root, label = data_dir
    status = train_in_process(
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp_path),
        "--epochs",
        "6",
        "--no-test",
        "--scheduler",
        "plateau",
        "--early-stopping-patience",
        "1",
        "--monitor",
        "val_accuracy",
        *("--model", "small_cnn", "--image-size", "32", "--batch-size", "8", "--num-workers", "0"),  # no --report-to
        *("--person-model", "frames"),  # val_accuracy: a frame model's per-frame column
        "--lr",
        "1e-12",
    )
    assert status == 0
    run_dir = only_run_dir(tmp_path)
    lines = (run_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(lines) == 1 + 2, "val_accuracy cannot improve at lr 1e-12: stop after 1 + patience epochs"
    out = capsys.readouterr().out
    assert "early stopping" in out
    assert f"tracker tensorboard: event files in {run_dir / 'tensorboard'}" in out
    assert tensorboard_scalars(run_dir, "val_accuracy") == [1, 2], "the default tracker has each epoch once"
    assert (run_dir / "curves.png").stat().st_size > 1000


@pytest.mark.skipif(cpu_has_native_bf16(), reason="this CPU runs bf16 natively: there is no fallback to see")
def test_bf16_on_a_cpu_without_native_bf16_warns_and_trains_in_fp32(data_dir, tmp_path, capsys):
    root, label = data_dir
    assert (
        train_in_process(
            "--root-dir",
            str(root),
            "--label-excel",
            str(label),
            "--output-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--no-test",
            "--mixed-precision",
            "bf16",
            *FAST,
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "no native bf16" in out and "training in fp32 instead" in out and "mixed precision: no" in out


def bf16_batches(person_model: bool) -> list[tuple]:
    """Two steps of 8 frames: frames carrying their labels, or 4 persons of 2 frames each (a `bag` per frame)."""
    frames = torch.randint(0, 255, (8, 1, 32, 32), dtype=torch.uint8)
    status = torch.ones(8, dtype=torch.bool)
    if person_model:
        return [(frames, torch.tensor([0, 1, 0, 1]), torch.arange(8), status, torch.arange(4).repeat_interleave(2))] * 2
    return [(frames, torch.tensor([0, 1] * 4), torch.arange(8), status)] * 2


@pytest.mark.parametrize("person_model", [False, True], ids=["frames", "attention"])
def test_a_bf16_training_step_runs_under_accelerate_autocast(person_model):
    reset_accelerate()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    model = PersonModel("small_cnn", 2, 1, "attention") if person_model else build_model("small_cnn", 2, 1)
    optimizer = make_optimizer(model, 1e-3, 0.0)
    batches = bf16_batches(person_model)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = [p.detach().clone() for p in model.parameters()]
    end = train_one_epoch(
        model,
        batches,
        optimizer,
        accelerator,
        train_preset("ultrasound", 1),
        epoch=0,
        epochs=1,
        progress=EpochProgress(),
    )
    # seen counts the loss's items: 16 frames, or 8 persons
    assert (
        end.stop is None and math.isfinite(end.progress.loss_sum) and end.progress.seen == (8 if person_model else 16)
    )
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    reset_accelerate()


def test_the_flip_preset_never_resamples_a_frame():
    """--augment flip: a one-pixel finding stays one pixel, where it was or mirrored; the ultrasound preset's
    affine spreads it over its neighbours."""
    torch.manual_seed(0)
    frames = torch.zeros(64, 1, 32, 32, dtype=torch.uint8)
    frames[:, 0, 9, 5] = 200
    flip, ultrasound = train_preset("flip", 1), train_preset("ultrasound", 1)
    out = flip(frames)
    background = out.amin(dim=(1, 2, 3), keepdim=True)
    lit = (out > background + 1e-6).flatten(1)
    assert (lit.sum(dim=1) == 1).all()
    where = lit.float().argmax(dim=1)
    assert set(where.tolist()) <= {9 * 32 + 5, 9 * 32 + 26} and len(set(where.tolist())) == 2  # both sides drawn
    spread = ultrasound(frames)
    assert ((spread > spread.amin(dim=(1, 2, 3), keepdim=True) + 1e-6).flatten(1).sum(dim=1) > 1).any()
