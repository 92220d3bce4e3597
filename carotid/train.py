"""Train a carotid-ultrasound classifier: `accelerate launch -m carotid.train --root-dir DATA --label-excel label.xlsx`.

`train(cfg)` reads top to bottom: options (and a resumed run's) → Accelerator → data, read once on the
main process → model → run directory (only once everything the user gave is valid) → datasets →
`carotid.trainer.Trainer` (epochs, checkpoints, best and final model) → evaluation of the test split.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from carotid.config import TrainConfig, parse_train_args
from carotid.data.check import decode_summary, startup_lines, summary_line
from carotid.data.labels import read_labels
from carotid.data.loaders import frame_dataset
from carotid.data.manifest import SPLITS, DataManifest, collect_persons
from carotid.data.preprocessing import Preprocessing
from carotid.data.split import split_persons
from carotid.errors import StopTraining, UserError, run_cli
from carotid.files import atomic_write_json
from carotid.model.file import load_initial_weights, read_weights
from carotid.model.registry import build_model
from carotid.training import checkpoints
from carotid.training import run_dir as run_folder
from carotid.training.runtime import RunLog, StopSignal, build_accelerator, on_main
from carotid.training.trainer import Trainer

# Options a resumed run may change; every other option is fixed by the run's config.yaml.
RESUMABLE_CHANGES = {
    "resume",
    "epochs",
    "num_workers",
    "report_to",
    "keep_checkpoints",
    "checkpoint_every_steps",
    "early_stopping_patience",
    "test",
    "bootstrap",
    "person_aggregation",
    "cache",
    "cache_dir",
    "dist_timeout_minutes",
    "root_dir",
    "label_excel",
    "output_dir",
}

# ---------------------------------------------------------------------------------------------
# Options and data
# ---------------------------------------------------------------------------------------------


def merge_resume(cfg: TrainConfig, given: set[str], run_dir: Path) -> TrainConfig:
    """The run's saved options, with the few that may change taken from the command line."""
    saved = run_folder.read_run_config(run_dir)["options"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in fields}
    for name in sorted(given):
        ours = getattr(cfg, name)
        if name in RESUMABLE_CHANGES:
            merged[name] = ours
        elif merged.get(name) != ours:
            flag = name.replace("_", "-")
            raise UserError(
                f"--{flag} {ours} differs from the resumed run's {merged.get(name)}",
                f"drop --{flag}; a resumed run keeps its options (start a new run with --load-model to change it)",
            )
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
        raise UserError(
            f"--positive-class '{cfg.positive_class}' is not a class; the classes are {table.class_names}",
            "pass one of them",
        )
    if resume_run is not None:
        trained = run_folder.read_run_config(resume_run).get("class_names")
        if trained is not None and list(trained) != table.class_names:
            raise UserError(
                f"{label_excel} has classes {table.class_names}, the resumed run {resume_run} has {trained}",
                "resume with the label file the run was trained on (or start a new run with --load-model)",
            )
        splits = run_folder.read_splits(resume_run)
        manifest = collect_persons(
            root_dir, table, cfg.max_imgs_per_person, persons=[p for s in SPLITS for p in splits[s]]
        )
        manifest.splits, notes = splits, []
    else:
        manifest = collect_persons(root_dir, table, cfg.max_imgs_per_person)
        manifest.splits, notes = split_persons(
            manifest.person_labels, cfg.train_ratio, cfg.val_ratio, cfg.test_ratio, cfg.seed
        )
    manifest.report["split_notes"] = notes
    manifest.report["splits"] = {s: manifest.counts(s) for s in SPLITS}
    return manifest, str(Path(root_dir).resolve()), str(Path(label_excel).resolve())


def describe(accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, log: RunLog) -> None:
    per_device, accumulation = cfg.batch_size, accelerator.gradient_accumulation_steps
    effective = per_device * accelerator.num_processes * accumulation
    log(
        f"processes: {accelerator.num_processes} ({accelerator.distributed_type.value}), device: {accelerator.device}, "
        f"mixed precision: {accelerator.mixed_precision}"
    )
    log(
        f"batch: {per_device} per device x {accelerator.num_processes} processes x {accumulation} "
        f"accumulation steps = {effective} effective"
    )
    for split in SPLITS:
        counts = manifest.counts(split)
        parts = ", ".join(
            f"{c}: {counts['persons'][c]} persons / {counts['images'][c]} images" for c in manifest.class_names
        )
        log(f"{split:>5}: {len(manifest.splits[split])} persons, {sum(counts['images'].values())} images ({parts})")
    for note in manifest.report["label_file"]["notes"] + manifest.report["split_notes"]:
        log(f"note: {note}")
    for note in manifest.left_out_notes():
        log(f"note: {note}")
    for line in startup_lines(manifest.report, cfg.in_channels):
        log(line)
    log(f"geometry: --crop {cfg.crop}, --resize {cfg.resize} to {cfg.image_size}x{cfg.image_size}")
    if manifest.report["unreadable_images"]:
        log(
            f"warning: {len(manifest.report['unreadable_images'])} unreadable image(s) skipped "
            "(listed in data_report.json)"
        )


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def choose_monitor(cfg: TrainConfig, manifest: DataManifest, log: RunLog) -> str:
    if not manifest.splits["val"]:
        if cfg.monitor not in ("auto", "train_loss"):
            log(f"warning: no validation split; --monitor {cfg.monitor} replaced by train_loss")
        return "train_loss"
    monitor = (
        cfg.monitor if cfg.monitor != "auto" else ("val_auc" if len(manifest.class_names) == 2 else "val_accuracy")
    )
    val_classes = {manifest.person_labels[p] for p in manifest.splits["val"]}
    if "auc" in monitor and len(val_classes) < 2:
        log(f"warning: the validation split has one class, so {monitor} is undefined; monitoring val_loss instead")
        return "val_loss"
    return monitor


