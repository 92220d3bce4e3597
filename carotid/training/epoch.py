"""Pieces of a training epoch that need no Trainer: validation numbers, loss class weights, whether the
monitored metric improved, the console's epoch line, the finiteness check on (sharded) weights, and the
messages a stopped run ends with."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid.data.manifest import DataManifest
from carotid.errors import StopTraining
from carotid.evaluation.registry import EPOCH_LINE, lower_is_better
from carotid.evaluation.selection import ValidationOutput
from carotid.training import checkpoints
from carotid.training.engine import EpochProgress, predict_loader
from carotid.training.runtime import StopSignal


def validate(
    model, loader, accelerator, preset, dataset, positive_index, aggregation, channels_last
) -> tuple[dict, ValidationOutput, np.ndarray]:
    """val_* numbers of the metrics row, the validation frames' outputs for choosing the threshold, and every
    frame's decode status (carotid.data.check)."""
    # Loaded here, after the first epoch; its per-epoch numbers are numpy (no scikit-learn import, ~1.2 s).
    from carotid.evaluation.metrics import epoch_metrics

    out = predict_loader(model, loader, accelerator, preset, channels_last=channels_last, desc="validate")
    ok = out["status"] > 0
    persons = np.asarray(dataset.person_ids)[out["index"][ok]]
    labels, probs = out["labels"][ok], out["probs"][ok]
    numbers = epoch_metrics(labels, probs, persons, positive_index, aggregation)
    row = {"val_loss": float(out["loss"][ok].mean())} | numbers
    status = np.zeros(len(dataset), dtype=np.uint8)
    status[out["index"]] = out["status"]
    return row, ValidationOutput(labels, out["logits"][ok], persons, probs), status


def person_class_weights(manifest: DataManifest) -> torch.Tensor:
    """Loss weights n_persons / (n_classes x n_persons_of_class) over the training split.

    Persons, not frames: a class whose persons happen to have many frames is not a common class."""
    counts = np.bincount(
        [manifest.person_labels[p] for p in manifest.splits["train"]], minlength=len(manifest.class_names)
    )
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def better(value: float | None, best: float | None, monitor: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if lower_is_better(monitor) else value > best


def epoch_line(row: dict, monitor: str, improved: bool) -> str:
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_accuracy']:.3f}"]
    for key in EPOCH_LINE:
        if row.get(key) is not None:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['images_per_second']:.0f} img/s, data wait {row['data_wait_fraction']:.0%}")
    return " | ".join(shown) + (f"  * best {monitor}" if improved else "")


def weights_finite(model, accelerator: Accelerator) -> bool:
    """Collective: whether every parameter on every rank is finite.

    Each rank checks only what it holds (the sum over ranks covers every weight once or more): a DTensor's
    local shard under FSDP2 (a check of the DTensor itself would be a collective per parameter), the
    partition under ZeRO-3 (`ds_tensor`; the parameter itself is an empty placeholder there)."""
    with torch.no_grad():
        flags = [torch.isfinite(t).all() for t in map(local_part, model.parameters()) if t.numel()]
        bad = (~torch.stack(flags).all()).float().reshape(1) if flags else torch.zeros(1)
    return accelerator.reduce(bad.to(accelerator.device), reduction="sum").item() == 0


def local_part(param: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this rank holds: the whole of it under DDP and ZeRO-1/2."""
    if hasattr(param, "ds_tensor"):  # ZeRO-3
        return param.ds_tensor
    # A DTensor's module is loaded wherever one exists (FSDP2); importing it otherwise costs ~1 s of start-up.
    for name in ("torch.distributed.tensor", "torch.distributed._tensor"):  # the latter: torch < 2.4
        module = sys.modules.get(name)
        if module is not None and isinstance(param, module.DTensor):  # FSDP2
            return param.to_local()
    return param


def diverged(run_dir: Path, what: str) -> StopTraining:
    """Stop on NaN/inf: nothing diverged was saved, so the checkpoints and model files on disk are the good ones."""
    last = checkpoints.list_checkpoints(run_dir)
    models = sorted(p.name for p in (run_dir / "models").glob("*.pth"))
    kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
    kept += f"; models/ still holds {' and '.join(models)} from before" if models else ""
    return StopTraining(f"error: {what} — lower --lr, or use --clip-grad-norm / --mixed-precision bf16; {kept}", 1)


def preempted(stop: StopSignal, run_dir: Path, saved: Path, epoch: int, progress: EpochProgress) -> StopTraining:
    return StopTraining(
        f"stopped by {stop.name} in epoch {epoch + 1} after {progress.batches_done} batch(es); "
        f"checkpoint saved: {saved}\nresume with: accelerate launch -m carotid.train --resume {run_dir}",
        128 + (stop.signum or 15),
    )
