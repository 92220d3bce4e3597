"""Evaluate a model file per image and per person, with person-bootstrap confidence intervals.

    python -m carotid.evaluate --run-dir RUN [--split test|val|train] [--model best|final|PATH]
    python -m carotid.evaluate --model PATH --root-dir DATA --label-excel labels.xlsx     (external validation)

Also under `accelerate launch` with any number of processes: each process predicts its share of the
frames, every frame comes back exactly once, and the main process computes the metrics and writes
metrics.json, predictions.csv, person_predictions.csv, roc_curve.png and confusion_matrix.png.
See docs/EVALUATION.md for every key of metrics.json.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid import checkpoint as ckpt
from carotid.config import ArgumentParser
from carotid.data import collect_persons
from carotid.errors import UserError, run_cli
from carotid.labels import read_labels
from carotid.metrics import bootstrap_ci, classification_metrics
from carotid.plots import plot_confusion, plot_roc
from carotid.inference import (FramePredictions, PersonPredictions, check_cache_available, decision_threshold,
                               load_model_for_inference, person_predictions, positive_index, run_inference,
                               write_prediction_tables)
from carotid.runtime import RunLog, build_accelerator, on_main

DATA_OPTIONS = ("root_dir", "label_excel", "sheet", "id_column", "label_column", "max_imgs_per_person")
DEFAULT_SEED, DEFAULT_BOOTSTRAP = 42, 1000  # carotid-train's defaults, so both give the same intervals


# ---------------------------------------------------------------------------------------------
# Options and what to evaluate
# ---------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="carotid-evaluate", allow_abbrev=False,
                            description="Evaluate a carotid model file per image and per person, with 95% CIs.")
    add = parser.add_argument
    add("--run-dir", metavar="RUN", help="A run directory made by carotid-train: its splits.json, config.yaml and models/.")
    add("--model", metavar="best|final|PATH", help="RUN/models/best_model.pth (default), final_model.pth, or any model file.")
    add("--split", choices=("test", "val", "train"), help="Which persons of RUN's splits.json to evaluate (default: test).")
    add("--root-dir", help="Folder of person folders (default: the run's). Needed without --run-dir.")
    add("--label-excel", help="Excel label file (default: the run's). Needed without --run-dir.")
    add("--sheet", help="Sheet of the label file (default: the run's, else the first).")
    add("--id-column", help="Header of the person-ID column (default: the run's, else recognised).")
    add("--label-column", help="Header of the label column (default: the run's, else recognised).")
    add("--max-imgs-per-person", type=int, metavar="N", help="Frames per person, spread evenly; 0 = all "
        "(default: the run's cap; without --run-dir all frames).")
    add("--out", metavar="DIR",
        help="Output folder (default: RUN/eval_<split>_<model>/; external validation: see docs/EVALUATION.md).")
    add("--bootstrap", type=int, metavar="N", help="Person resamples for the 95%% CIs, 0 = none (default: the run's, else 1000).")
    add("--seed", type=int, help="Seed of the bootstrap (default: the run's seed, else 42).")
    add("--person-aggregation", choices=("mean", "median", "max"),
        help="Frame → person probability (default: the model file's).")
    add("--threshold", type=float, metavar="T",
        help="Binary: positive if P(positive) ≥ T (default: the model file's Youden threshold).")
    add("--batch-size", type=int, default=64, help="Frames per batch on each process (default: 64).")
    add("--num-workers", type=int, default=4, help="DataLoader workers per process (default: 4).")
    add("--cache", action="store_true", help="Read frames through the decoded-frame cache (see carotid-train --cache).")
    add("--cache-dir", help="Where the frame cache lives (default: $XDG_CACHE_HOME/carotid).")
    return parser


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


def check_args(args) -> None:
    for name, low in (("bootstrap", 0), ("batch_size", 1), ("num_workers", 0), ("max_imgs_per_person", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be ≥ {low}, got {value}", "see carotid-evaluate --help")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}", "pass a probability such as 0.5")


def plan_evaluation(args) -> EvalPlan:
    """Resolve model file, persons, data paths and output folder; every mistake is a UserError."""
    cap = None if args.max_imgs_per_person == 0 else args.max_imgs_per_person
    given = {key: getattr(args, key) for key in DATA_OPTIONS} | {"max_imgs_per_person": cap}
    if args.run_dir:
        return _plan_run(args, given)
    if args.split:
        raise UserError("--split needs --run-dir", "pass --run-dir RUN, or leave --split out to evaluate every labelled person")
    if args.model in (None, "best", "final"):
        raise UserError("nothing to evaluate", "pass --run-dir RUN, or --model PATH --root-dir DATA --label-excel labels.xlsx")
    if not (args.root_dir and args.label_excel):
        raise UserError("--model without --run-dir (external validation) needs the data",
                        "pass --root-dir DATA and --label-excel labels.xlsx")
    model_path = Path(args.model)
    out = Path(args.out) if args.out else external_out_dir(model_path, args.root_dir)
    return EvalPlan(model_path, "external", out, given, None, None, _pick(args.seed, DEFAULT_SEED),
                    _pick(args.bootstrap, DEFAULT_BOOTSTRAP), None)


def _plan_run(args, given: dict) -> EvalPlan:
    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(f"run dir not found: {run}", "pass a folder made by carotid-train (output/train_YYYYMMDD_HHMMSS)")
    config = ckpt.read_run_config(run)
    options, splits, split = config["options"], ckpt.read_splits(run), args.split or "test"
    if not splits.get(split):
        raise UserError(f"the {split} split of {run} is empty", "pick another --split")
    model = args.model or "best"
    model_path = run / "models" / f"{model}_model.pth" if model in ("best", "final") else Path(model)
    data = {key: given[key] if given[key] is not None else options.get(key) for key in DATA_OPTIONS}
    if args.max_imgs_per_person == 0:
        data["max_imgs_per_person"] = None
    for key, flag in (("root_dir", "--root-dir"), ("label_excel", "--label-excel")):
        if given[key] is None and not (data[key] and Path(data[key]).exists()):
            raise UserError(f"the run's {key.replace('_', ' ')} {data[key]} (from {run / 'config.yaml'}) is not there",
                            f"pass {flag} with the data's new location")
    name = model if model in ("best", "final") else model_path.stem
    out = Path(args.out) if args.out else run / f"eval_{split}_{name}"
    return EvalPlan(model_path, split, out, data, list(splits[split]), run, _pick(args.seed, options.get("seed", DEFAULT_SEED)),
                    _pick(args.bootstrap, options.get("bootstrap", DEFAULT_BOOTSTRAP)), config.get("label_file_sha256"))


def _pick(value, default):
    return default if value is None else value


def external_out_dir(model_path: Path, root_dir: str) -> Path:
    """RUN/eval_external_<data folder>_<model>/ for a model inside a run's models/, else beside the model file."""
    name = {"best_model": "best", "final_model": "final"}.get(model_path.stem, model_path.stem)
    folder = model_path.parent
    if folder.name == "models" and (folder.parent / "config.yaml").is_file():
        folder = folder.parent
    return folder / f"eval_external_{Path(root_dir).resolve().name}_{name}"


