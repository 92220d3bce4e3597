"""The training loop of one run: epochs of train → validate → checkpoint → best model, then the final model.

`Trainer` holds what lives for the whole run (the prepared model, optimizer, loaders, LR schedule and
presets) and the run's progress (`state`: epoch, optimizer step, metric rows, best metric, early-stopping
counter), which every checkpoint saves beside Accelerate's state so a resumed run continues exactly.

Order at the end of an epoch (what a kill at any moment leaves is consistent):
checkpoint (holds the epoch's weights and row) → best_model.pth → metrics.csv. A resume from an
epoch-end checkpoint rewrites best_model.pth if the kill came before it was written.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches

from carotid.config import TrainConfig
from carotid.data.loaders import EpochSeeds, make_loader
from carotid.data.manifest import DataManifest
from carotid.data.transforms import NORMALIZATION, eval_preset, train_preset
from carotid.errors import StopTraining, UserError
from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.metrics import epoch_metrics, youden_threshold
from carotid.evaluation.registry import EPOCH_LINE, METRIC_COLUMNS, lower_is_better
from carotid.files import write_records
from carotid.model.file import ModelFile
from carotid.training import checkpoints
from carotid.training.engine import SEEN, EpochProgress, predict_loader, reduce_progress, train_one_epoch
from carotid.training.optim import make_optimizer, make_scheduler, stretch_schedule
from carotid.training.runtime import RunLog, StopSignal


class Trainer:
    def __init__(
        self,
        accelerator: Accelerator,
        cfg: TrainConfig,
        manifest: DataManifest,
        model: torch.nn.Module,
        datasets: dict,
        run_dir: Path,
        log: RunLog,
        monitor: str,
        positive_index: int,
    ):
        self.accelerator, self.cfg, self.manifest, self.run_dir, self.log = accelerator, cfg, manifest, run_dir, log
        self.monitor, self.positive_index, self.datasets = monitor, positive_index, datasets
        self.on_cuda = accelerator.device.type == "cuda"
        train_set = datasets["train"]
        drop_last = len(train_set) >= cfg.batch_size * accelerator.num_processes  # fixed shapes, when the data allows
        train_loader = make_loader(
            train_set,
            cfg.batch_size,
            train=True,
            num_workers=cfg.num_workers,
            seed=cfg.seed,
            balanced=cfg.balanced_sampler,
            drop_last=drop_last,
            pin_memory=self.on_cuda,
        )
        self.seeds = EpochSeeds(train_loader, cfg.seed)
        # No gradients to keep: evaluation batches can be twice the training batch in the same memory.
        val_loader = (
            make_loader(
                datasets["val"],
                2 * cfg.batch_size,
                train=False,
                num_workers=cfg.num_workers,
                seed=cfg.seed,
                pin_memory=self.on_cuda,
            )
            if "val" in datasets
            else None
        )
        if self.on_cuda:
            model = model.to(memory_format=torch.channels_last)
        if cfg.compile:
            model = torch.compile(model)
        optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
        prepared = accelerator.prepare(
            model, optimizer, train_loader, *([val_loader] if val_loader is not None else [])
        )
        self.model, self.optimizer, self.train_loader = prepared[:3]
        self.val_loader = prepared[3] if val_loader is not None else None
        steps_per_epoch = math.ceil(len(self.train_loader) / accelerator.gradient_accumulation_steps)
        self.total_steps = steps_per_epoch * cfg.epochs
        # The schedule drives the torch optimizer itself: Accelerate's and DeepSpeed's wrappers share its param_groups.
        self.scheduler = make_scheduler(optimizer, cfg, steps_per_epoch, monitor)
        accelerator.register_for_checkpointing(self.scheduler)
        norm = NORMALIZATION[cfg.in_channels]
        self.augment = train_preset(cfg.augment, cfg.in_channels).to(accelerator.device)
        self.eval_preset = eval_preset(norm["mean"], norm["std"]).to(accelerator.device)
        self.class_weights = None
        if cfg.class_weights == "auto":
            self.class_weights = person_class_weights(manifest).to(accelerator.device)
            log(
                "class weights (inverse person frequency): "
                f"{dict(zip(manifest.class_names, self.class_weights.tolist()))}"
            )
        self.contract = {
            "arch": cfg.model,
            "class_names": manifest.class_names,
            "in_channels": cfg.in_channels,
            "image_size": cfg.image_size,
            "normalization": norm,
            "preprocessing": {"resize": cfg.resize, "crop": cfg.crop},
            "positive_index": positive_index,
            "aggregation": cfg.person_aggregation,
            "monitor": monitor,
            "config": dataclasses.asdict(cfg),
        }
        self.state = {
            "epoch": 0,
            "global_step": 0,
            "rows": [],
            "stopped_early": False,
            "best": {
                "monitor": monitor,
                "value": None,
                "epoch": None,
                "bad_epochs": 0,
                **choose_threshold(None, cfg, positive_index),
            },
        }
        self.progress = EpochProgress()
        # Each frame's decode status as the loaders last returned it (carotid.data.check), for data_report.json.
        self.train_status = torch.zeros(len(train_set), dtype=torch.uint8, device=accelerator.device)
        self.val_status: np.ndarray | None = None

    # -----------------------------------------------------------------------------------------
    # Saving and restoring
    # -----------------------------------------------------------------------------------------

    def save_state(self, progress: EpochProgress, epoch_end: bool) -> Path:
        """Collective: a resumable checkpoint of everything, never of diverged weights."""
        if not weights_finite(self.model, self.accelerator):  # the older checkpoints stay the good ones
            where = f"epoch {self.state['epoch'] + (0 if epoch_end else 1)}, batch {progress.batches_done or 'end'}"
            raise diverged(self.run_dir, f"the weights became non-finite (NaN/inf) by {where}")
        payload = dict(self.state, epoch_progress=progress.to_dict(), world_size=self.accelerator.num_processes)
        return checkpoints.save_training_state(
            self.accelerator,
            self.run_dir,
            payload,
            global_step=self.state["global_step"],
            epoch_end=epoch_end,
            keep=self.cfg.keep_checkpoints,
        )

    def save_model(self, name: str, epoch: int, metrics: dict) -> None:
        """Collective: consolidates the weights on every rank (needed under ZeRO-3/FSDP), main writes."""
        best = self.state["best"]
        state_dict = self.accelerator.get_state_dict(self.model)
        if self.accelerator.is_main_process:
            ModelFile(
                state_dict=state_dict,
                **self.contract,
                epoch=epoch,
                metrics=metrics,
                threshold=best["threshold"],
                threshold_source=best["threshold_source"],
            ).save(self.run_dir / "models" / name)
        self.accelerator.wait_for_everyone()

    def restore(self, checkpoint: Path) -> None:
        saved = checkpoints.read_progress(checkpoint)
        if saved["world_size"] != self.accelerator.num_processes:
            raise UserError(
                f"{checkpoint} was written by {saved['world_size']} process(es), this launch has "
                f"{self.accelerator.num_processes}",
                f"resume with --num_processes {saved['world_size']}, or "
                f"start a new run with --load-model {self.run_dir / 'models' / 'best_model.pth'}",
            )
        self.accelerator.load_state(str(checkpoint))
        old_total = stretch_schedule(self.scheduler, self.total_steps)
        if old_total is not None:
            self.log(
                f"note: the run now has {self.cfg.epochs} epochs: its LR schedule was stretched from {old_total} "
                f"to {self.total_steps} optimizer steps"
            )
        self.state = {k: saved[k] for k in ("epoch", "global_step", "rows", "best", "stopped_early")}
        self.state["best"].setdefault("threshold_source", None)  # checkpoints of earlier versions
        self.progress = EpochProgress(**saved["epoch_progress"])
        self.log(
            f"resumed from {checkpoint.name}: epoch {self.state['epoch'] + 1}, batch {self.progress.batches_done}, "
            f"optimizer step {self.state['global_step']}"
        )
        best, path = self.state["best"], self.run_dir / "models" / "best_model.pth"
        # Only an epoch-end checkpoint of the best epoch holds the best weights; the kill may have come
        # between it and best_model.pth.
        if self.progress.batches_done == 0 and best["epoch"] is not None and best["epoch"] == self.state["epoch"]:
            on_disk = ModelFile.load(path).epoch if path.exists() else None
            if on_disk != best["epoch"]:
                self.log(f"rewriting best_model.pth for epoch {best['epoch']} from the checkpoint")
                self.save_model("best_model.pth", best["epoch"], self.state["rows"][-1])

    # -----------------------------------------------------------------------------------------
    # The loop
    # -----------------------------------------------------------------------------------------

    def fit(self, stop: StopSignal) -> None:
        if self.accelerator.is_main_process:
            write_records(self.run_dir / "metrics.csv", self.state["rows"], list(METRIC_COLUMNS))
        if self.cfg.report_to:
            self.accelerator.project_configuration.logging_dir = str(self.run_dir)
            self.accelerator.init_trackers(
                "tensorboard",
                config={
                    k: v for k, v in dataclasses.asdict(self.cfg).items() if isinstance(v, (int, float, str, bool))
                },
            )
        while self.state["epoch"] < self.cfg.epochs and not self.state["stopped_early"]:
            if stop.requested:
                raise preempted(
                    stop,
                    self.run_dir,
                    self.save_state(self.progress, self.progress.batches_done == 0),
                    self.state["epoch"],
                    self.progress,
                )
            row, val_out = self.train_epoch(stop)
            self.end_epoch(row, val_out)

    def train_epoch(self, stop: StopSignal) -> tuple[dict, tuple | None]:
        """Train (from the batch a resume left off at), then validate: the epoch's metrics row."""
        cfg, epoch = self.cfg, self.state["epoch"]
        self.seeds.set_epoch(epoch)
        done = self.progress.batches_done
        loader = skip_first_batches(self.train_loader, done) if done else self.train_loader
        end = train_one_epoch(
            self.model,
            loader,
            self.optimizer,
            self.accelerator,
            self.augment,
            epoch=epoch,
            epochs=cfg.epochs,
            progress=self.progress,
            class_weights=self.class_weights,
            label_smoothing=cfg.label_smoothing,
            clip_grad_norm=cfg.clip_grad_norm,
            on_optimizer_step=self.optimizer_stepped,
            save_checkpoint=lambda p: self.save_state(p, False),
            stop_requested=lambda: stop.requested,
            channels_last=self.on_cuda,
            statuses=self.train_status,
        )
        if end.stop == "nonfinite":
            batch = end.nonfinite_step + 1 if end.nonfinite_step is not None else "?"
            raise diverged(
                self.run_dir, f"the training loss became non-finite (NaN/inf) in epoch {epoch + 1} at batch {batch}"
            )
        if end.stop == "signal":
            raise preempted(stop, self.run_dir, self.save_state(self.progress, False), epoch, self.progress)
        if not weights_finite(self.model, self.accelerator):  # the last update diverged: validation would be NaN
            raise diverged(
                self.run_dir,
                f"the weights became non-finite (NaN/inf) by epoch {epoch + 1}, batch {self.progress.batches_done}",
            )
        row = (
            {"epoch": epoch + 1}
            | reduce_progress(self.accelerator, self.progress)
            | {"lr": self.optimizer.param_groups[0]["lr"]}
        )
        val_out = None
        if self.val_loader is not None:
            val_row, val_out = validate(
                self.model,
                self.val_loader,
                self.accelerator,
                self.eval_preset,
                self.datasets["val"],
                self.positive_index,
                cfg.person_aggregation,
                self.on_cuda,
            )
            row |= val_row
            self.val_status = val_out[3]
            val_out = val_out[:3]
        return row, val_out

    def optimizer_stepped(self) -> bool:
        """Advance the LR schedule by one optimizer step; True when a mid-epoch checkpoint is due."""
        self.state["global_step"] += 1
        if self.cfg.scheduler != "plateau":
            self.scheduler.step()
        every = self.cfg.checkpoint_every_steps
        return bool(every) and self.state["global_step"] % every == 0

    def end_epoch(self, row: dict, val_out: tuple | None) -> None:
        cfg, state, best, monitor = self.cfg, self.state, self.state["best"], self.monitor
        improved = better(row.get(monitor), best["value"], monitor)
        if improved:
            best.update(
                value=row[monitor],
                epoch=row["epoch"],
                bad_epochs=0,
                **choose_threshold(val_out, cfg, self.positive_index),
            )
        else:
            best["bad_epochs"] += 1
        if cfg.scheduler == "plateau" and row.get(monitor) is not None:
            self.scheduler.step(row[monitor])
        state["rows"].append(row)
        state["epoch"] = row["epoch"]
        state["stopped_early"] = bool(cfg.early_stopping_patience) and best["bad_epochs"] >= cfg.early_stopping_patience
        self.progress = EpochProgress()
        self.save_state(self.progress, epoch_end=True)
        if improved:
            self.save_model("best_model.pth", row["epoch"], row)
        if self.accelerator.is_main_process:
            write_records(self.run_dir / "metrics.csv", state["rows"], list(METRIC_COLUMNS))
        self.log(epoch_line(row, monitor, improved))
        self.accelerator.log(
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}, step=row["epoch"]
        )
        if state["stopped_early"]:
            self.log(f"early stopping: {monitor} has not improved for {best['bad_epochs']} epoch(s)")

    def decode_statuses(self) -> dict[str, np.ndarray]:
        """Collective: each split's per-frame decode status (| SEEN), merged over the ranks."""
        gathered = self.accelerator.gather(self.train_status[None]).reshape(-1, len(self.train_status))
        statuses = {"train": gathered.amax(dim=0).cpu().numpy()}
        if self.val_status is not None:
            statuses["val"] = self.val_status.astype(np.uint8) | SEEN  # validation reads every frame
        return statuses

    def finish(self) -> dict | None:
        """final_model.pth and curves.png; then the test split, evaluated with best_model.pth.

        Returns the test evaluation's metrics.json dict on the main process (None elsewhere or without one)."""
        state, best = self.state, self.state["best"]
        self.save_model("final_model.pth", state["epoch"], state["rows"][-1] if state["rows"] else {})
        if self.accelerator.is_main_process and state["rows"]:
            from carotid.report.plots import plot_curves  # matplotlib only once there is something to draw

            plot_curves(state["rows"], self.monitor, self.run_dir / "curves.png")
        self.log(f"best {self.monitor}: {best['value']} (epoch {best['epoch']}); models in {self.run_dir / 'models'}")
        if self.cfg.report_to:
            self.accelerator.end_training()
        if self.cfg.test and self.manifest.splits["test"]:
            from carotid.evaluation.evaluator import evaluate_model

            cfg = self.cfg
            context = {
                "run_dir": str(self.run_dir),
                "data": {"root_dir": cfg.root_dir, "label_excel": cfg.label_excel},
                "persons": self.manifest.splits["test"],
            }
            return evaluate_model(
                self.accelerator,
                self.run_dir / "models" / "best_model.pth",
                self.manifest.frames_of("test"),
                self.run_dir / "eval_test_best",
                split="test",
                batch_size=2 * cfg.batch_size,
                num_workers=cfg.num_workers,
                bootstrap=cfg.bootstrap,
                aggregation=cfg.person_aggregation,
                seed=cfg.seed,
                cache=cfg.cache,
                cache_dir=cfg.cache_dir,
                log=self.log,
                context=context,
            )
        return None


