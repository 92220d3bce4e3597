"""What an evaluation evaluates: the model file, the persons, the data and the output folder (`EvalPlan`),
resolved from the evaluate options and the run directory, and the labelled frames read for it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from carotid.core.errors import UserError
from carotid.core.files import file_sha256
from carotid.core.run_dir import RunDir, read_run_config, read_splits
from carotid.data.folders.readable import startup_lines
from carotid.data.frames.frame import Frame
from carotid.data.manifest import collect_persons, data_block
from carotid.data.sheet.labels import read_labels
from carotid.data.sheet.person_columns import read_person_columns
from carotid.evaluation.registry import CI_METHODS, DEFAULT_BOOTSTRAP, DEFAULT_SEED

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
    note: str | None = None  # what the output folder is, when it is not the one the user may expect
    ci: str = CI_METHODS[0]  # how per-person proportions get their CI (--ci, else the run's)


def plan_evaluation(args) -> EvalPlan:
    """Resolve model file, persons, data paths and output folder; every mistake is a UserError.

    `args` are the evaluate command's options (`carotid.commands.EvaluateOptions`, a layer above this one)."""
    cap = None if args.max_imgs_per_person == 0 else args.max_imgs_per_person
    given = {key: getattr(args, key) for key in DATA_OPTIONS} | {"max_imgs_per_person": cap}
    if args.run_dir:
        plan = _plan_run(args, given)
        if args.calibrate or args.operating_point:
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
        ci=_pick(args.ci, CI_METHODS[0]),
    )


def _plan_run(args, given: dict) -> EvalPlan:
    run = Path(args.run_dir)
    if not run.is_dir():
        raise UserError(
            f"run dir not found: {run}", "pass a folder made by carotid-train (output/train_YYYYMMDD_HHMMSS)"
        )

    config = read_run_config(run)
    options, splits, split = config["options"], read_splits(run), args.split or "test"
    if not splits.get(split):
        raise UserError(f"the {split} split of {run} is empty", "pick another --split")
    model = args.model or "best"
    model_path = RunDir(run).model(model) if model in ("best", "final") else Path(model)
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
    out, note = Path(args.out) if args.out else RunDir(run).evaluation(split, name).path, None
    if not args.out and (out / "metrics.json").is_file():  # an earlier evaluation (training's own) stays
        taken, number = out, 2
        while (out := taken.with_name(f"{taken.name}_{number}")).exists():
            number += 1
        note = f"{taken} holds an earlier evaluation, kept; this one goes to {out} (--out chooses the folder)"
    plan = EvalPlan(
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
    plan.note = note
    plan.ci = _pick(args.ci, options.get("ci", CI_METHODS[0]))
    return plan


def _pick(value, default):
    return default if value is None else value


def external_out_dir(model_path: Path, root_dir: str) -> Path:
    """RUN/eval_external_<data folder>_<model>/ for a model inside a run's models/, else beside the model file."""
    name = {"best_model": "best", "final_model": "final"}.get(model_path.stem, model_path.stem)
    folder = model_path.parent
    if folder.name == "models" and RunDir(folder.parent).is_run():
        folder = folder.parent
    return folder / f"eval_external_{Path(root_dir).resolve().name}_{name}"


def _changed_labels(plan: EvalPlan, manifest, label_excel: str) -> tuple[bool, str]:
    """(True, a warning) when evaluated persons have another label than when the run was trained (the run's
    data_report.json holds each person's label), else (False, a note that the file differs)."""
    differs = f"{label_excel} differs from the label file the run was trained with"
    try:
        trained = json.loads(RunDir(plan.run_dir).data_report.read_text(encoding="utf-8")).get("person_labels")
    except (OSError, ValueError, AttributeError, TypeError):
        trained = None
    if not isinstance(trained, dict):
        return False, f"{differs}; labels may have changed"
    now = {p: manifest.class_names[k] for p, k in manifest.person_labels.items()}
    changed = sorted(p for p in now if p in trained and trained[p] != now[p])
    if not changed:
        return False, f"{differs}, but the {len(now)} persons evaluated have the labels they had in training"
    shown = ", ".join(f"'{p}' {trained[p]!r} → {now[p]!r}" for p in changed[:3])
    return True, (
        f"{len(changed)} of the {len(now)} persons evaluated have another label than when the run was "
        f"trained (e.g. {shown}; {differs}): the metrics use the new labels"
    )


def collect_frames(plan: EvalPlan, class_names: list[str], columns: list[str] = ()) -> tuple[list[Frame], dict]:
    """(the frames, labelled with the model's class indices; the data context for metrics.json, with the
    sheet `columns` per person under "columns"). Main process only."""

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
    if plan.persons is not None:
        report["classes_of"] = f"the {len(manifest.frames)} {plan.split} persons evaluated"
    notes = manifest.left_out_notes() if plan.persons is None else []
    if plan.label_sha256 and file_sha256(data["label_excel"]) != plan.label_sha256:
        warn, text = _changed_labels(plan, manifest, data["label_excel"])
        (report["warnings"] if warn else notes).append(text)
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
        "data_notes": list(table.notes) + report["warnings"] + notes,  # report["warnings"] holds table.warnings
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
