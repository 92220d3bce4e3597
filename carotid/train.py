"""Train a carotid-ultrasound classifier: `accelerate launch -m carotid.train --root-dir DATA --label-excel label.xlsx`.

Reads top to bottom: options → data (read once on the main process) → model → run directory →
Accelerate objects → epochs (train, validate, checkpoint, best model) → final model → test evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import set_seed

from carotid import checkpoint as ckpt
from carotid.config import TrainConfig, config_to_dict, parse_train_args
from carotid.data import SPLITS, DataManifest, EpochSeeds, collect_persons, frame_dataset, make_loader, split_persons
from carotid.engine import EpochProgress, predict_loader, reduce_progress, train_one_epoch
from carotid.errors import StopTraining, UserError, run_cli
from carotid.labels import read_labels
from carotid.metrics import aggregate_persons, epoch_metrics, youden_threshold
from carotid.models import build_model, load_matching, read_state_dict
from carotid.optim import make_optimizer, make_scheduler
from carotid.plots import plot_curves
from carotid.runtime import RunLog, StopSignal, build_accelerator, on_main
from carotid.transforms import NORMALIZATION, eval_preset, train_preset

# Options a resumed run may change; every other option is fixed by the run's config.yaml.
RESUMABLE_CHANGES = {"resume", "epochs", "num_workers", "report_to", "keep_checkpoints", "checkpoint_every_steps",
                     "early_stopping_patience", "test", "bootstrap", "person_aggregation", "cache", "cache_dir",
                     "dist_timeout_minutes", "root_dir", "label_excel", "output_dir"}
METRIC_COLUMNS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "val_auc",
                  "val_person_accuracy", "val_person_auc", "lr", "epoch_seconds", "images_per_second",
                  "data_wait_fraction", "unreadable_frames"]


# ---------------------------------------------------------------------------------------------
# Options and data
# ---------------------------------------------------------------------------------------------


def merge_resume(cfg: TrainConfig, given: set[str], run_dir: Path) -> TrainConfig:
    """The run's saved options, with the few that may change taken from the command line."""
    saved = ckpt.read_run_config(run_dir)["options"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in fields}
    for name in sorted(given):
        ours = getattr(cfg, name)
        if name in RESUMABLE_CHANGES:
            merged[name] = ours
        elif merged.get(name) != ours:
            flag = name.replace("_", "-")
            raise UserError(f"--{flag} {ours} differs from the resumed run's {merged.get(name)}",
                            f"drop --{flag}; a resumed run keeps its options (start a new run with --load-model to change it)")
    merged["resume"] = cfg.resume
    return TrainConfig(**merged)


def prepare_data(cfg: TrainConfig, resume_run: Path | None) -> tuple[DataManifest, str, str]:
    """Labels, frames and the person-level split (or the resumed run's split). Main process only."""
    root_dir, label_excel = cfg.root_dir, cfg.label_excel
    if cfg.demo and not root_dir:
        from carotid.demo import make_demo_data

        root_dir = str(Path(cfg.output_dir) / "demo_data")
        label_excel = str(Path(root_dir) / "label.xlsx")
        if not Path(label_excel).exists():
            make_demo_data(root_dir, seed=cfg.seed)
    if not root_dir or not label_excel:
        raise UserError("no data given", "pass --root-dir DATA --label-excel label.xlsx (or --demo)")
    table = read_labels(label_excel, cfg.sheet, cfg.id_column, cfg.label_column)
    if cfg.positive_class is not None and cfg.positive_class not in table.class_names:
        raise UserError(f"--positive-class '{cfg.positive_class}' is not a class; the classes are {table.class_names}",
                        "pass one of them")
    if resume_run is not None:
        splits = ckpt.read_splits(resume_run)
        manifest = collect_persons(root_dir, table, cfg.max_imgs_per_person, persons=[p for s in SPLITS for p in splits[s]])
        manifest.splits, notes = splits, []
    else:
        manifest = collect_persons(root_dir, table, cfg.max_imgs_per_person)
        manifest.splits, notes = split_persons(manifest.person_labels, cfg.train_ratio, cfg.val_ratio, cfg.test_ratio, cfg.seed)
    manifest.report["split_notes"] = notes
    manifest.report["splits"] = {s: manifest.counts(s) for s in SPLITS}
    return manifest, str(Path(root_dir).resolve()), str(Path(label_excel).resolve())


