"""Apply a model file to unlabelled frames: per-image and per-person predictions.

    python -m carotid.predict --model RUN/models/best_model.pth --input DIR [--out predictions.csv]

DIR is read as one of two layouts (`--layout` forces one):
- persons: a root with one sub-folder per person (person ID = folder name, images anywhere below it);
- person:  one person's folder, or any folder of images (person ID = the folder's name; images in
           its sub-folders belong to the same person).
The rule: a folder that holds images itself is `person`, otherwise `persons`.
Also under `accelerate launch`; unreadable images are reported and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.config import PredictOptions, parse_predict_args
from carotid.data.discovery import Frame, count_frames, discover_frames, frames_below, is_image_name
from carotid.errors import UserError, run_cli

if TYPE_CHECKING:
    import numpy as np

    from carotid.evaluation.inference import FramePredictions, PersonPredictions
    from carotid.model.file import ModelFile

MAX_ROWS_SHOWN = 50  # persons listed on the console; the CSV has them all


# ---------------------------------------------------------------------------------------------
# Finding the frames of an unlabelled folder
# ---------------------------------------------------------------------------------------------


def detect_layout(folder: Path) -> str:
    """'person' when the folder holds images itself, else 'persons' (one sub-folder per person)."""
    with os.scandir(folder) as entries:
        return "person" if any(e.is_file() and is_image_name(e.name) for e in entries) else "persons"


def find_input_frames(folder: Path, layout: str) -> tuple[str, dict[str, list[tuple[str, int]]], list[dict]]:
    """(layout used, {person_id: [(file path, frame number)]}, files whose header cannot be read). Main process
    only. Single images are not opened here: they are proven when decoded, and reported then."""
    if not folder.is_dir():
        raise UserError(
            f"input folder not found: {folder}", "pass --input DIR, a folder of images or of person folders"
        )
    layout = detect_layout(folder) if layout == "auto" else layout
    if layout == "persons":
        relative = discover_frames(folder)
    else:
        relative = {folder.resolve().name: frames_below(folder)}
    relative = {person: frames for person, frames in relative.items() if frames}
    if not relative:
        raise UserError(
            f"no images (png, jpg, bmp, tif, dcm, mp4, avi, mov) found in {folder}", "check --input (and --layout)"
        )
    counted = count_frames(str(folder), (f for frames in relative.values() for f in frames))
    unreadable = [
        {"path": str(folder / rel), "frame": None, "reason": reason}
        for rel, reason in sorted(counted.unreadable.items())
    ]
    frames = {
        person: [(str(folder / rel), index) for rel, index in counted.frames_of(fs)] for person, fs in relative.items()
    }
    frames = {person: fs for person, fs in frames.items() if fs}
    if not frames:
        example = unreadable[0]["path"] if unreadable else folder
        raise UserError(f"none of the images in {folder} can be read (e.g. {example})", "check the files")
    return layout, frames, unreadable


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def output_paths(args: PredictOptions) -> tuple[Path, Path, Path]:
    """(per-image CSV, per-person CSV, unreadable-images CSV)."""
    from carotid.training.run_dir import check_writable

    out = Path(args.out) if args.out else Path(f"predictions_{Path(args.input).resolve().name}.csv")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", "pass a file name such as predictions.csv")
    check_writable(out.parent if str(out.parent) else Path("."))
    suffix = out.suffix or ".csv"
    return out, out.with_name(f"{out.stem}_persons{suffix}"), out.with_name(f"{out.stem}_unreadable{suffix}")


def summary_table(
    persons: PersonPredictions, predicted: np.ndarray, class_names: list[str], positive: int, binary: bool
) -> str:
    """Person ID, frames, the probability that decided, and the predicted class; at most MAX_ROWS_SHOWN rows."""
    score = f"P({class_names[positive]})" if binary else "P(predicted)"
    width = max([len("person_id")] + [len(str(p)) for p in persons.person_ids]) + 2
    lines = [f"{'person_id':<{width}}{'frames':>7}  {score:>12}  predicted"]
    rows = zip(persons.person_ids, persons.n_frames, persons.probs, predicted)
    for person, n, row, k in list(rows)[:MAX_ROWS_SHOWN]:
        lines.append(f"{person:<{width}}{n:>7}  {row[positive if binary else k]:>12.3f}  {class_names[k]}")
    if len(persons.person_ids) > MAX_ROWS_SHOWN:
        lines.append(f"… {len(persons.person_ids) - MAX_ROWS_SHOWN} more persons in the CSV")
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
    from carotid.evaluation.inference import person_predictions, write_prediction_tables
    from carotid.files import write_table

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


def predict(argv: Sequence[str] | None) -> int:
    args = parse_predict_args(argv)
    paths = output_paths(args)
    from carotid.evaluation.inference import decision_threshold, run_inference
    from carotid.model.file import ModelFile
    from carotid.training.runtime import RunLog, build_accelerator, on_main

    model_file = ModelFile.load(args.model)
    accelerator, _ = build_accelerator()
    log = RunLog(accelerator)
    layout, found, unreadable = on_main(
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
        operating_point = f"; threshold {threshold:.3f} ({source})" if threshold is not None else ""
        log(
            f"{len(persons.person_ids)} person(s), {len(preds.paths)} image(s) (layout: {layout}); "
            f"person probability: {aggregation} of frames{operating_point}"
        )
        log(summary_table(persons, predicted, class_names, model_file.positive_index, threshold is not None))
        if unreadable:
            first = min(u["path"] for u in unreadable)
            log(f"warning: {len(unreadable)} unreadable image(s) skipped, e.g. {first}; listed in {paths[2]}")
        log(f"per-image predictions: {paths[0]}\nper-person predictions: {paths[1]}")
    accelerator.wait_for_everyone()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(predict, argv)


if __name__ == "__main__":
    sys.exit(main())
