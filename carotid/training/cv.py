"""Person-level K-fold cross-validation: one normal training run per fold, then the pooled results.

    output/cv_YYYYMMDD_HHMMSS/
      config.yaml  splits.json  data_report.json  cv.log  cv_progress.json
      fold_1/ … fold_K/          run directories; their "test" split (eval_test_best/) is the held-out fold
      oof_person_predictions.csv every non-test person once, predicted by the fold that held them out
      cv_metrics.json            out-of-fold metrics with CIs, per-fold metrics, their mean ± SD, the ensemble
      eval_test_ensemble/        the mean of the K best models on the test persons (when there are any)

Folds run one after another in the same launch (any number of processes). progress.json lists the
finished folds, so `--resume CV_DIR` skips them and resumes the unfinished fold's run directory at its
last checkpoint (fold and batch). The pooled results and the fold ensemble are carotid.training.cv_results.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from carotid.core import run_dir as run_folder
from carotid.core.errors import UserError
from carotid.core.files import atomic_write_json
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog, on_main
from carotid.data.manifest import DataManifest
from carotid.data.split import cv_splits, describe_groups, person_groups
from carotid.training import checkpoints
from carotid.training.config import TrainConfig
from carotid.training.cv_results import summarise
from carotid.training.fit import describe_data, describe_persons, describe_setup, fit_run, read_data, with_splits

PROGRESS = "cv_progress.json"

# ---------------------------------------------------------------------------------------------
# The CV directory
# ---------------------------------------------------------------------------------------------


def find_cv_dir(path: str | Path) -> Path | None:
    """The CV directory that `--resume path` means (the CV dir itself, a fold in it, or a fold's checkpoint)."""
    path = Path(path)
    for candidate in [path, *list(path.parents)[:3]]:
        if RunDir(candidate).is_run() and run_folder.read_run_config(candidate)["options"].get("folds"):
            return candidate
    return None


def read_plan(cv_dir: Path) -> dict:
    try:
        plan = json.loads(RunDir(cv_dir).splits.read_text(encoding="utf-8"))
        assert isinstance(plan["test"], list) and all(isinstance(f["held_out"], list) for f in plan["folds"])
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(
            f"{RunDir(cv_dir).splits} is not a cross-validation plan", "restore the CV directory's splits.json"
        ) from None
    return plan


def prepare(cfg: TrainConfig, cv_dir: Path | None) -> tuple[DataManifest, dict, list[str], str, str]:
    """(manifest of every person, the CV plan, notes, root dir, label file). Main process only."""
    if cv_dir is not None:
        plan = read_plan(cv_dir)
        persons = plan["test"] + [p for fold in plan["folds"] for p in fold["held_out"]]
        trained = run_folder.read_run_config(cv_dir).get("class_names")
        manifest, _, root_dir, label_excel = read_data(cfg, persons, trained)
        manifest.report["warnings"] += checkpoints.check_resumed_labels(cv_dir, manifest, label_excel)
        return manifest, plan, [], root_dir, label_excel
    manifest, table, root_dir, label_excel = read_data(cfg)
    groups = person_groups(sorted(manifest.person_labels), table.groups, manifest.report["persons_sharing_files"])
    shares = (cfg.train_ratio, cfg.val_ratio, cfg.test_ratio)
    plan, notes = cv_splits(manifest.person_labels, cfg.folds, *shares, cfg.seed, groups, manifest.class_names)
    if groups is not None:
        notes.insert(0, describe_groups(groups, cfg.group_column))
    plan["method"] = (
        f"StratifiedGroupKFold(n_splits={cfg.folds}, shuffle=True, random_state={cfg.seed}) over the non-test "
        f"persons ({describe_groups(groups, cfg.group_column) if groups else 'each person its own group'})"
    )
    return manifest, plan, notes, root_dir, label_excel


def describe_plan(
    accelerator: Accelerator,
    cfg: TrainConfig,
    manifest: DataManifest,
    plan: dict,
    cv_dir: Path,
    resumed: bool,
    notes: list[str],
    log: RunLog,
) -> None:
    """The CV's start-up block, once; its warnings into data_report.json."""
    log(f"{'resuming cross-validation' if resumed else 'cross-validation'}: {cv_dir}")
    for note in notes:
        log(note)
    log(f" test: {describe_persons(manifest, plan['test'])}")
    for fold in plan["folds"]:
        log(f"fold {fold['fold']}: held out {describe_persons(manifest, fold['held_out'])}")
    describe_setup(accelerator, cfg, log)  # the start-up block, once: each fold prints its persons and steps
    describe_data(cfg, manifest, log)
    if not resumed and accelerator.is_main_process:
        run_folder.record_warnings(cv_dir, log.warnings)  # the CV folder's data_report.json: every warning said


def fold_splits(plan: dict, k: int) -> dict[str, list[str]]:
    fold = plan["folds"][k - 1]
    return {"train": fold["train"], "val": fold["val"], "test": fold["held_out"]}


# ---------------------------------------------------------------------------------------------
# Running the folds
# ---------------------------------------------------------------------------------------------


def cross_validate(
    accelerator: Accelerator, cfg: TrainConfig, *, cv_dir: Path | None = None, notes: Iterable[str] = ()
) -> Path:
    """Run (or resume) a K-fold cross-validation; returns the CV directory."""
    manifest, plan, split_notes, root_dir, label_excel = on_main(accelerator, lambda: prepare(cfg, cv_dir))
    cfg = dataclasses.replace(cfg, root_dir=root_dir, label_excel=label_excel)
    resumed = cv_dir is not None
    if cv_dir is None:
        report = dict(manifest.report, split_notes=split_notes)
        cv_dir = on_main(
            accelerator,
            lambda: run_folder.create_run_dir(
                cfg.output_dir,
                dataclasses.asdict(cfg),
                label_excel,
                manifest.class_names,
                plan,
                report,
                prefix="cv",
                models=False,
            ),
        )
    log = RunLog(accelerator, cv_dir / "cv.log")
    try:
        describe_plan(
            accelerator, cfg, manifest, plan, cv_dir, resumed, list(notes) + [f"note: {n}" for n in split_notes], log
        )
    except (KeyboardInterrupt, BrokenPipeError):  # before the first fold: no half-made CV folder
        if not resumed and accelerator.is_main_process:
            shutil.rmtree(cv_dir, ignore_errors=True)
        raise
    progress = cv_dir / PROGRESS
    done = set(json.loads(progress.read_text(encoding="utf-8"))["folds_done"]) if progress.is_file() else set()
    for k in range(1, cfg.folds + 1):
        if k in done:
            log(f"fold {k}/{cfg.folds}: finished before, kept")
            continue
        log(f"fold {k}/{cfg.folds}: training")
        run_fold(accelerator, cfg, manifest, plan, cv_dir, k, resumed)
        done.add(k)
        if accelerator.is_main_process:
            atomic_write_json(cv_dir / PROGRESS, {"folds_done": sorted(done)})
        accelerator.wait_for_everyone()
    summarise(accelerator, cfg, manifest, plan, cv_dir, log)
    return cv_dir


def run_fold(
    accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, plan: dict, cv_dir: Path, k: int, resumed: bool
) -> None:
    """Train fold k in cv_dir/fold_k/ (a normal run directory), resuming it if a resumed CV left it unfinished."""
    fold_dir = cv_dir / f"fold_{k}"
    resume_run = resume_from = None
    if resumed and fold_dir.is_dir():  # a resumed CV's unfinished fold: on at its last checkpoint
        resume_run, resume_from = checkpoints.resolve_resume(fold_dir)
    # The fold is a plain run: folds=None; it always evaluates its held-out fold (its "test" split).
    fold_cfg = dataclasses.replace(cfg, folds=None, output_dir=str(cv_dir), test=True, resume=None)
    set_seed(cfg.seed)  # the same start for a fold whether or not the folds before it ran in this process
    fit_run(
        accelerator,
        fold_cfg,
        with_splits(manifest, fold_splits(plan, k), [], names={"test": f"held-out fold {k}"}),
        resume_run=resume_run,
        resume_from=resume_from,
        run_name=fold_dir.name,
        startup=False,
        run_note={"cross_validation": {"dir": str(cv_dir), "fold": k, "folds": cfg.folds, "test": "the held-out fold"}},
    )
    release(accelerator)


def release(accelerator: Accelerator) -> None:
    """Forget the fold's model, optimizer, loaders and schedule, so the next fold's checkpoints hold only its own."""
    accelerator.free_memory()
    # free_memory leaves the objects of register_for_checkpointing (the LR schedule), and save_state/load_state
    # would then carry every earlier fold's schedule too.
    accelerator._custom_objects.clear()
