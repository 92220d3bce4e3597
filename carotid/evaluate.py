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
from typing import TYPE_CHECKING

from carotid.commands import EvaluateOptions, parse_evaluate_args
from carotid.core.errors import run_cli
from carotid.core.text import plural

if TYPE_CHECKING:
    from carotid.data.frames.frame import Frame
    from carotid.evaluation.plan import EvalPlan


def evaluate(argv: Sequence[str] | None) -> int:
    args = parse_evaluate_args(argv)
    # The data layer (numpy, Pillow, openpyxl) loads after the arguments parse: --help answers without it.
    from carotid.report.paper import paper_figures

    with paper_figures(args.paper_figures):
        return evaluate_with(args)


def evaluate_with(args: EvaluateOptions) -> int:
    from carotid.evaluation.plan import collect_frames, plan_evaluation
    from carotid.evaluation.seen import seen_persons, seen_warning

    plan = plan_evaluation(args)
    from carotid.core.run_dir import check_output_dir, check_writable
    from carotid.core.runtime import RunLog, build_accelerator, on_main
    from carotid.model.file import ModelFile
    from carotid.report.outputs import evaluate_model

    check_output_dir(plan.out_dir, "--out")
    check_writable(plan.out_dir)
    model_file = ModelFile.load(plan.model_path)
    accelerator, precision_note = build_accelerator()
    log = RunLog(accelerator)
    if precision_note:
        log(precision_note)
    if plan.note:
        log(f"note: {plan.note}")
    columns = list(dict.fromkeys(args.subgroup_column + ([args.reader_column] if args.reader_column else [])))
    frames, context = on_main(accelerator, lambda: collect_frames(plan, model_file.class_names, columns))
    for line in context.pop("startup"):
        log(line)
    if plan.split == "external":  # persons the model trained or validated on make it no external test
        context["seen_by_model"] = seen_persons(plan.model_path, context["persons"])
        if context["seen_by_model"]:
            log(f"warning: {seen_warning(context['seen_by_model'], 'the data')}; metrics.json marks it not external")
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
        ci=plan.ci,
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
    if plan.run_dir is not None and accelerator.is_main_process:
        from carotid.report.html import write_run_report

        log(f"run report (links every evaluation of the run): {write_run_report(plan.run_dir)}")
    accelerator.wait_for_everyone()
    return 0


def choose_again(accelerator, args: EvaluateOptions, plan: EvalPlan, model_file, log):
    """--calibrate / --operating-point: the temperature, threshold and operating points chosen on the run's
    validation persons; the model file with them is written to OUT/model.pth for carotid-predict."""
    import numpy as np

    from carotid.core.runtime import on_main
    from carotid.evaluation.inference import run_inference
    from carotid.evaluation.plan import collect_frames
    from carotid.evaluation.selection import ValidationOutput, choose_on_validation

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
    rows = preds.person_rows() if preds.person_level else preds  # a person model: chosen on one row per person
    choice = choose_on_validation(
        ValidationOutput(rows.labels, rows.logits, np.asarray(rows.person_ids), rows.probs),
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

    from carotid.evaluation.reader_study import evaluate_reader, format_reader, reader_out_dir

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
