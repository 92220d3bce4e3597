"""Pieces of a training run that need no Trainer: its fresh model, its loaders, the model-file fields fixed for the run,
validation numbers, loss class weights, whether the monitored metric improved, the console's epoch line,
the finiteness check on (sharded) weights, the messages a stopped run ends with, and the test evaluation."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid.core.errors import StopTraining
from carotid.core.predict import predict_loader
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog, StopSignal
from carotid.data.bags import BagDataset, make_bag_loader, persons_per_step
from carotid.data.frames.transforms import NORMALIZATION
from carotid.data.loaders import make_loader
from carotid.data.manifest import DataManifest
from carotid.evaluation.metrics import epoch_metrics
from carotid.evaluation.person_inference import predict_persons
from carotid.evaluation.registry import EPOCH_LINE, PERSON_COLUMNS
from carotid.evaluation.selection import ValidationOutput
from carotid.model import canonical_arch
from carotid.model.person import PersonModel
from carotid.model.registry import build_model
from carotid.model.weights import load_initial_weights, load_pretrained
from carotid.report.outputs import evaluate_model
from carotid.training import checkpoints
from carotid.training.chance import training_counts
from carotid.training.config import TrainConfig
from carotid.training.engine import EpochProgress
from carotid.training.steps import drops_last


def build_run_model(cfg: TrainConfig, class_names: list[str]) -> tuple[torch.nn.Module, list[str]]:
    """(the run's fresh model, what --pretrained-weights loaded): a frame classifier or a PersonModel around the
    --model encoder, from --pretrained/--pretrained-weights, then --load-model."""
    common = {"image_size": cfg.image_size, "drop_path": cfg.drop_path, "global_pool": cfg.global_pool}
    if cfg.person_model == "frames":
        model = build_model(cfg.model, len(class_names), cfg.in_channels, cfg.pretrained, **common)
    else:
        stabilisers = {"attention_dropout": cfg.attention_dropout, "mask_top_frames": cfg.mask_top_frames}
        model = PersonModel(
            cfg.model,
            len(class_names),
            cfg.in_channels,
            cfg.person_model,
            pretrained=cfg.pretrained,
            **common,
            **stabilisers,
        )
    weight_lines = load_pretrained(model, cfg.model, cfg.pretrained_weights) if cfg.pretrained_weights else []
    if cfg.load_model:
        load_initial_weights(model, cfg.load_model, cfg.model, class_names, cfg.person_model)
    return model, weight_lines


def run_loaders(cfg: TrainConfig, datasets: dict, num_processes: int, pin_memory: bool) -> tuple:
    """(the training loader, the validation loader or None), before Accelerate prepares them.

    A person model trains on bags (carotid.data.bags), as many persons a step as bring about --batch-size frames
    (carotid.training.steps), and validates through predict_persons: no loader."""
    if cfg.person_model != "frames":
        bags = BagDataset(datasets["train"], cfg.bag_size)
        persons = persons_per_step(cfg.batch_size, cfg.bag_size, [len(f) for f in bags.bags.frames])
        loader = make_bag_loader(
            bags,
            persons,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            balanced=cfg.balanced_sampler,
            stratified=cfg.stratified_steps,
            drop_last=drops_last(len(bags), persons, num_processes),
            pin_memory=pin_memory,
        )
        return loader, None
    train_set = datasets["train"]
    drop_last = drops_last(len(train_set), cfg.batch_size, num_processes)  # fixed shapes, when the data allows
    train_loader = make_loader(
        train_set,
        cfg.batch_size,
        train=True,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        balanced=cfg.balanced_sampler,
        drop_last=drop_last,
        pin_memory=pin_memory,
    )
    if "val" not in datasets:
        return train_loader, None
    # No gradients to keep: evaluation batches can be twice the training batch in the same memory.
    val_loader = make_loader(
        datasets["val"],
        2 * cfg.batch_size,
        train=False,
        num_workers=cfg.num_workers,
        seed=cfg.seed,
        pin_memory=pin_memory,
    )
    return train_loader, val_loader


def model_contract(cfg: TrainConfig, class_names: list[str], monitor: str, positive_index: int) -> dict:
    """The ModelFile fields every model file of this run shares: how to rebuild and feed the model."""
    return {
        "arch": canonical_arch(cfg.model),
        "class_names": class_names,
        "in_channels": cfg.in_channels,
        "image_size": cfg.image_size,
        "normalization": NORMALIZATION[cfg.in_channels],
        "preprocessing": {"resize": cfg.resize, "crop": cfg.crop},
        "positive_index": positive_index,
        "aggregation": cfg.person_aggregation if cfg.person_model == "frames" else "mean",
        "person_model": cfg.person_model,
        "bag_size": cfg.bag_size if cfg.person_model != "frames" else None,
        "global_pool": cfg.global_pool,
        "monitor": monitor,
        "config": dataclasses.asdict(cfg),
    }


def validate(
    model, loader, accelerator, preset, dataset, positive_index, aggregation, channels_last
) -> tuple[dict, ValidationOutput, np.ndarray]:
    """val_* numbers of the metrics row, the validation frames' outputs for choosing the threshold, and every
    frame's decode status (carotid.data.folders.readable)."""
    # Loaded here, after the first epoch; its per-epoch numbers are numpy (no scikit-learn import, ~1.2 s).

    out = predict_loader(model, loader, accelerator, preset, channels_last=channels_last, desc="validate")
    ok = out["status"] > 0
    persons = np.asarray(dataset.person_ids)[out["index"][ok]]
    labels, probs = out["labels"][ok], out["probs"][ok]
    numbers = epoch_metrics(labels, probs, persons, positive_index, aggregation)
    row = {"val_loss": float(out["loss"][ok].mean())} | numbers
    status = np.zeros(len(dataset), dtype=np.uint8)
    status[out["index"]] = out["status"]
    return row, ValidationOutput(labels, out["logits"][ok], persons, probs), status


def eval_batch_size(cfg: TrainConfig) -> int:
    """Frames per evaluation batch: twice a training batch's frames (no gradients to keep), for every model."""
    return 2 * cfg.batch_size


def validate_persons(
    model, accelerator, preset, dataset, positive_index, batch_size, num_workers, channels_last
) -> tuple[dict, ValidationOutput, np.ndarray]:
    """validate() for a person model: every validation person once (predict_persons). Its image-level columns
    are empty: a person model gives no probability per frame."""
    out = predict_persons(
        model,
        dataset,
        accelerator,
        preset,
        batch_size=batch_size,
        num_workers=num_workers,
        channels_last=channels_last,
        desc="validate",
    )
    persons, labels, probs = out["person_ids"], out["labels"], out["probs"]
    numbers = epoch_metrics(labels, probs, persons, positive_index, "mean")
    numbers = {k: (v if k in PERSON_COLUMNS else None) for k, v in numbers.items()}
    row = {"val_loss": float(out["loss"].mean()) if len(labels) else None} | numbers
    return row, ValidationOutput(labels, out["logits"], persons, probs), out["status"].astype(np.uint8)


def person_class_weights(manifest: DataManifest) -> torch.Tensor:
    """Loss weights n_persons / (n_classes x n_persons_of_class) over the training split.

    Persons, not frames: a class whose persons happen to have many frames is not a common class."""
    counts = np.asarray(training_counts(manifest, person_model=True, balanced=False))
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def epoch_line(row: dict, monitor: str, improved: bool, ema: bool = False) -> str:
    """The console's line for an epoch; `ema`: the validation numbers are the EMA weights' (said before them)."""
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_accuracy']:.3f}"]
    for key in EPOCH_LINE:
        if row.get(key) is not None:
            said = ema and key.startswith("val_") and not any(s.startswith("EMA") for s in shown)
            shown.append(f"{'EMA weights: ' if said else ''}{key} {row[key]:.4f}")
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
    models = sorted(p.name for p in RunDir(run_dir).models.glob("*.pth"))
    kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
    kept += f"; models/ still holds {' and '.join(models)} from before" if models else ""
    return StopTraining(f"error: {what} — lower --lr, or use --clip-grad-norm / --mixed-precision bf16; {kept}", 1)


def preempted(
    stop: StopSignal, run_dir: Path, saved: Path, epoch: int, progress: EpochProgress, epochs: int | None = None
) -> StopTraining:
    where = f"in epoch {epoch + 1} after {progress.batches_done} batch(es)"
    then = ""
    if epochs is not None and epoch >= epochs:
        where, then = f"after the last epoch ({epoch})", " (writes final_model.pth, then evaluates the test split)"
    return StopTraining(
        f"stopped by {stop.name} {where}; checkpoint saved: {saved}\n"
        f"resume with: accelerate launch -m carotid.train --resume {run_dir}{then}",
        128 + (stop.signum or 15),
    )


def split_names(manifest: DataManifest) -> dict[str, str]:
    """Each split's name in words: a fold of a cross-validation calls its "test" split "held-out fold k"."""
    return {s: s for s in ("train", "val", "test")} | manifest.report.get("split_names", {})


def evaluate_test(accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, run_dir: Path, log: RunLog):
    """The test split evaluated with best_model.pth into RUN/eval_test_best; its metrics.json dict on the main
    process, None elsewhere."""

    context = {
        "run_dir": str(run_dir),
        "data": {"root_dir": cfg.root_dir, "label_excel": cfg.label_excel}
        | {key: getattr(cfg, key) for key in ("sheet", "header_row", "id_column", "label_column")},
        "persons": manifest.splits["test"],
    }
    return evaluate_model(
        accelerator,
        RunDir(run_dir).best_model,
        manifest.frames_of("test"),
        RunDir(run_dir).evaluation().path,
        split=split_names(manifest)["test"],
        batch_size=eval_batch_size(cfg),
        num_workers=cfg.num_workers,
        bootstrap=cfg.bootstrap,
        ci=cfg.ci,
        aggregation=cfg.person_aggregation,
        seed=cfg.seed,
        cache=cfg.cache,
        cache_dir=cfg.cache_dir,
        log=log,
        context=context,
        subgroups={column: manifest.person_columns[column] for column in cfg.subgroup_column},
        subgroup_min_persons=cfg.subgroup_min_persons,
    )