def create_run_dir(cfg: TrainConfig, manifest: DataManifest) -> Path:
    """Write config.yaml, splits.json and data_report.json into a staging folder, then publish it."""
    staging = ckpt.stage_run_dir(cfg.output_dir)
    try:
        extra = {"class_names": manifest.class_names, "versions": ckpt.software_versions(),
                 "label_file_sha256": ckpt.file_sha256(cfg.label_excel), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        ckpt.write_run_config(staging / "config.yaml", config_to_dict(cfg), extra)
        ckpt.atomic_write_json(staging / "splits.json", manifest.splits)
        ckpt.atomic_write_json(staging / "data_report.json", manifest.report)
        (staging / "models").mkdir()
        return ckpt.publish_run_dir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def describe(accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, log: RunLog) -> None:
    per_device, accumulation = cfg.batch_size, accelerator.gradient_accumulation_steps
    effective = per_device * accelerator.num_processes * accumulation
    log(f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}), device: {accelerator.device}, "
        f"mixed precision: {accelerator.mixed_precision}")
    log(f"batch: {per_device} per device x {accelerator.num_processes} processes x {accumulation} "
        f"accumulation steps = {effective} effective")
    for split in SPLITS:
        counts = manifest.counts(split)
        parts = ", ".join(f"{c}: {counts['persons'][c]} persons / {counts['images'][c]} images" for c in manifest.class_names)
        log(f"{split:>5}: {len(manifest.splits[split])} persons, {sum(counts['images'].values())} images ({parts})")
    for note in manifest.report["label_file"]["notes"] + manifest.report["split_notes"]:
        log(f"note: {note}")
    for key in ("persons_without_folder", "folders_without_label", "persons_without_images"):
        if manifest.report[key]["count"]:
            log(f"note: {manifest.report[key]['count']} {key.replace('_', ' ')} left out, e.g. {manifest.report[key]['first']}")
    if manifest.report["unreadable_images"]:
        log(f"warning: {len(manifest.report['unreadable_images'])} unreadable image(s) skipped (listed in data_report.json)")


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


def init_from_model_file(model: torch.nn.Module, path: str, cfg: TrainConfig, class_names: list[str]) -> None:
    """--load-model: a carotid model file (checked against this run) or a bare state dict."""
    state = read_state_dict(path, "--load-model file")
    try:
        meta = ckpt.load_model_file(path)
    except UserError:
        meta = None  # a bare state dict: shapes are checked below
    if meta is not None:
        if meta["arch"] != cfg.model:
            raise UserError(f"--load-model {path} is a '{meta['arch']}' model, this run is '{cfg.model}'", f"pass --model {meta['arch']}")
        if list(meta["class_names"]) != list(class_names):
            raise UserError(f"--load-model {path} has classes {meta['class_names']}, this run's labels are {class_names}",
                            "use a model trained on the same classes")
    load_matching(model, state, f"--load-model {path}", cfg.model)


