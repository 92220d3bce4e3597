"""Train a carotid-ultrasound classifier: `accelerate launch -m carotid.train --root-dir DATA --label-excel label.xlsx`.

`train(cfg)` reads top to bottom: options (and a resumed run's) → Accelerator → data, read once on the
main process → `carotid.training.fit.fit_run` (model, run directory, Trainer, evaluation of the test split),
or with --folds `carotid.training.cv.cross_validate` (one such run per fold, then the pooled results).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.core.errors import UserError, run_cli
from carotid.training.config import TrainConfig, parse_train_args

# torch, Accelerate and the data, model and training modules are imported inside the functions that
# use them, so `--help` and argument errors answer before any of them loads (tests/test_startup.py).
if TYPE_CHECKING:
    from carotid.data.manifest import DataManifest

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
    from carotid.core import run_dir as run_folder

    saved = run_folder.read_run_config(run_dir)["options"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    merged = {k: v for k, v in saved.items() if k in fields}
    merged.setdefault("global_pool", "avg")  # a run from before --global-pool pooled by its architecture's average
    merged.setdefault("stratified_steps", False)  # and one from before --stratified-steps shuffled its persons plainly
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
    from carotid.core import run_dir as run_folder
    from carotid.data.manifest import SPLITS
    from carotid.data.split import describe_groups, person_groups, split_persons
    from carotid.training.checkpoints import check_resumed_labels
    from carotid.training.fit import read_data, with_splits

    if resume_run is not None:
        trained = run_folder.read_run_config(resume_run).get("class_names")
        splits = run_folder.read_splits(resume_run)
        manifest, _, root_dir, label_excel = read_data(cfg, [p for s in SPLITS for p in splits[s]], trained)
        manifest.report["warnings"] += check_resumed_labels(resume_run, manifest, label_excel)
        return with_splits(manifest, splits, []), root_dir, label_excel
    manifest, table, root_dir, label_excel = read_data(cfg)
    groups = person_groups(sorted(manifest.person_labels), table.groups, manifest.report["persons_sharing_files"])
    splits, notes = split_persons(
        manifest.person_labels, cfg.train_ratio, cfg.val_ratio, cfg.test_ratio, cfg.seed, groups
    )
    if groups is not None:
        notes.insert(0, describe_groups(groups, cfg.group_column))
    return with_splits(manifest, splits, notes), root_dir, label_excel


def train(cfg: TrainConfig, given: set[str] | frozenset = frozenset()) -> Path:
    """Run (or resume) one training run, or with --folds a cross-validation; returns its directory."""
    from accelerate.utils import set_seed

    from carotid.core import run_dir as run_folder
    from carotid.core.runtime import build_accelerator, match_deepspeed_clipping, on_main, strategy_warning
    from carotid.model.registry import check_arch
    from carotid.report.paper import paper_figures
    from carotid.training import checkpoints
    from carotid.training.fit import fit_run

    resume_run = resume_from = None
    if cfg.resume:
        from carotid.training.cv import find_cv_dir

        resume_run = find_cv_dir(cfg.resume)
        if resume_run is None:
            resume_run, resume_from = checkpoints.resolve_resume(cfg.resume)
        cfg = merge_resume(cfg, set(given), resume_run)
    else:
        run_folder.check_writable(cfg.output_dir)
    check_arch(cfg.model)  # a misspelt timm name fails here, before any data is read
    accelerator, precision_note = build_accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        report_to=cfg.report_to,
        dist_timeout_minutes=cfg.dist_timeout_minutes,
        output_dir=cfg.output_dir,
    )
    match_deepspeed_clipping(accelerator, cfg.clip_grad_norm)
    set_seed(cfg.seed)
    notes = [warning for warning in (precision_note, strategy_warning(accelerator)) if warning]
    if cfg.folds:
        # The evaluation modules (scipy, scikit-learn) load only for cross-validation, not before a plain
        # run's first batch.
        from carotid.training.cv import cross_validate

        with paper_figures(cfg.paper_figures):
            return cross_validate(accelerator, cfg, cv_dir=resume_run, notes=notes)
    manifest, root_dir, label_excel = on_main(accelerator, lambda: prepare_data(cfg, resume_run))
    cfg = dataclasses.replace(cfg, root_dir=root_dir, label_excel=label_excel)
    with paper_figures(cfg.paper_figures):
        return fit_run(accelerator, cfg, manifest, resume_run=resume_run, resume_from=resume_from, notes=notes)


def _main(argv: Sequence[str] | None) -> int:
    cfg, given = parse_train_args(argv)
    train(cfg, given)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