def collect_items(plan: EvalPlan, class_names: list[str]) -> tuple[list[tuple[str, int, str]], dict]:
    """(frames as (path, model class index, person_id), the data context for metrics.json). Main process only."""
    data = plan.data
    table = read_labels(data["label_excel"], data["sheet"], data["id_column"], data["label_column"], min_classes=1)
    unknown = sorted(set(table.class_names) - set(class_names))
    if unknown:
        raise UserError(f"label(s) {unknown} of {data['label_excel']} are not classes of the model {class_names}",
                        "use labels with the model's class names (check --label-column)")
    manifest = collect_persons(data["root_dir"], table, data["max_imgs_per_person"], persons=plan.persons)
    index = {name: i for i, name in enumerate(class_names)}
    items = [(path, index[manifest.class_names[label]], person) for path, label, person in manifest.items()]
    report = manifest.report
    notes = list(table.notes) + (manifest.left_out_notes() if plan.persons is None else [])
    if plan.label_sha256 and ckpt.file_sha256(data["label_excel"]) != plan.label_sha256:
        notes.append(f"{data['label_excel']} differs from the label file the run was trained with; labels may have changed")
    context = {"run_dir": str(plan.run_dir) if plan.run_dir else None,
               "data": {k: str(Path(data[k]).resolve()) if k in ("root_dir", "label_excel") else data[k] for k in DATA_OPTIONS},
               "data_notes": notes,
               "unreadable_images": [str(Path(data["root_dir"]) / u["path"]) for u in report["unreadable_images"]]}
    return items, context


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def evaluate_model(accelerator: Accelerator, model_path: str | Path, items: list[tuple[str, int, str]], out_dir: str | Path, *,
                   split: str, batch_size: int = 64, num_workers: int = 4, bootstrap: int = 1000, aggregation: str | None = None,
                   seed: int = 0, threshold: float | None = None, cache: bool = False, cache_dir: str | None = None,
                   log: Callable[[str], None] = print, loaded: tuple[torch.nn.Module, dict] | None = None,
                   context: dict | None = None) -> dict | None:
    """Predict every frame of `items` (all processes), then write the evaluation (main process).

    Returns the metrics.json dict on the main process, None elsewhere. `loaded` is the (model, metadata)
    of model_path when the caller has loaded it already; `context` adds the data's provenance."""
    model, data = loaded or load_model_for_inference(model_path)
    preds = run_inference(accelerator, model, data, items, batch_size=batch_size, num_workers=num_workers,
                          cache=cache, cache_dir=cache_dir)
    if len(preds.paths) == 0:
        raise UserError(f"none of the {len(items)} frames could be decoded", "check the image files")
    report = None
    if accelerator.is_main_process:
        report, persons = compute_report(preds, data, model_path=str(model_path), split=split, bootstrap=bootstrap,
                                         aggregation=aggregation or data.get("person_aggregation", "mean"), seed=seed,
                                         threshold=threshold, context=context or {})
        write_evaluation(report, preds, persons, data, Path(out_dir))
        for note in report["warnings"]:
            log(f"warning: {note}")
        log(format_table(report))
        log(f"evaluation written to {out_dir}")
    accelerator.wait_for_everyone()
    return report


