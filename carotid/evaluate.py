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

from carotid.commands import EvaluateOptions, parse_evaluate_args
from carotid.config import DEFAULT_BOOTSTRAP, DEFAULT_SEED
from carotid.errors import UserError, run_cli
from carotid.text import plural

if TYPE_CHECKING:
    from carotid.data.discovery import Frame

DATA_OPTIONS = (
    "root_dir",
    "label_excel",
    "sheet",
    "header_row",
    "id_column",
    "label_column",
    "strict_matching",
    "max_imgs_per_person",
)


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
    val_persons: list[str] | None = None  # the run's validation persons, when something is chosen on them


def plan_evaluation(args: EvaluateOptions) -> EvalPlan:
    """Resolve model file, persons, data paths and output folder; every mistake is a UserError."""
    cap = None if args.max_imgs_per_person == 0 else args.max_imgs_per_person
    given = {key: getattr(args, key) for key in DATA_OPTIONS} | {"max_imgs_per_person": cap}
    if args.run_dir:
        plan = _plan_run(args, given)
        if args.calibrate or args.operating_point:
            from carotid.training.run_dir import read_splits

            plan.val_persons = list(read_splits(plan.run_dir).get("val") or [])
            if not plan.val_persons:
                raise UserError(
                    f"--calibrate and --operating-point are chosen on the validation persons, and {plan.run_dir} "
                    "has none",
                    "drop them (the model file's own are used), or evaluate a run trained with --val-ratio > 0",
                )
        return plan
    if args.calibrate or args.operating_point:
        raise UserError(
            "--calibrate and --operating-point are chosen on a run's validation persons",
            "pass --run-dir RUN (external validation uses the model file's temperature and operating points)",
        )
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