# ---------------------------------------------------------------------------------------------
# Pieces of an epoch
# ---------------------------------------------------------------------------------------------


def validate(
    model, loader, accelerator, preset, dataset, positive_index, aggregation, channels_last
) -> tuple[dict, tuple]:
    """val_* numbers of the metrics row, and (labels, probs, person IDs) for choosing the threshold, with
    every frame's decode status."""
    out = predict_loader(model, loader, accelerator, preset, channels_last=channels_last, desc="validate")
    ok = out["status"] > 0
    persons = np.asarray(dataset.person_ids)[out["index"][ok]]
    labels, probs = out["labels"][ok], out["probs"][ok]
    numbers = epoch_metrics(labels, probs, persons, positive_index, aggregation)
    row = {"val_loss": float(out["loss"][ok].mean())} | numbers
    status = np.zeros(len(dataset), dtype=np.uint8)
    status[out["index"]] = out["status"]
    return row, (labels, probs, persons, status)


def choose_threshold(val_out: tuple | None, cfg: TrainConfig, positive_index: int) -> dict:
    """Binary tasks: the threshold on the positive class chosen by Youden's J on the validation persons."""
    if val_out is None:
        return {"threshold": 0.5, "threshold_source": "default 0.5 (no validation split)"}
    labels, probs, persons = val_out
    if probs.shape[1] != 2:
        return {"threshold": None, "threshold_source": None}
    ids, person_probs = aggregate_persons(persons, probs, cfg.person_aggregation, positive_index)
    threshold = youden_threshold(person_labels(persons, labels, ids), person_probs, positive_index)
    if threshold is None:
        return {"threshold": 0.5, "threshold_source": "default 0.5 (one class in the validation split)"}
    return {"threshold": threshold, "threshold_source": f"Youden's J on the {len(ids)} validation persons"}


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
    """Collective: whether every parameter on every rank is finite (FSDP and ZeRO-3 ranks hold shards)."""
    with torch.no_grad():
        flags = [torch.isfinite(p).all() for p in model.parameters() if p.numel()]
        bad = (~torch.stack(flags).all()).float().reshape(1) if flags else torch.zeros(1, device=accelerator.device)
    return accelerator.reduce(bad, reduction="sum").item() == 0


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
