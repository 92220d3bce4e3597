"""One training run on data already read and split: model → run directory → Trainer → test evaluation.

Shared by `carotid.train` (one run) and `carotid.training.cv` (one run per fold), so a fold's folder is a
normal run directory. `read_data` is the data side both start from (main process only).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate import Accelerator

from carotid.core import run_dir as run_folder
from carotid.core.errors import StopTraining, UserError, disk_full_error
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog, StopSignal, on_main
from carotid.core.text import plural
from carotid.data.demo import make_demo_data
from carotid.data.folders.readable import startup_lines
from carotid.data.loaders import frame_dataset
from carotid.data.manifest import SPLITS, DataManifest, check_classes_in_training, collect_persons, data_block
from carotid.data.sheet.labels import LabelTable, read_labels
from carotid.data.sheet.person_columns import read_person_columns
from carotid.evaluation.registry import person_monitor
from carotid.training.checkpoints import disk_full
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model, split_names
from carotid.training.steps import StepPlan, run_plan
from carotid.training.steps import startup_lines as step_lines
from carotid.training.trainer import Trainer

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def read_data(
    cfg: TrainConfig, persons: list[str] | None = None, trained_classes: list[str] | None = None
) -> tuple[DataManifest, LabelTable, str, str]:
    """(manifest without splits, label table, resolved root dir, resolved label file). Main process only.

    `persons` restricts the data to a resumed run's persons; `trained_classes` are that run's classes."""
    root_dir, label_excel = cfg.root_dir, cfg.label_excel
    if cfg.demo and not root_dir:
        # One folder per --finding-frames setting, so that data made with another setting is never reused.
        sparse = "" if cfg.finding_frames is None else f"_finding{cfg.finding_frames}"
        root_dir = str(Path(cfg.output_dir) / f"demo_data{sparse}")
        label_excel = str(Path(root_dir) / "label.xlsx")
        if not Path(label_excel).exists():
            make_demo_data(root_dir, seed=cfg.seed, finding_frames=cfg.finding_frames)
    if not root_dir or not label_excel:
        raise UserError("no data given", "pass --root-dir DATA --label-excel label.xlsx (or --demo)")
    table = read_labels(
        label_excel,
        cfg.sheet,
        cfg.id_column,
        cfg.label_column,
        header_row=cfg.header_row,
        positive_class=cfg.positive_class,
        group_column=cfg.group_column,
    )
    if trained_classes is not None and list(trained_classes) != table.class_names:
        raise UserError(
            f"{label_excel} has classes {table.class_names}, the resumed run has {trained_classes}",
            "resume with the label file the run was trained on (or start a new run with --load-model)",
        )
    manifest = collect_persons(
        root_dir, table, cfg.max_imgs_per_person, persons=persons, strict_matching=cfg.strict_matching
    )
    if cfg.subgroup_column:  # read now: a column the sheet lacks is an error before any training
        columns, _ = read_person_columns(label_excel, table.sheet, table.id_column, cfg.subgroup_column)
        manifest = dataclasses.replace(manifest, person_columns=columns)
    return manifest, table, str(Path(root_dir).resolve()), str(Path(label_excel).resolve())


def with_splits(
    manifest: DataManifest, splits: dict[str, list[str]], notes: list[str], names: dict[str, str] | None = None
) -> DataManifest:
    """The manifest with these splits, their counts and notes recorded in its report (data_report.json);
    `names` gives a split another name in words (a fold's "test" is "held-out fold k")."""
    out = dataclasses.replace(manifest, splits=splits, report=dict(manifest.report))
    out.report["split_notes"] = notes
    if names:
        out.report["split_names"] = names
    out.report["splits"] = {s: out.counts(s) for s in SPLITS}
    return out


DISTRIBUTION = {  # Accelerate's DistributedType values in words
    "NO": "one process, not distributed",
    "MULTI_CPU": "DDP over CPU processes",
    "MULTI_GPU": "DDP over GPUs",
    "DEEPSPEED": "DeepSpeed",
    "FSDP": "FSDP",
}


def describe(accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, log: RunLog, plan: StepPlan) -> None:
    """The start-up block: processes, batch and steps, the persons of each split, the data, the checks."""
    describe_setup(accelerator, cfg, log, plan)
    describe_splits(manifest, log)
    describe_data(cfg, manifest, log)


def describe_setup(accelerator: Accelerator, cfg: TrainConfig, log: RunLog, plan: StepPlan | None = None) -> None:
    """Processes, devices, precision; the batch and steps (a cross-validation: each fold prints its own)."""
    kind = accelerator.distributed_type.value
    log(
        f"processes: {accelerator.num_processes} ({DISTRIBUTION.get(kind, kind)}), device: {accelerator.device}, "
        f"mixed precision: {accelerator.mixed_precision}"
    )
    for line in step_lines(plan) if plan else []:
        log(line)
    if cfg.person_model != "frames":
        log(
            f"person model: --person-model {cfg.person_model} on a {cfg.model} frame encoder; each training person "
            f"brings up to {plural(cfg.bag_size, 'frame')} (--bag-size) drawn at random per epoch, all of a step's "
            "persons encoded together; validation and test pool all of each person's frames"
        )
        order = "from every class in its share" if cfg.stratified_steps else "in a plain shuffle"
        log(f"person order: each training step's persons dealt {order} (--stratified-steps)")
    if cfg.global_pool != "avg" or cfg.person_model != "frames":
        log(
            f"encoder pooling: {cfg.global_pool} over each frame's last feature map (--global-pool; by default max "
            "for a person model whose encoder starts from random weights, avg otherwise)"
        )


def describe_splits(manifest: DataManifest, log: RunLog) -> None:
    names = split_names(manifest)
    width = max(len(names[s]) for s in SPLITS)
    for split in SPLITS:
        log(f"{names[split]:>{width}}: {describe_persons(manifest, manifest.splits[split])}")


def describe_data(cfg: TrainConfig, manifest: DataManifest, log: RunLog) -> None:
    for line in data_block(manifest.report, cfg.label_excel):
        log(line)
    for note in manifest.report.get("split_notes", []):
        log(f"note: {note}")
    for note in manifest.left_out_notes():
        log(f"note: {note}")
    for line in startup_lines(manifest.report, cfg.in_channels):
        log(line)
    log(f"geometry: --crop {cfg.crop}, --resize {cfg.resize} to {cfg.image_size}x{cfg.image_size}")


def describe_persons(manifest: DataManifest, persons: Iterable[str]) -> str:
    """'N persons, M images (class: persons / images, ...)'."""
    persons = list(persons)
    by_class = {c: [0, 0] for c in manifest.class_names}
    for p in persons:
        counts = by_class[manifest.class_names[manifest.person_labels[p]]]
        counts[0] += 1
        counts[1] += len(manifest.frames[p])
    parts = ", ".join(f"{c}: {plural(n, 'person')} / {plural(m, 'image')}" for c, (n, m) in by_class.items())
    return f"{plural(len(persons), 'person')}, {plural(sum(m for _, m in by_class.values()), 'image')} ({parts})"


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def choose_monitor(cfg: TrainConfig, manifest: DataManifest) -> tuple[str, str | None]:
    """(the metric best_model.pth follows, a warning when --monitor cannot be followed on these splits); a person
    model follows the metric's per-person column (it gives no per-image numbers)."""
    monitor, warning = _frame_monitor(cfg, manifest)
    if cfg.person_model == "frames" or monitor == person_monitor(monitor):
        return monitor, warning
    if cfg.monitor != "auto" and warning is None:
        warning = f"a person model gives no per-image numbers; --monitor {monitor} is {person_monitor(monitor)}"
    return person_monitor(monitor), warning


def _frame_monitor(cfg: TrainConfig, manifest: DataManifest) -> tuple[str, str | None]:
    if not manifest.splits["val"]:
        if cfg.monitor not in ("auto", "train_loss"):
            return "train_loss", f"no validation split; --monitor {cfg.monitor} replaced by train_loss"
        return "train_loss", None
    monitor = (
        cfg.monitor if cfg.monitor != "auto" else ("val_auc" if len(manifest.class_names) == 2 else "val_accuracy")
    )
    val_classes = {manifest.person_labels[p] for p in manifest.splits["val"]}
    if "auc" in monitor and len(val_classes) < 2:
        return "val_loss", f"the validation split has one class, so {monitor} is undefined; monitoring val_loss instead"
    return monitor, None


def fit_run(
    accelerator: Accelerator,
    cfg: TrainConfig,
    manifest: DataManifest,
    *,
    resume_run: Path | None = None,
    resume_from: Path | None = None,
    notes: Iterable[str] = (),
    run_name: str | None = None,
    run_note: dict | None = None,
    startup: bool = True,
) -> Path:
    """Train (or resume) one run on `manifest.splits`; returns its run directory.

    A new run directory is made in cfg.output_dir (named `run_name`, else train_YYYYMMDD_HHMMSS) once the
    model is built; `run_note` adds keys to its config.yaml. `startup` False (a fold of a cross-validation,
    whose start-up block was printed once) prints only the persons of each split.

    Over 60 lines with its signature: the body is one try block, whose handlers decide what a failure leaves (a
    user error or Ctrl-C before training removes the new run directory; a full disk or OOM keeps it)."""
    check_classes_in_training(manifest)
    class_names = manifest.class_names
    positive_index = manifest.positive_index  # binary: the class read_labels chose (and reported)
    model, weight_lines = build_run_model(cfg, class_names)

    monitor, monitor_warning = choose_monitor(cfg, manifest)
    plan = run_plan(cfg, manifest, accelerator)
    # Everything the user gave is valid: from here on there is a run directory.
    run_dir = resume_run or on_main(
        accelerator,
        lambda: run_folder.create_run_dir(
            cfg.output_dir,
            dataclasses.asdict(cfg),
            cfg.label_excel,
            class_names,
            manifest.splits,
            manifest.report,
            name=run_name,
            note=(run_note or {}) | {"steps": plan.to_dict()},
        ),
    )
    training = False
    try:
        log = RunLog(accelerator, RunDir(run_dir).log)
        log(f"{'resuming' if resume_run else 'run directory'}: {run_dir}")
        for line in [*notes, *weight_lines]:
            log(line)
        if startup:
            describe(accelerator, cfg, manifest, log, plan)
        else:
            describe_splits(manifest, log)
            for line in step_lines(plan):
                log(line)
        if monitor_warning:
            log(f"warning: {monitor_warning}")
        # Datasets (and the frame cache) first: a signal during a long cache build simply ends the process.
        datasets = run_datasets(accelerator, cfg, manifest)
        report_cache(datasets, log)
        if resume_run is None and accelerator.is_main_process:
            run_folder.record_warnings(run_dir, log.warnings)
        trainer = Trainer(accelerator, cfg, manifest, model, datasets, run_dir, log, monitor, positive_index)
        if resume_from is not None:
            trainer.restore(resume_from)
        training = True  # from here a signal checkpoints and stops (StopSignal); the run is kept
        with StopSignal() as stop:
            trainer.fit(stop)
        trainer.finish()
    except (UserError, KeyboardInterrupt, BrokenPipeError) as err:
        # A mistake found this late, or Ctrl-C (or `| head` closing stdout) before training started, still
        # leaves no half-made run.
        started = not isinstance(err, UserError) and training
        if resume_run is None and accelerator.is_main_process and not started:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    except torch.OutOfMemoryError:
        raise StopTraining(out_of_memory(accelerator, cfg, run_dir), 1) from None
    except Exception as err:
        full = disk_full_error(err)
        if full is None:
            raise
        raise StopTraining(disk_full(full, run_dir), 2) from None
    return run_dir


def run_datasets(accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest) -> dict:
    """The train and validation datasets (from the frame cache with --cache), for the splits that have persons."""
    return {
        split: frame_dataset(
            manifest.frames_of(split),
            cfg.image_size,
            cfg.in_channels,
            resize=cfg.resize,
            crop=cfg.crop,
            cache=cfg.cache,
            cache_dir=cfg.cache_dir,
            accelerator=accelerator,
        )
        for split in ("train", "val")
        if manifest.splits[split]
    }


def out_of_memory(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path) -> str:
    return (
        f"error: out of memory on {accelerator.device} with --batch-size {cfg.batch_size} at "
        f"--image-size {cfg.image_size} — start a new run with a lower --batch-size (and a higher "
        f"--gradient-accumulation-steps to keep the effective batch) or a lower --image-size; if another "
        f"process held the memory, continue this run with --resume {run_dir}"
    )


def report_cache(datasets: dict, log: RunLog) -> None:
    for split, dataset in datasets.items():
        if getattr(dataset, "folder", None) is not None:
            log(f"{split}: frames read from the cache in {dataset.folder}")
        excluded = getattr(dataset, "excluded", None)
        if excluded:
            log(
                f"warning: {split}: {len(excluded)} frame(s) failed to decode and were left out, "
                f"e.g. {next(iter(excluded))}"
            )