def collect_frames(plan: EvalPlan, class_names: list[str], columns: list[str] = ()) -> tuple[list[Frame], dict]:
    """(the frames, labelled with the model's class indices; the data context for metrics.json, with the
    sheet `columns` per person under "columns"). Main process only."""
    from carotid.data.check import startup_lines
    from carotid.data.labels import read_labels, read_person_columns
    from carotid.data.manifest import collect_persons, data_block
    from carotid.files import file_sha256

    data = plan.data
    # The same reader as training; a spelling variant of a class ('Plaque') takes the model's spelling.
    table = read_labels(
        data["label_excel"],
        data["sheet"],
        data["id_column"],
        data["label_column"],
        min_classes=1,
        header_row=data["header_row"],
        known_classes=class_names,
    )
    unknown = sorted(set(table.class_names) - set(class_names))
    if unknown:
        raise UserError(
            f"label(s) {unknown} of {data['label_excel']} are not classes of the model {class_names}",
            "use labels with the model's class names (check --label-column)",
        )
    # No start-up sample: the evaluation decodes every frame once and reports each failure then.
    manifest = collect_persons(
        data["root_dir"],
        table,
        data["max_imgs_per_person"],
        persons=plan.persons,
        strict_matching=bool(data["strict_matching"]),
        sample=0,
    )
    index = {name: i for i, name in enumerate(class_names)}
    frames = [dataclasses.replace(f, label=index[manifest.class_names[f.label]]) for f in manifest.frames_of()]
    report = manifest.report
    notes = manifest.left_out_notes() if plan.persons is None else []
    if plan.label_sha256 and file_sha256(data["label_excel"]) != plan.label_sha256:
        notes.append(
            f"{data['label_excel']} differs from the label file the run was trained with; labels may have changed"
        )
    values = {}
    if columns:
        values, column_notes = read_person_columns(data["label_excel"], table.sheet, table.id_column, list(columns))
        notes += column_notes
    context = {
        "columns": values,
        "run_dir": str(plan.run_dir) if plan.run_dir else None,
        "data": {
            k: str(Path(data[k]).resolve()) if k in ("root_dir", "label_excel") else data[k] for k in DATA_OPTIONS
        },
        "data_notes": list(table.notes) + list(table.warnings) + report["warnings"] + notes,
        # What the console shows first: the start-up block, the frames found (no colour check before the
        # evaluation's decode), then notes on persons left out.
        "startup": data_block(report, str(data["label_excel"]))
        + startup_lines(report, in_channels=3)
        + [f"note: {note}" for note in notes],
        "unreadable_images": [
            u | {"path": str(Path(data["root_dir"]) / u["path"])} for u in report["unreadable_images"]
        ],
        "persons": sorted(manifest.frames),
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
    columns = list(dict.fromkeys(args.subgroup_column + ([args.reader_column] if args.reader_column else [])))
    frames, context = on_main(accelerator, lambda: collect_frames(plan, model_file.class_names, columns))
    for line in context.pop("startup"):
        log(line)
    if plan.val_persons:
        model_file = choose_again(accelerator, args, plan, model_file, log)
        plan.model_path = plan.out_dir / "model.pth"  # the file that gives these numbers
    log(
        f"evaluating {plan.model_path} on {plan.split} ({plural(len(frames), 'frame')}) "
        f"with {plural(accelerator.num_processes, 'process', 'processes')}"
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
        subgroups={c: context["columns"][c] for c in args.subgroup_column},
        subgroup_min_persons=args.subgroup_min_persons,
        heatmaps=args.heatmaps,
        failures=args.failures,
    )
    if args.reader_column and accelerator.is_main_process:
        score_reader(args, plan, model_file, frames, context, log)
    accelerator.wait_for_everyone()
    return 0


def choose_again(accelerator, args: EvaluateOptions, plan: EvalPlan, model_file, log):
    """--calibrate / --operating-point: the temperature, threshold and operating points chosen on the run's
    validation persons; the model file with them is written to OUT/model.pth for carotid-predict."""
    import numpy as np

    from carotid.evaluation.inference import run_inference
    from carotid.evaluation.selection import ValidationOutput, choose_on_validation
    from carotid.training.runtime import on_main

    val_plan = dataclasses.replace(plan, persons=plan.val_persons)
    val_frames, _ = on_main(accelerator, lambda: collect_frames(val_plan, model_file.class_names))
    preds = run_inference(
        accelerator,
        model_file.build_model(),
        model_file,
        val_frames,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache=args.cache,
        cache_dir=args.cache_dir,
    )
    choice = choose_on_validation(
        ValidationOutput(preds.labels, preds.logits, np.asarray(preds.person_ids), preds.probs),
        aggregation=args.person_aggregation or model_file.aggregation,
        positive_index=model_file.positive_index,
        calibrate=args.calibrate,
        operating_points=args.operating_point or [p["name"] for p in model_file.operating_points],
        temperature=model_file.temperature,
        temperature_source=model_file.temperature_source,
    )
    keep_threshold = not args.calibrate  # a new temperature moves the person probabilities: re-choose Youden
    chosen = dataclasses.replace(
        model_file,
        temperature=choice["temperature"],
        temperature_source=choice["temperature_source"],
        operating_points=choice["operating_points"],
        threshold=model_file.threshold if keep_threshold else choice["threshold"],
        threshold_source=model_file.threshold_source if keep_threshold else choice["threshold_source"],
    )
    for note in choice["notes"]:
        log(f"note: {note}")
    if choice["temperature"] is not None:
        log(f"temperature {choice['temperature']:.3f} ({choice['temperature_source']})")
    if accelerator.is_main_process:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        chosen.save(plan.out_dir / "model.pth")
        log(f"model file with these choices: {plan.out_dir / 'model.pth'}")
    accelerator.wait_for_everyone()
    return chosen


def score_reader(args: EvaluateOptions, plan: EvalPlan, model_file, frames: list[Frame], context: dict, log) -> None:
    """--reader-column: the reader's evaluation folder beside the model's, on the same persons."""
    from collections import Counter

    from carotid.evaluation.reader import evaluate_reader, format_reader, reader_out_dir

    n_frames = Counter(f.person_id for f in frames)
    persons = {f.person_id: (f.label, n_frames[f.person_id]) for f in frames}
    out = reader_out_dir(plan.out_dir, args.reader_column)
    report = evaluate_reader(
        args.reader_column,
        context["columns"][args.reader_column],
        persons,
        model_file.class_names,
        model_file.positive_index,
        out,
        threshold=args.reader_threshold,
        split=plan.split,
        bootstrap=plan.bootstrap,
        seed=plan.seed,
        data_notes=context["data_notes"],
    )
    for note in report["data_notes"][len(context["data_notes"]) :] + report["warnings"]:
        log(f"note: {note}")
    log(format_reader(report))
    log(f"reader evaluation written to {out}\ncompare with: python -m carotid.compare {plan.out_dir} {out}")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