def compute_report(preds: FramePredictions, data: dict, *, model_path: str, split: str, bootstrap: int, aggregation: str,
                   seed: int, threshold: float | None, context: dict) -> tuple[dict, PersonPredictions]:
    """(the metrics.json dict, the per-person table it was computed from)."""
    class_names, positive = list(data["class_names"]), positive_index(data)
    threshold, source = decision_threshold(data, threshold)
    operating_point = 0.5 if threshold is None else threshold  # multi-class metrics ignore it
    persons = person_predictions(preds, aggregation, positive, labelled=True)
    image, image_notes = classification_metrics(preds.labels, preds.probs, class_names, positive, operating_point)
    person, person_notes = classification_metrics(persons.labels, persons.probs, class_names, positive, operating_point)
    ci = None
    if bootstrap:
        ci = bootstrap_ci(preds.person_ids, preds.labels, preds.probs, n_classes=len(class_names), positive_index=positive,
                          threshold=operating_point, n_resamples=bootstrap, seed=seed, aggregation=aggregation)
    counts = {level: dict(zip(class_names, np.bincount(y, minlength=len(class_names)).tolist()))
              for level, y in (("images", preds.labels), ("persons", persons.labels))}
    report = {"model_file": model_path, "arch": data["arch"], "model_epoch": data.get("epoch"), "split": split,
              "run_dir": context.get("run_dir"), "data": context.get("data"), "data_notes": context.get("data_notes", []),
              "class_names": class_names, "positive_class": class_names[positive] if threshold is not None else None,
              "n_images": int(len(preds.labels)), "n_persons": int(len(persons.person_ids)), "counts": counts,
              "person_aggregation": aggregation, "threshold": threshold, "threshold_source": source,
              "image": image, "person": person, "ci": ci,
              "warnings": [f"image: {n}" for n in image_notes] + [f"person: {n}" for n in person_notes],
              "unreadable_images": context.get("unreadable_images", []) + preds.unreadable}
    return report, persons