def train(cfg: TrainConfig, given: set[str] | frozenset = frozenset()) -> Path:
    """Run (or resume) one training run; returns its run directory."""
    resume_run = resume_from = None
    if cfg.resume:
        resume_run, resume_from = checkpoints.resolve_resume(cfg.resume)
        cfg = merge_resume(cfg, set(given), resume_run)
    else:
        run_folder.check_writable(cfg.output_dir)
    accelerator, precision_note = build_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        report_to=cfg.report_to,
        dist_timeout_minutes=cfg.dist_timeout_minutes,
        output_dir=cfg.output_dir,
    )
    set_seed(cfg.seed)
    manifest, root_dir, label_excel = on_main(accelerator, lambda: prepare_data(cfg, resume_run))
    cfg = dataclasses.replace(cfg, root_dir=root_dir, label_excel=label_excel)
    class_names = manifest.class_names
    positive_index = class_names.index(cfg.positive_class) if cfg.positive_class else len(class_names) - 1
    pretrained = read_weights(cfg.pretrained_weights, "pretrained weights")[1] if cfg.pretrained_weights else None
    model = build_model(
        cfg.model,
        len(class_names),
        cfg.in_channels,
        cfg.pretrained,
        pretrained,
        source=f"pretrained weights {cfg.pretrained_weights}",
    )
    if cfg.load_model:
        load_initial_weights(model, cfg.load_model, cfg.model, class_names)

    # Everything the user gave is valid: from here on there is a run directory.
    run_dir = resume_run or on_main(
        accelerator,
        lambda: run_folder.create_run_dir(
            cfg.output_dir, dataclasses.asdict(cfg), cfg.label_excel, class_names, manifest.splits, manifest.report
        ),
    )
    log = RunLog(accelerator, run_dir / "train.log")
    log(f"{'resuming' if resume_run else 'run directory'}: {run_dir}")
    if precision_note:
        log(precision_note)
    describe(accelerator, cfg, manifest, log)
    monitor = choose_monitor(cfg, manifest, log)
    try:
        # Datasets (and the frame cache) first: a signal during a long cache build simply ends the process.
        datasets = {
            s: frame_dataset(
                manifest.frames_of(s),
                cfg.image_size,
                cfg.in_channels,
                resize=cfg.resize,
                crop=cfg.crop,
                cache=cfg.cache,
                cache_dir=cfg.cache_dir,
                accelerator=accelerator,
            )
            for s in ("train", "val")
            if manifest.splits[s]
        }
        report_cache(datasets, log)
        trainer = Trainer(accelerator, cfg, manifest, model, datasets, run_dir, log, monitor, positive_index)
        if resume_from is not None:
            trainer.restore(resume_from)
        with StopSignal() as stop:
            trainer.fit(stop)
        statuses = trainer.decode_statuses()
        test_report = trainer.finish()
        report_decoding(accelerator, cfg, manifest, datasets, statuses, test_report, run_dir, log)
    except UserError:
        if resume_run is None and accelerator.is_main_process:
            shutil.rmtree(run_dir, ignore_errors=True)  # a mistake found this late still leaves no half-made run
        raise
    except torch.OutOfMemoryError:
        raise StopTraining(
            f"error: out of memory on {accelerator.device} with --batch-size {cfg.batch_size} at "
            f"--image-size {cfg.image_size} — start a new run with a lower --batch-size (and a higher "
            f"--gradient-accumulation-steps to keep the effective batch) or a lower --image-size; if another "
            f"process held the memory, continue this run with --resume {run_dir}",
            1,
        ) from None
    return run_dir


def report_decoding(
    accelerator: Accelerator,
    cfg: TrainConfig,
    manifest: DataManifest,
    datasets: dict,
    statuses: dict,
    test_report: dict | None,
    run_dir: Path,
    log: RunLog,
) -> None:
    """Every frame that could not be decoded in training, validation and test, with its reason, into
    data_report.json ("decoding"), and a line per split on the console."""
    if not accelerator.is_main_process:
        return
    prep = Preprocessing(cfg.image_size, cfg.in_channels, cfg.resize, cfg.crop)
    decoding = {}
    for split, status in statuses.items():
        dataset = datasets[split]
        summary = decode_summary(dataset.frames, status, prep)
        cached = [
            {"path": path, "frame": index, "reason": reason, "found_at": "cache build"}
            for (path, index), reason in getattr(dataset, "excluded", {}).items()
        ]
        decoding[split] = summary | {"unreadable": cached + summary["unreadable"]}
    if test_report is not None:
        decoding["test"] = test_report["decoding"] | {"unreadable": test_report["unreadable_images"]}
    data_report = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))
    atomic_write_json(run_dir / "data_report.json", data_report | {"decoding": decoding})
    at_start = len(manifest.report["unreadable_images"])
    if at_start:
        log(f"{at_start} file(s) or frame(s) found unreadable at start-up (unreadable_images in data_report.json)")
    for split, summary in decoding.items():
        log(summary_line(split, summary) + (" (listed in data_report.json)" if summary["unreadable"] else ""))


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


def _main(argv: Sequence[str] | None) -> int:
    cfg, given = parse_train_args(argv)
    train(cfg, given)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
