"""The training loop of one run: epochs of train → validate → checkpoint → best model, then the final model.

`Trainer` holds what lives for the whole run (the prepared model, optimizer, loaders, LR schedule and
presets) and the run's progress (`state`: epoch, optimizer step, metric rows, best metric, early-stopping
counter), which every checkpoint saves beside Accelerate's state so a resumed run continues exactly.

Order at the end of an epoch (what a kill at any moment leaves is consistent):
checkpoint (holds the epoch's weights and row) → best_model.pth → metrics.csv. A resume from an
epoch-end checkpoint rewrites best_model.pth if the kill came before it was written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import DistributedType

from carotid.core.errors import UserError
from carotid.core.files import write_records
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog, StopSignal, on_main
from carotid.core.text import plural
from carotid.core.trackers import end_tracker, prepare_tracker, tracker_of
from carotid.data.frames.preprocessing import Preprocessing
from carotid.data.frames.transforms import NORMALIZATION, eval_preset, train_preset
from carotid.data.loaders import EpochSeeds, stop_workers, stop_workers_at_exit
from carotid.data.manifest import DataManifest
from carotid.evaluation.records import ValidationChoice
from carotid.evaluation.registry import METRIC_COLUMNS
from carotid.evaluation.selection import ValidationOutput, best_epoch_record, choose_on_validation, next_best, no_best
from carotid.model.file import ModelFile
from carotid.report.html import write_run_report
from carotid.report.plots import plot_curves  # matplotlib only once there is something to draw
from carotid.training import checkpoints
from carotid.training.chance import chance_loss, not_learned_warning, training_counts
from carotid.training.config import TrainConfig
from carotid.training.decoding import gather_statuses, report_decoding
from carotid.training.engine import EpochProgress, reduce_progress, train_one_epoch
from carotid.training.epoch import (
    diverged,
    epoch_line,
    eval_batch_size,
    evaluate_test,
    model_contract,
    person_class_weights,
    preempted,
    run_loaders,
    split_names,
    validate,
    validate_persons,
    weights_finite,
)
from carotid.training.finetune import FineTuning
from carotid.training.optim import make_optimizer, make_scheduler, stretch_schedule


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
        self.paths = RunDir(run_dir)
        self.monitor, self.positive_index, self.datasets = monitor, positive_index, datasets
        self.on_cuda = accelerator.device.type == "cuda"
        train_set = datasets["train"]
        train_loader, val_loader = run_loaders(cfg, datasets, accelerator.num_processes, pin_memory=self.on_cuda)
        self.seeds = EpochSeeds(train_loader, cfg.seed)
        self.prepare(model, train_loader, val_loader)
        self.make_presets()
        self.contract = model_contract(cfg, manifest.class_names, monitor, positive_index)
        if cfg.operating_point and len(manifest.class_names) != 2:
            raise UserError(
                f"--operating-point needs a binary task; the classes are {manifest.class_names}",
                "drop --operating-point (multi-class models predict the most probable class)",
            )
        no_choice = self.choose(None)
        self.state = {
            "epoch": 0,
            "global_step": 0,
            "rows": [],
            "stopped_early": False,
            # The best-epoch record (evaluation.records.BestEpoch: value, tie-break state) and its validation choice
            "best": {**no_best(monitor), "bad_epochs": 0, **no_choice},
            "last_choice": no_choice,  # the final model's threshold, temperature and operating points
        }
        self.progress = EpochProgress()
        self.start_tracker: Callable[[], None] | None = None  # set by fit; called once by tracker_started
        # Each frame's decode status as the loaders last returned it (data.folders.readable), for data_report.json.
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

    def choose(self, val_out: ValidationOutput | None) -> ValidationChoice:
        """Threshold, temperature and operating points of this epoch's weights, from the validation persons."""
        choice = choose_on_validation(
            val_out,
            aggregation=self.contract["aggregation"],
            positive_index=self.positive_index,
            calibrate=self.cfg.calibrate,
            operating_points=self.cfg.operating_point,
        )
        return {k: v for k, v in choice.items() if k != "notes"} | {"choice_notes": choice["notes"]}

    def save_model(self, which: str, epoch: int, metrics: dict, choice: ValidationChoice | None = None) -> None:
        """models/{which}_model.pth (which: best or final). Collective: consolidates the weights on every rank
        (needed under ZeRO-3/FSDP), main writes."""
        best = which == "best"
        choice = choice or self.state["best"]
        state_dict = self.tuning.state_dict(self.accelerator, self.model)  # the EMA's under --ema
        if self.accelerator.is_main_process:
            ModelFile(
                state_dict=state_dict,
                **self.contract,
                epoch=epoch,
                metrics=metrics,
                threshold=choice["threshold"],
                threshold_source=choice["threshold_source"],
                temperature=choice.get("temperature"),
                temperature_source=choice.get("temperature_source"),
                operating_points=choice.get("operating_points", []),
                best_epoch=best_epoch_record(self.state["best"]) if best else None,
            ).save(self.paths.model(which))
        self.accelerator.wait_for_everyone()

    def restore(self, checkpoint: Path) -> None:
        saved = checkpoints.read_progress(checkpoint, self.accelerator.num_processes, self.run_dir)
        self.accelerator.load_state(str(checkpoint))
        old_total = stretch_schedule(self.scheduler, self.total_steps)
        if old_total is not None:
            self.log(
                f"note: the run now has {self.cfg.epochs} epochs: its LR schedule was stretched from {old_total} "
                f"to {self.total_steps} optimizer steps"
            )
        self.state = {k: saved[k] for k in ("epoch", "global_step", "rows", "best", "stopped_early")}
        for key, value in {**no_best(self.monitor), "threshold_source": None}.items():
            self.state["best"].setdefault(key, value)  # checkpoints of earlier versions
        self.state["last_choice"] = saved.get("last_choice", self.state["best"])
        self.progress = EpochProgress(**saved["epoch_progress"])
        self.log(
            f"resumed from {checkpoint.name}: epoch {self.state['epoch'] + 1}, batch {self.progress.batches_done}, "
            f"optimizer step {self.state['global_step']}"
        )
        best, path = self.state["best"], self.paths.best_model
        # Only an epoch-end checkpoint of the best epoch holds the best weights; the kill may have come
        # between it and best_model.pth. The main process decides for all: a rank that read the file
        # while the main one rewrote it would skip the collective save, and the others would wait forever.
        if self.progress.batches_done == 0 and best["epoch"] is not None and best["epoch"] == self.state["epoch"]:
            stale = on_main(
                self.accelerator, lambda: (ModelFile.load(path).epoch if path.exists() else None) != best["epoch"]
            )
            if stale:
                self.log(f"rewriting best_model.pth for epoch {best['epoch']} from the checkpoint")
                self.save_model("best", best["epoch"], self.state["rows"][-1])

    def prepare(self, model: torch.nn.Module, train_loader, val_loader) -> None:
        """Memory format, fine-tuning groups, compile, AdamW, `accelerator.prepare` and the LR schedule."""
        # channels_last convolutions are faster on CUDA and on the CPU too (oneDNN): small_cnn and resnet18 at
        # 224 px, 17-29% faster steps on this project's 2-core CPU (docs/PERFORMANCE.md). Not under DeepSpeed or FSDP:
        # DeepSpeed broadcasts each parameter as a flat byte view and FSDP2 shards only contiguous parameters
        # (both fail in prepare on a channels_last model, tests/test_strategies.py).
        self.channels_last = self.accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.tuning = FineTuning(self.cfg, model, self.log)  # before compile: it holds the plain module
        if self.cfg.compile:
            model = torch.compile(model)
        optimizer = make_optimizer(model, self.cfg.lr, self.cfg.weight_decay, self.tuning.param_groups())
        prepared = self.accelerator.prepare(
            model, optimizer, train_loader, *([val_loader] if val_loader is not None else [])
        )
        self.model, self.optimizer, self.train_loader = prepared[:3]
        self.val_loader = prepared[3] if val_loader is not None else None
        for loader in (self.train_loader, self.val_loader):
            stop_workers_at_exit(loader)
        steps_per_epoch = math.ceil(len(self.train_loader) / self.accelerator.gradient_accumulation_steps)
        self.total_steps = steps_per_epoch * self.cfg.epochs
        # The schedule drives the torch optimizer itself: Accelerate's and DeepSpeed's wrappers share its param_groups.
        frozen = self.tuning.frozen_steps(optimizer.param_groups, steps_per_epoch)
        self.scheduler = make_scheduler(optimizer, self.cfg, steps_per_epoch, self.monitor, frozen)
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.tuning.prepared(self.accelerator)
        for line in self.tuning.describe():
            self.log(line)

    def make_presets(self) -> None:
        """The augmentation and normalisation presets on the device, and the class weights of the loss."""
        norm = NORMALIZATION[self.cfg.in_channels]
        self.augment = train_preset(self.cfg.augment, self.cfg.in_channels).to(self.accelerator.device)
        self.eval_preset = eval_preset(norm["mean"], norm["std"]).to(self.accelerator.device)
        self.class_weights = None
        if self.cfg.class_weights == "auto":
            self.class_weights = person_class_weights(self.manifest).to(self.accelerator.device)
            self.log(
                "class weights (inverse person frequency): "
                f"{dict(zip(self.manifest.class_names, self.class_weights.tolist()))}"
            )

    # -----------------------------------------------------------------------------------------
    # The loop
    # -----------------------------------------------------------------------------------------

    def fit(self, stop: StopSignal) -> None:
        if self.accelerator.is_main_process:
            write_records(self.paths.metrics_csv, self.state["rows"], list(METRIC_COLUMNS))
        if tracker_of(self.cfg.report_to):
            where, self.start_tracker = prepare_tracker(self.accelerator, self.cfg, self.run_dir)
            self.log(f"tracker {where}")
        # Checked before each epoch and after the last one too: a signal during a short last epoch (fewer
        # batches than the loop's own check interval) stops the run before the final model and the test.
        while not self.stop_agreed(stop):
            if self.state["epoch"] >= self.cfg.epochs or self.state["stopped_early"]:
                return
            row, val_out = self.train_epoch(stop)
            self.end_epoch(row, val_out)
        saved = self.save_state(self.progress, self.progress.batches_done == 0)
        raise preempted(stop, self.run_dir, saved, self.state["epoch"], self.progress, self.cfg.epochs)

    def stop_agreed(self, stop: StopSignal) -> bool:
        """Collective: whether any rank got a stop signal, so that all checkpoint and stop together."""
        flag = torch.tensor([float(stop.requested)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="max").item())

    def train_epoch(self, stop: StopSignal) -> tuple[dict, tuple | None]:
        """Train (from the batch a resume left off at), then validate: the epoch's metrics row."""
        cfg, epoch = self.cfg, self.state["epoch"]
        self.tuning.start_epoch(epoch)
        self.seeds.set_epoch(epoch)
        done = self.progress.batches_done
        loader = stop_workers_at_exit(skip_first_batches(self.train_loader, done)) if done else self.train_loader
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
            channels_last=self.channels_last,
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
            | {"lr": max(g["lr"] for g in self.optimizer.param_groups)}  # the head's, under layer decay or a freeze
        )
        val_row, val_out = self.validate()
        return row | val_row, val_out

    def validate(self) -> tuple[dict, ValidationOutput | None]:
        """The epoch's val_* numbers and the validation outputs the threshold is chosen on ({}, None without a
        validation split); a person model's validation pools all of each person's frames (validate_persons)."""
        cfg, model = self.cfg, self.tuning.evaluated(self.model)
        if "val" not in self.datasets:
            return {}, None
        if cfg.person_model != "frames":
            row, val_out, self.val_status = validate_persons(
                model,
                self.accelerator,
                self.eval_preset,
                self.datasets["val"],
                self.positive_index,
                eval_batch_size(cfg),
                cfg.num_workers,
                self.channels_last,
            )
            return row, val_out
        row, val_out, self.val_status = validate(
            model,
            self.val_loader,
            self.accelerator,
            self.eval_preset,
            self.datasets["val"],
            self.positive_index,
            cfg.person_aggregation,
            channels_last=self.channels_last,
        )
        return row, val_out

    def optimizer_stepped(self) -> bool:
        """Advance the LR schedule by one optimizer step; True when a mid-epoch checkpoint is due."""
        self.state["global_step"] += 1
        self.tracker_started()
        self.tuning.stepped(self.state["global_step"])
        if self.cfg.scheduler != "plateau":
            self.scheduler.step()
        every = self.cfg.checkpoint_every_steps
        return bool(every) and self.state["global_step"] % every == 0

    def tracker_started(self) -> None:
        """Starts the tracker the first time it is called (after the first optimizer step, or before the first
        metrics are logged where a resumed epoch had no step left)."""
        if self.start_tracker is not None:
            start, self.start_tracker = self.start_tracker, None
            start()

    def end_epoch(self, row: dict, val_out: ValidationOutput | None) -> None:
        cfg, state, best, monitor = self.cfg, self.state, self.state["best"], self.monitor
        record, improved = next_best(best, row)  # ties on the monitor go to the lower val_loss
        if val_out is not None:
            state["last_choice"] = self.choose(val_out)
            for note in state["last_choice"]["choice_notes"] if improved else []:
                self.log(f"note: {note}")
        best.update(record)
        if improved:
            best.update(bad_epochs=0, **state["last_choice"])
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
            self.save_model("best", row["epoch"], row)
        if self.accelerator.is_main_process:
            write_records(self.paths.metrics_csv, state["rows"], list(METRIC_COLUMNS))
        self.log(epoch_line(row, monitor, improved, ema=self.tuning.ema is not None))
        self.tracker_started()
        self.accelerator.log(
            {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}, step=row["epoch"]
        )
        if state["stopped_early"]:
            self.log(f"early stopping: {monitor} has not improved for {plural(best['bad_epochs'], 'epoch')}")

    def say_if_not_learned(self) -> None:
        """The warning when the last epoch's training loss is still near the loss of a model that learned nothing."""
        rows, person_model = self.state["rows"], self.cfg.person_model != "frames"
        if not rows:
            return
        counts = training_counts(self.manifest, person_model, self.cfg.balanced_sampler)
        weights = self.class_weights.tolist() if self.class_weights is not None else None
        chance = chance_loss(counts, weights, self.cfg.label_smoothing)
        warning = not_learned_warning(rows[-1].get("train_loss"), chance, rows[-1]["epoch"], person_model)
        if warning:
            self.log(warning)

    def finish(self) -> dict | None:
        """final_model.pth and curves.png; then the test split, evaluated with best_model.pth; then report.html.

        Returns the test evaluation's metrics.json dict on the main process (None elsewhere or without one)."""
        state, best = self.state, self.state["best"]
        statuses = gather_statuses(self.accelerator, self.train_status, self.val_status)
        test_report = None
        for loader in (self.train_loader, self.val_loader):
            stop_workers(loader)  # their CPUs and memory go to the test evaluation
        self.save_model("final", state["epoch"], state["rows"][-1] if state["rows"] else {}, state["last_choice"])
        if best.get("temperature") is not None:
            self.log(f"temperature of best_model.pth: {best['temperature']:.3f} ({best['temperature_source']})")
        if self.accelerator.is_main_process and state["rows"]:
            plot_curves(state["rows"], self.monitor, self.paths.curves, best_epoch=best["epoch"])
        value = f"{best['value']:.3f}" if isinstance(best["value"], float) else best["value"]
        self.log(f"best {self.monitor}: {value} (epoch {best['epoch']}); models in {self.run_dir / 'models'}")
        if best.get("message"):
            self.log(f"{'warning' if best['saturated'] else 'note'}: {best['message']}")
        self.say_if_not_learned()
        if tracker_of(self.cfg.report_to):
            end_tracker(self.accelerator)
        if self.cfg.test and self.manifest.splits["test"]:
            test_report = evaluate_test(self.accelerator, self.cfg, self.manifest, self.run_dir, self.log)
        if self.accelerator.is_main_process:
            cfg = self.cfg
            prep = Preprocessing(cfg.image_size, cfg.in_channels, cfg.resize, cfg.crop)
            unreadable_at_start = len(self.manifest.report["unreadable_images"])
            for line in report_decoding(
                self.run_dir,
                self.datasets,
                statuses,
                prep,
                test_report,
                unreadable_at_start,
                split_names(self.manifest),
            ):
                self.log(line)

            write_run_report(self.run_dir)
            self.log(f"report: {self.run_dir / 'report.html'}")
        self.accelerator.wait_for_everyone()
        return test_report