def save_model(accelerator: Accelerator, model, path: Path, meta: dict) -> None:
    """Collective: consolidates the weights on every rank (needed under ZeRO-3/FSDP), main writes."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        from carotid.models import strip_prefixes

        ckpt.save_model_file(path, strip_prefixes(state), **meta)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def validate(model, loader, accelerator, preset, dataset, class_names, positive_index, channels_last) -> tuple[dict, tuple]:
    out = predict_loader(model, loader, accelerator, preset, channels_last=channels_last, desc="validate")
    ok = out["readable"].astype(bool)
    persons = np.asarray(dataset.person_ids)[out["index"][ok]]
    labels, probs = out["labels"][ok], out["probs"][ok]
    numbers = epoch_metrics(labels, probs, persons, class_names, positive_index)
    row = {"val_loss": float(out["loss"][ok].mean())} | {f"val_{k}": v for k, v in numbers.items()}
    return row, (labels, probs, persons)


def person_class_weights(manifest: DataManifest) -> torch.Tensor:
    """Loss weights n_persons / (n_classes x n_persons_of_class) over the training split.

    Persons, not frames: a class whose persons happen to have many frames is not a common class."""
    counts = np.bincount([manifest.person_labels[p] for p in manifest.splits["train"]], minlength=len(manifest.class_names))
    return torch.tensor(counts.sum() / (len(counts) * np.maximum(counts, 1)), dtype=torch.float32)


def better(value: float | None, best: float | None, monitor: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    if best is None:
        return True
    return value < best if monitor.endswith("loss") else value > best


def choose_monitor(cfg: TrainConfig, manifest: DataManifest, log: RunLog) -> str:
    if not manifest.splits["val"]:
        if cfg.monitor not in ("auto", "train_loss"):
            log(f"warning: no validation split; --monitor {cfg.monitor} replaced by train_loss")
        return "train_loss"
    monitor = cfg.monitor if cfg.monitor != "auto" else ("val_auc" if len(manifest.class_names) == 2 else "val_accuracy")
    val_classes = {manifest.person_labels[p] for p in manifest.splits["val"]}
    if "auc" in monitor and len(val_classes) < 2:
        log(f"warning: the validation split has one class, so {monitor} is undefined; monitoring val_loss instead")
        return "val_loss"
    return monitor


def train(cfg: TrainConfig, given: set[str] | frozenset = frozenset()) -> Path:
    """Run (or resume) one training run; returns its run directory."""
    resume_run = resume_from = None
    if cfg.resume:
        resume_run, resume_from = ckpt.resolve_resume(cfg.resume)
        cfg = merge_resume(cfg, set(given), resume_run)
    else:
        ckpt.check_writable(cfg.output_dir)
    accelerator, precision_note = build_accelerator(cfg.mixed_precision, cfg.gradient_accumulation_steps, cfg.report_to,
                                                    cfg.dist_timeout_minutes, cfg.output_dir)
    set_seed(cfg.seed)
    manifest, root_dir, label_excel = on_main(accelerator, lambda: prepare_data(cfg, resume_run))
    cfg = dataclasses.replace(cfg, root_dir=root_dir, label_excel=label_excel)
    class_names = manifest.class_names
    positive_index = class_names.index(cfg.positive_class) if cfg.positive_class else len(class_names) - 1
    model = build_model(cfg.model, len(class_names), cfg.in_channels, cfg.pretrained, cfg.pretrained_weights)
    if cfg.load_model:
        init_from_model_file(model, cfg.load_model, cfg, class_names)

    # Everything the user gave is valid: from here on there is a run directory.
    run_dir = resume_run or on_main(accelerator, lambda: create_run_dir(cfg, manifest))
    log = RunLog(accelerator, run_dir / "train.log")
    log(f"{'resuming' if resume_run else 'run directory'}: {run_dir}")
    if precision_note:
        log(precision_note)
    describe(accelerator, cfg, manifest, log)
    monitor = choose_monitor(cfg, manifest, log)
    with StopSignal() as stop:
        return _fit(accelerator, cfg, manifest, model, run_dir, log, monitor, positive_index, resume_from, stop)


def _fit(accelerator, cfg, manifest, model, run_dir, log, monitor, positive_index, resume_from, stop: StopSignal) -> Path:
    class_names = manifest.class_names
    on_cuda = accelerator.device.type == "cuda"
    datasets = {s: frame_dataset(manifest.items(s), cfg.image_size, cfg.in_channels, cache=cfg.cache,
                                 cache_dir=cfg.cache_dir, accelerator=accelerator)
                for s in ("train", "val") if manifest.splits[s]}
    train_set = datasets["train"]
    drop_last = len(train_set) >= cfg.batch_size * accelerator.num_processes  # fixed shapes, when the data allows
    train_loader = make_loader(train_set, cfg.batch_size, train=True, num_workers=cfg.num_workers, seed=cfg.seed,
                               balanced=cfg.balanced_sampler, drop_last=drop_last, pin_memory=on_cuda)
    seeds = EpochSeeds(train_loader, cfg.seed)
    val_loader = (make_loader(datasets["val"], cfg.batch_size, train=False, num_workers=cfg.num_workers, seed=cfg.seed,
                              pin_memory=on_cuda) if "val" in datasets else None)
    if on_cuda:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    if val_loader is not None:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / accelerator.gradient_accumulation_steps)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, monitor)
    accelerator.register_for_checkpointing(scheduler)
    norm = NORMALIZATION[cfg.in_channels]
    augment = train_preset(cfg.augment, cfg.in_channels).to(accelerator.device)
    evaluate_preset = eval_preset(norm["mean"], norm["std"]).to(accelerator.device)
    class_weights = None
    if cfg.class_weights == "auto":
        class_weights = person_class_weights(manifest).to(accelerator.device)
        log(f"class weights (inverse person frequency): {dict(zip(class_names, class_weights.tolist()))}")

    state = {"epoch": 0, "global_step": 0, "rows": [], "best": {"monitor": monitor, "value": None, "epoch": None,
                                                                "threshold": 0.5, "bad_epochs": 0}, "stopped_early": False}
    progress = EpochProgress()
    if resume_from is not None:
        state, progress = _restore(accelerator, resume_from, run_dir, log)
    ckpt_meta = {"arch": cfg.model, "num_classes": len(class_names), "class_names": class_names,
                 "in_channels": cfg.in_channels, "image_size": cfg.image_size, "normalization": norm,
                 "positive_index": positive_index, "person_aggregation": cfg.person_aggregation,
                 "config": config_to_dict(cfg)}
    if resume_from is not None:
        _repair_best_model(accelerator, model, run_dir, state, ckpt_meta, log)
    if accelerator.is_main_process:
        ckpt.write_csv(run_dir / "metrics.csv", state["rows"], METRIC_COLUMNS)
    if cfg.report_to:
        accelerator.project_configuration.logging_dir = str(run_dir)
        accelerator.init_trackers("tensorboard", config={k: v for k, v in config_to_dict(cfg).items()
                                                         if isinstance(v, (int, float, str, bool))})

    def on_optimizer_step() -> bool:
        state["global_step"] += 1
        if cfg.scheduler != "plateau":
            scheduler.step()
        return bool(cfg.checkpoint_every_steps) and state["global_step"] % cfg.checkpoint_every_steps == 0

    def save_state(epoch_progress: EpochProgress, epoch_end: bool) -> Path:
        payload = dict(state, epoch_progress=epoch_progress.to_dict(), world_size=accelerator.num_processes)
        return ckpt.save_training_state(accelerator, run_dir, payload, global_step=state["global_step"],
                                        epoch_end=epoch_end, keep=cfg.keep_checkpoints)

    best = state["best"]
    while state["epoch"] < cfg.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        if stop.requested:
            raise _preempted(stop, run_dir, save_state(progress, epoch_end=progress.batches_done == 0), epoch, progress)
        seeds.set_epoch(epoch)
        loader = skip_first_batches(train_loader, progress.batches_done) if progress.batches_done else train_loader
        end = train_one_epoch(model, loader, optimizer, accelerator, augment, epoch=epoch, epochs=cfg.epochs, progress=progress,
                              class_weights=class_weights, label_smoothing=cfg.label_smoothing, clip_grad_norm=cfg.clip_grad_norm,
                              on_optimizer_step=on_optimizer_step, save_checkpoint=lambda p: save_state(p, False),
                              stop_requested=lambda: stop.requested, channels_last=on_cuda)
        if end.stop == "nonfinite":
            last = ckpt.list_checkpoints(run_dir)
            raise StopTraining(f"error: the training loss became non-finite (NaN/inf) in epoch {epoch + 1} at batch "
                               f"{end.nonfinite_step if end.nonfinite_step is not None else '?'} — lower --lr, or use "
                               f"--clip-grad-norm / --mixed-precision bf16; the last good checkpoint is "
                               f"{last[-1] if last else 'none'} and models/ holds the last good model files", 1)
        if end.stop == "signal":
            raise _preempted(stop, run_dir, save_state(progress, epoch_end=False), epoch, progress)

        row = {"epoch": epoch + 1} | reduce_progress(accelerator, progress) | {"lr": optimizer.param_groups[0]["lr"]}
        val_out = None
        if val_loader is not None:
            val_row, val_out = validate(model, val_loader, accelerator, evaluate_preset, datasets["val"], class_names,
                                        positive_index, on_cuda)
            row |= val_row
        improved = better(row.get(monitor), best["value"], monitor)
        if improved:
            best.update(value=row[monitor], epoch=epoch + 1, bad_epochs=0, threshold=_threshold(val_out, cfg, positive_index))
        else:
            best["bad_epochs"] += 1
        if cfg.scheduler == "plateau" and row.get(monitor) is not None:
            scheduler.step(row[monitor])
        state["rows"].append(row)
        state["epoch"] = epoch + 1
        state["stopped_early"] = bool(cfg.early_stopping_patience) and best["bad_epochs"] >= cfg.early_stopping_patience
        progress = EpochProgress()
        save_state(progress, epoch_end=True)  # before best_model.pth: see _repair_best_model
        if improved:
            save_model(accelerator, model, run_dir / "models" / "best_model.pth",
                       ckpt_meta | {"epoch": epoch + 1, "metrics": row, "threshold": best["threshold"], "monitor": monitor})
        if accelerator.is_main_process:
            ckpt.write_csv(run_dir / "metrics.csv", state["rows"], METRIC_COLUMNS)
        log(_epoch_line(row, monitor, improved))
        accelerator.log({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}, step=epoch + 1)
        if state["stopped_early"]:
            log(f"early stopping: {monitor} has not improved for {best['bad_epochs']} epoch(s)")

    last_row = state["rows"][-1] if state["rows"] else {}
    save_model(accelerator, model, run_dir / "models" / "final_model.pth",
               ckpt_meta | {"epoch": state["epoch"], "metrics": last_row, "threshold": best["threshold"], "monitor": monitor})
    if accelerator.is_main_process and state["rows"]:
        plot_curves(state["rows"], monitor, run_dir / "curves.png")
    log(f"best {monitor}: {best['value']} (epoch {best['epoch']}); models in {run_dir / 'models'}")
    if cfg.report_to:
        accelerator.end_training()
    if cfg.test and manifest.splits["test"]:
        from carotid.evaluate import evaluate_model

        evaluate_model(accelerator, run_dir / "models" / "best_model.pth", manifest.items("test"), run_dir / "eval_test_best",
                       split="test", batch_size=cfg.batch_size, num_workers=cfg.num_workers, bootstrap=cfg.bootstrap,
                       aggregation=cfg.person_aggregation, seed=cfg.seed, cache=cfg.cache, cache_dir=cfg.cache_dir, log=log)
    return run_dir


def _threshold(val_out, cfg: TrainConfig, positive_index: int) -> float:
    """Binary operating point: Youden's J on the validation persons (0.5 when it cannot be chosen)."""
    if val_out is None or val_out[1].shape[1] != 2:
        return 0.5
    labels, probs, persons = val_out
    ids, person_probs = aggregate_persons(persons, probs, cfg.person_aggregation, positive_index)
    first = {p: labels[i] for i, p in reversed(list(enumerate(persons)))}
    threshold = youden_threshold(np.array([first[p] for p in ids]), person_probs, positive_index)
    return 0.5 if threshold is None else threshold


