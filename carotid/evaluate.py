"""Evaluate a model file per image and per person, with person-bootstrap confidence intervals.

    python -m carotid.evaluate --run-dir RUN [--split test|val|train] [--model best|final|PATH]
    python -m carotid.evaluate --model PATH --root-dir DATA --label-excel labels.xlsx     (external validation)

Also under `accelerate launch` with any number of processes: each process predicts its share of the
frames, every frame comes back exactly once, and the main process computes the metrics and writes
metrics.json, predictions.csv, person_predictions.csv, roc_curve.png and confusion_matrix.png.
See docs/EVALUATION.md for every key of metrics.json.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.config import DEFAULT_BOOTSTRAP, DEFAULT_SEED, EvaluateOptions, parse_evaluate_args
from carotid.errors import UserError, run_cli

if TYPE_CHECKING:
    from carotid.data.discovery import Frame

DATA_OPTIONS = ("root_dir", "label_excel", "sheet", "id_column", "label_column", "max_imgs_per_person")


# ---------------------------------------------------------------------------------------------
# Options and what to evaluate
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalPlan:
    """Everything resolved from the flags and the run directory, before any data is read."""

    model_path: Path
    split: str
    out_dir: Path
    data: dict
    persons: list[str] | None  # the split's person IDs; None = every labelled person (external validation)
    run_dir: Path | None
    seed: int
    bootstrap: int
    label_sha256: str | None  # of the label file the run was trained with


def plan_evaluation(args: EvaluateOptions) -> EvalPlan:
    """Resolve model file, persons, data paths and output folder; every mistake is a UserError."""
    cap = None if args.max_imgs_per_person == 0 else args.max_imgs_per_person
    given = {key: getattr(args, key) for key in DATA_OPTIONS} | {"max_imgs_per_person": cap}
    if args.run_dir:
        return _plan_run(args, given)
    if args.split:
        raise UserError(
            "--split needs --run-dir", "pass --run-dir RUN, or leave --split out to evaluate every labelled person"
        )
    if args.model in (None, "best", "final"):
        raise UserError(
            "nothing to evaluate", "pass --run-dir RUN, or --model PATH --root-dir DATA --label-excel labels.xlsx"
        )
    if not (args.root_dir and args.label_excel):
        raise UserError(
            "--model without --run-dir (external validation) needs the data",
            "pass --root-dir DATA and --label-excel labels.xlsx",
        )
    model_path = Path(args.model)
    out = Path(args.out) if args.out else external_out_dir(model_path, args.root_dir)
    return EvalPlan(
        model_path,
        "external",
        out,
        given,
        None,
        None,
        _pick(args.seed, DEFAULT_SEED),
        _pick(args.bootstrap, DEFAULT_BOOTSTRAP),
        None,
    )


def _plan_run(args: EvaluateOptions, given: dict) -> EvalPlan:
    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(
            f"run dir not found: {run}", "pass a folder made by carotid-train (output/train_YYYYMMDD_HHMMSS)"
        )
    from carotid.training.run_dir import read_run_config, read_splits

    config = read_run_config(run)
    options, splits, split = config["options"], read_splits(run), args.split or "test"
    if not splits.get(split):
        raise UserError(f"the {split} split of {run} is empty", "pick another --split")
    model = args.model or "best"
    model_path = run / "models" / f"{model}_model.pth" if model in ("best", "final") else Path(model)
    data = {key: given[key] if given[key] is not None else options.get(key) for key in DATA_OPTIONS}
    if args.max_imgs_per_person == 0:
        data["max_imgs_per_person"] = None
    for key, flag in (("root_dir", "--root-dir"), ("label_excel", "--label-excel")):
        if given[key] is None and not (data[key] and Path(data[key]).exists()):
            raise UserError(
                f"the run's {key.replace('_', ' ')} {data[key]} (from {run / 'config.yaml'}) is not there",
                f"pass {flag} with the data's new location",
            )
    name = model if model in ("best", "final") else model_path.stem
    out = Path(args.out) if args.out else run / f"eval_{split}_{name}"
    return EvalPlan(
        model_path,
        split,
        out,
        data,
        list(splits[split]),
        run,
        _pick(args.seed, options.get("seed", DEFAULT_SEED)),
        _pick(args.bootstrap, options.get("bootstrap", DEFAULT_BOOTSTRAP)),
        config.get("label_file_sha256"),
    )


def _pick(value, default):
    return default if value is None else value


def external_out_dir(model_path: Path, root_dir: str) -> Path:
    """RUN/eval_external_<data folder>_<model>/ for a model inside a run's models/, else beside the model file."""
    name = {"best_model": "best", "final_model": "final"}.get(model_path.stem, model_path.stem)
    folder = model_path.parent
    if folder.name == "models" and (folder.parent / "config.yaml").is_file():
        folder = folder.parent
    return folder / f"eval_external_{Path(root_dir).resolve().name}_{name}"