def write_evaluation(report: dict, preds: FramePredictions, persons: PersonPredictions, data: dict, out_dir: Path) -> None:
    """metrics.json, predictions.csv, person_predictions.csv and the two figures, each written atomically."""
    class_names, positive, threshold = report["class_names"], positive_index(data), report["threshold"]
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(out_dir / "metrics.json", report)
    write_prediction_tables(out_dir / "predictions.csv", out_dir / "person_predictions.csv", preds, persons, class_names,
                            threshold, positive)
    levels = {"image": (preds.labels, preds.probs), "person": (persons.labels, persons.probs)}
    points = {level: report[level] for level in levels} if threshold is not None else None
    plot_roc(levels, class_names, positive, out_dir / "roc_curve.png", operating_points=points)
    plot_confusion({level: report[level]["confusion_matrix"] for level in levels}, class_names, out_dir / "confusion_matrix.png")


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(report: dict, level: str, key: str) -> str:
    interval = ((report.get("ci") or {}).get(level) or {}).get(key)
    return _number(report[level].get(key)) + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")


def format_table(report: dict) -> str:
    """A short table: each metric per image and per person, with its 95% CI where one was drawn."""
    binary = report["threshold"] is not None
    head = (f"{report['split']}: {report['n_images']} images, {report['n_persons']} persons; "
            f"person = {report['person_aggregation']} of frames")
    if binary:
        head += f"; threshold {report['threshold']:.3f} ({report['threshold_source']})"
    keys = ["auc", "accuracy", "balanced_accuracy", "f1"] + (["sensitivity", "specificity", "ppv", "npv"] if binary else [])
    lines = [head, f"{'metric':<20}{'per image':<26}per person"]
    lines += [f"{key:<20}{_cell(report, 'image', key):<26}{_cell(report, 'person', key)}" for key in keys]
    if binary:
        at_half = report["person"]["at_threshold_0.5"]
        lines.append("at threshold 0.5, per person: " + ", ".join(
            f"{key} {_number(at_half[key])}" for key in ("accuracy", "sensitivity", "specificity")))
    else:
        for name, values in report["person"]["per_class"].items():
            shown = ", ".join(f"{key} {_number(values[key])}" for key in values)
            lines.append(f"per person, class {name}: {shown}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def evaluate(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    plan = plan_evaluation(args)
    check_cache_available(args.cache)
    ckpt.check_writable(plan.out_dir)
    model, data = load_model_for_inference(plan.model_path)
    accelerator, precision_note = build_accelerator(None, 1, None, 60)
    log = RunLog(accelerator)
    if precision_note:
        log(precision_note)
    items, context = on_main(accelerator, lambda: collect_items(plan, list(data["class_names"])))
    for note in context["data_notes"]:
        log(f"note: {note}")
    log(f"evaluating {plan.model_path} on {plan.split} ({len(items)} frames) with {accelerator.num_processes} process(es)")
    evaluate_model(accelerator, plan.model_path, items, plan.out_dir, split=plan.split, batch_size=args.batch_size,
                   num_workers=args.num_workers, bootstrap=plan.bootstrap, aggregation=args.person_aggregation,
                   seed=plan.seed, threshold=args.threshold, cache=args.cache, cache_dir=args.cache_dir, log=log,
                   loaded=(model, data), context=context)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