def _epoch_line(row: dict, monitor: str, improved: bool) -> str:
    shown = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}", f"train_acc {row['train_accuracy']:.3f}"]
    for key in ("val_loss", "val_accuracy", "val_auc", "val_person_auc"):
        if row.get(key) is not None:
            shown.append(f"{key} {row[key]:.4f}")
    shown.append(f"{row['images_per_second']:.0f} img/s, data wait {row['data_wait_fraction']:.0%}")
    return " | ".join(shown) + (f"  * best {monitor}" if improved else "")


def _preempted(stop: StopSignal, run_dir: Path, saved: Path, epoch: int, progress: EpochProgress) -> StopTraining:
    return StopTraining(f"stopped by {stop.name} in epoch {epoch + 1} after {progress.batches_done} batch(es); "
                        f"checkpoint saved: {saved}\nresume with: accelerate launch -m carotid.train --resume {run_dir}",
                        128 + (stop.signum or 15))


def _restore(accelerator: Accelerator, checkpoint: Path, run_dir: Path, log: RunLog) -> tuple[dict, EpochProgress]:
    progress = ckpt.read_progress(checkpoint)
    if progress["world_size"] != accelerator.num_processes:
        raise UserError(f"{checkpoint} was written by {progress['world_size']} process(es), this launch has "
                        f"{accelerator.num_processes}", f"resume with --num_processes {progress['world_size']}, or start a new "
                        f"run from {run_dir / 'models' / 'final_model.pth'} with --load-model")
    accelerator.load_state(str(checkpoint))
    state = {k: progress[k] for k in ("epoch", "global_step", "rows", "best", "stopped_early")}
    epoch_progress = EpochProgress(**progress["epoch_progress"])
    log(f"resumed from {checkpoint.name}: epoch {state['epoch'] + 1}, batch {epoch_progress.batches_done}, "
        f"optimizer step {state['global_step']}")
    return state, epoch_progress


def _repair_best_model(accelerator, model, run_dir: Path, state: dict, meta: dict, log: RunLog) -> None:
    """A kill between an epoch-end checkpoint and writing best_model.pth leaves the file one best behind;
    the checkpoint holds exactly those weights, so write it again."""
    best, path = state["best"], run_dir / "models" / "best_model.pth"
    if best["epoch"] is None or best["epoch"] != state["epoch"] or not state["rows"]:
        return
    on_disk = ckpt.load_model_file(path)["epoch"] if path.exists() else None
    if on_disk != best["epoch"]:
        log(f"rewriting best_model.pth for epoch {best['epoch']} from the checkpoint")
        save_model(accelerator, model, path, meta | {"epoch": best["epoch"], "metrics": state["rows"][-1],
                                                     "threshold": best["threshold"], "monitor": best["monitor"]})


def _main(argv: Sequence[str] | None) -> int:
    cfg, given = parse_train_args(argv)
    train(cfg, given)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