def collect_frames(plan: EvalPlan, class_names: list[str]) -> tuple[list[Frame], dict]:
    """(the frames, labelled with the model's class indices; the data context for metrics.json). Main process only."""
    from carotid.data.check import startup_lines
    from carotid.data.labels import read_labels
    from carotid.data.manifest import collect_persons
    from carotid.files import file_sha256

    data = plan.data
    table = read_labels(data["label_excel"], data["sheet"], data["id_column"], data["label_column"], min_classes=1)
    unknown = sorted(set(table.class_names) - set(class_names))
    if unknown:
        raise UserError(
            f"label(s) {unknown} of {data['label_excel']} are not classes of the model {class_names}",
            "use labels with the model's class names (check --label-column)",
        )
    # No start-up sample: the evaluation decodes every frame once and reports each failure then.
    manifest = collect_persons(data["root_dir"], table, data["max_imgs_per_person"], persons=plan.persons, sample=0)
    index = {name: i for i, name in enumerate(class_names)}
    frames = [dataclasses.replace(f, label=index[manifest.class_names[f.label]]) for f in manifest.frames_of()]
    report = manifest.report
    notes = list(table.notes) + (manifest.left_out_notes() if plan.persons is None else [])
    if plan.label_sha256 and file_sha256(data["label_excel"]) != plan.label_sha256:
        notes.append(
            f"{data['label_excel']} differs from the label file the run was trained with; labels may have changed"
        )
    context = {
        "run_dir": str(plan.run_dir) if plan.run_dir else None,
        "data": {
            k: str(Path(data[k]).resolve()) if k in ("root_dir", "label_excel") else data[k] for k in DATA_OPTIONS
        },
        "data_notes": notes,
        "unreadable_images": [
            u | {"path": str(Path(data["root_dir"]) / u["path"])} for u in report["unreadable_images"]
        ],
        "persons": sorted(manifest.frames),
        "frame_lines": startup_lines(report, in_channels=3),  # no colour check before the evaluation's decode
    }
    return frames, context


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def evaluate(argv: Sequence[str] | None) -> int:
    args = parse_evaluate_args(argv)
    plan = plan_evaluation(args)
    from carotid.evaluation.evaluator import evaluate_model
    from carotid.evaluation.inference import check_cache_available
    from carotid.model.file import ModelFile
    from carotid.training.run_dir import check_writable
    from carotid.training.runtime import RunLog, build_accelerator, on_main

    check_cache_available(args.cache)
    check_writable(plan.out_dir)
    model_file = ModelFile.load(plan.model_path)
    accelerator, precision_note = build_accelerator()
    log = RunLog(accelerator)
    if precision_note:
        log(precision_note)
    frames, context = on_main(accelerator, lambda: collect_frames(plan, model_file.class_names))
    for note in context["data_notes"]:
        log(f"note: {note}")
    for line in context.pop("frame_lines"):
        log(line)
    log(
        f"evaluating {plan.model_path} on {plan.split} ({len(frames)} frames) "
        f"with {accelerator.num_processes} process(es)"
    )
    evaluate_model(
        accelerator,
        plan.model_path,
        frames,
        plan.out_dir,
        split=plan.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        bootstrap=plan.bootstrap,
        aggregation=args.person_aggregation,
        seed=plan.seed,
        threshold=args.threshold,
        cache=args.cache,
        cache_dir=args.cache_dir,
        log=log,
        model_file=model_file,
        context=context,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
