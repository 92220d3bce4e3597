"""Apply a model file to unlabelled frames: per-image and per-person predictions.

    python -m carotid.predict --model RUN/models/best_model.pth --input DIR|FILE [--out predictions.csv]

--input is read as one of three layouts (`--layout` forces one; see `carotid.data.folders.layout`): a root of
person folders, one person's folder, or images each on its own; persons are never merged by a guess.
Also under `accelerate launch`; unreadable images are reported and skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.commands import PredictOptions, parse_predict_args
from carotid.core.errors import UserError, run_cli
from carotid.core.text import display_width, pad, plural

if TYPE_CHECKING:
    import numpy as np

    from carotid.evaluation.inference import FramePredictions, PersonPredictions
    from carotid.model.file import ModelFile

MAX_ROWS_SHOWN = 50  # persons listed on the console; the CSV has them all


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def output_paths(args: PredictOptions) -> tuple[Path, Path, Path]:
    """(per-image CSV, per-person CSV, unreadable-images CSV)."""
    from carotid.core.run_dir import check_output_file, check_writable

    source = Path(args.input).resolve()
    out = Path(args.out) if args.out else Path(f"predictions_{source.stem if source.is_file() else source.name}.csv")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", "pass a file name such as predictions.csv")
    check_writable(out.parent if str(out.parent) else Path("."))
    suffix = out.suffix or ".csv"
    paths = out, out.with_name(f"{out.stem}_persons{suffix}"), out.with_name(f"{out.stem}_unreadable{suffix}")
    inputs = {"the model file (--model)": args.model, "the input (--input)": args.input}
    for path in paths:
        check_output_file(path, "--out" if path == out else "--out's companion", inputs, (".csv", ".tsv", ".txt"))
    return paths


def summary_table(
    persons: PersonPredictions, predicted: np.ndarray, class_names: list[str], positive: int, binary: bool
) -> str:
    """Person ID, frames, the probability that decided, and the predicted class; at most MAX_ROWS_SHOWN rows."""
    score = f"P({class_names[positive]})" if binary else "P(predicted)"
    rows = list(zip(persons.person_ids, persons.n_frames, persons.probs, predicted))[:MAX_ROWS_SHOWN]
    # Columns are measured in terminal cells: a Chinese ID or class name is twice as wide as its length.
    width = max([display_width("person_id")] + [display_width(str(r[0])) for r in rows]) + 2
    score_width = max(12, display_width(score))
    lines = [f"{pad('person_id', width)}{'frames':>7}  {pad(score, score_width, '>')}  predicted"]
    for person, n, row, k in rows:
        probability = f"{row[positive if binary else k]:.3f}"
        lines.append(f"{pad(str(person), width)}{n:>7}  {pad(probability, score_width, '>')}  {class_names[k]}")
    if len(persons.person_ids) > MAX_ROWS_SHOWN:
        lines.append(f"… {plural(len(persons.person_ids) - MAX_ROWS_SHOWN, 'more person')} in the CSV")
    return "\n".join(lines)


def write_predictions(
    preds: FramePredictions,
    model_file: ModelFile,
    paths: tuple[Path, Path, Path],
    unreadable: list[dict],
    *,
    threshold: float | None,
    aggregation: str,
) -> tuple[PersonPredictions, np.ndarray]:
    """The per-image, per-person (and unreadable-image) CSVs; returns the persons and their predicted classes."""
    from carotid.core.files import write_table
    from carotid.evaluation.inference import person_predictions, write_prediction_tables

    frame_out, person_out, unreadable_out = paths
    frame_out.parent.mkdir(parents=True, exist_ok=True)
    persons = person_predictions(preds, aggregation, model_file.positive_index)
    predicted = write_prediction_tables(
        frame_out, person_out, preds, persons, model_file.class_names, threshold, model_file.positive_index
    )
    if unreadable:
        rows = sorted((u["path"], "" if u["frame"] is None else u["frame"], u["reason"]) for u in unreadable)
        write_table(unreadable_out, ["path", "frame", "reason"], rows)
    return persons, predicted


def pooling_words(model_file: ModelFile, aggregation: str) -> str:
    """How a person's probability was made, in words: a frame model's aggregation of its frame probabilities, or a
    person model's pooling of its frames' embeddings (its own, whatever --person-aggregation says)."""
    if not model_file.person_level:
        return f"{aggregation} of the frames' probabilities"
    pooled = "gated-attention pooling" if model_file.person_model == "attention" else "mean pooling"
    return f"{pooled} of the frames' embeddings (--person-model {model_file.person_model})"


def predict(argv: Sequence[str] | None) -> int:
    args = parse_predict_args(argv)
    paths = output_paths(args)
    from carotid.core.runtime import RunLog, build_accelerator, on_main
    from carotid.data.folders.layout import find_input_frames
    from carotid.data.frames.frame import Frame
    from carotid.evaluation.attention import uniform_warning
    from carotid.evaluation.inference import decision_threshold, run_inference
    from carotid.evaluation.seen import seen_persons, seen_warning
    from carotid.model.file import ModelFile

    model_file = ModelFile.load(args.model)
    accelerator, _ = build_accelerator()
    log = RunLog(accelerator)
    layout, found, unreadable, input_warnings = on_main(
        accelerator, lambda: find_input_frames(Path(args.input).absolute(), args.layout)
    )
    frames = [Frame(path, person, 0, index) for person in sorted(found) for path, index in found[person]]
    preds = run_inference(
        accelerator,
        model_file.build_model(),
        model_file,
        frames,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )
    unreadable += preds.unreadable
    if len(preds.paths) == 0:
        example = unreadable[0]["path"] if unreadable else args.input
        raise UserError(f"none of the images in {args.input} can be decoded (e.g. {example})", "check the files")
    threshold, source = decision_threshold(model_file, args.threshold)
    aggregation = args.person_aggregation or model_file.aggregation
    if accelerator.is_main_process:
        persons, predicted = write_predictions(
            preds, model_file, paths, unreadable, threshold=threshold, aggregation=aggregation
        )
        class_names = model_file.class_names
        threshold_note = f"; threshold {threshold:.3f} ({source})" if threshold is not None else ""
        if model_file.temperature is not None:
            threshold_note += f"; probabilities softmax(logits / {model_file.temperature:.3f}) (calibrated)"
        log(
            f"{plural(len(persons.person_ids), 'person')}, {plural(len(preds.paths), 'image')} (layout: {layout}); "
            f"person probability: {pooling_words(model_file, aggregation)}{threshold_note}"
        )
        log(summary_table(persons, predicted, class_names, model_file.positive_index, threshold is not None))
        seen = seen_persons(args.model, sorted(found))
        uniform = None
        if persons.attention is not None:  # binary: among the persons called positive (see uniform_warning)
            called = predicted == model_file.positive_index if threshold is not None else None
            group = f" called {model_file.positive_class}" if threshold is not None else ""
            uniform = uniform_warning(persons.attention, model_file.person_model, called, group)
        for warning in input_warnings + [w for w in (seen_warning(seen, "--input") if seen else None, uniform) if w]:
            log(f"warning: {warning}")
        if unreadable:
            first = min(u["path"] for u in unreadable)
            log(f"warning: {plural(len(unreadable), 'unreadable image')} skipped, e.g. {first}; listed in {paths[2]}")
        log(f"per-image predictions: {paths[0]}\nper-person predictions: {paths[1]}")
        if args.heatmaps:
            from carotid.report.gallery import write_person_figures

            folder = paths[0].with_name(f"{paths[0].stem}_heatmaps")
            write_person_figures(
                model_file,
                preds,
                persons,
                predicted,
                folder,
                heatmaps=args.heatmaps,
                failures=0,
                threshold=threshold,
                aggregation=aggregation,
                device=accelerator.device,
                heatmap_dir=folder,
            )
            log(f"heat maps ({plural(args.heatmaps, 'frame')} per person): {folder}")
        if args.report:
            from carotid.report.predict_page import person_rows, write_predict_page

            rows = person_rows(preds, persons, predicted, class_names, model_file.positive_index, threshold)
            heatmap_dir = paths[0].with_name(f"{paths[0].stem}_heatmaps") if args.heatmaps else None
            note = f"{plural(len(rows), 'person')}; person probability: {aggregation} of frames{threshold_note}"
            page = write_predict_page(
                paths[0].with_name(f"{paths[0].stem}_report.html"), rows, model_file, args.input, heatmap_dir, note
            )
            log(f"report: {page}")
    accelerator.wait_for_everyone()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(predict, argv)


if __name__ == "__main__":
    sys.exit(main())
