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

import numpy as np

from carotid import checkpoint as ckpt
from carotid.config import ArgumentParser
from carotid.data import discover_frames, find_unreadable, frames_below, is_image_name
from carotid.errors import UserError, run_cli
from carotid.inference import (FramePredictions, PersonPredictions, decision_threshold, load_model_for_inference,
                               person_predictions, positive_index, run_inference, write_csv, write_prediction_tables)
from carotid.runtime import RunLog, build_accelerator, on_main

MAX_ROWS_SHOWN = 50  # persons listed on the console; the CSV has them all


# ---------------------------------------------------------------------------------------------
# Finding the frames of an unlabelled folder
# ---------------------------------------------------------------------------------------------


def detect_layout(folder: Path) -> str:
    """'person' when the folder holds images itself, else 'persons' (one sub-folder per person)."""
    with os.scandir(folder) as entries:
        return "person" if any(e.is_file() and is_image_name(e.name) for e in entries) else "persons"


def find_input_frames(folder: Path, layout: str) -> tuple[str, dict[str, list[str]], dict[str, str]]:
    """(layout used, {person_id: readable frame paths}, {unreadable path: reason}). Main process only."""
    if not folder.is_dir():
        raise UserError(f"input folder not found: {folder}", "pass --input DIR, a folder of images or of person folders")
    layout = detect_layout(folder) if layout == "auto" else layout
    if layout == "persons":
        relative = discover_frames(folder)
    else:
        relative = {folder.resolve().name: frames_below(folder)}
    relative = {person: frames for person, frames in relative.items() if frames}
    if not relative:
        raise UserError(f"no images (png, jpg, bmp, tif) found in {folder}", "check --input (and --layout)")
    unreadable = find_unreadable(str(folder), [f for frames in relative.values() for f in frames])
    frames = {person: [str(folder / f) for f in fs if f not in unreadable] for person, fs in relative.items()}
    frames = {person: fs for person, fs in frames.items() if fs}
    if not frames:
        raise UserError(f"none of the images in {folder} can be read (e.g. {next(iter(unreadable))})", "check the files")
    return layout, frames, {str(folder / f): reason for f, reason in unreadable.items()}


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="carotid-predict", description="Predict per image and per person with a carotid model file; "
                            "no labels needed.", allow_abbrev=False)
    parser.add_argument("--model", required=True, metavar="PATH", help="A model file, e.g. RUN/models/best_model.pth.")
    parser.add_argument("--input", required=True, metavar="DIR",
                        help="A folder of person folders, one person's folder, or a folder of images.")
    parser.add_argument("--out", metavar="FILE.csv", help="Per-image predictions; the per-person table goes beside it as "
                        "FILE_persons.csv (default: ./predictions_<DIR name>.csv).")
    parser.add_argument("--layout", choices=("auto", "persons", "person"), default="auto",
                        help="persons = one sub-folder per person; person = all images of DIR belong to one person "
                             "(default auto: 'person' if DIR holds images itself, else 'persons').")
    parser.add_argument("--person-aggregation", choices=("mean", "median", "max"),
                        help="How frame probabilities become a person's probability (default: the model file's).")
    parser.add_argument("--threshold", type=float, metavar="T",
                        help="Binary models: positive if P(positive) ≥ T (default: the model file's threshold).")
    parser.add_argument("--batch-size", type=int, default=64, help="Frames per batch on each process (default: 64).")
    parser.add_argument("--num-workers", type=int, default=4, help="DataLoader workers per process (default: 4).")
    return parser


def check_args(args) -> None:
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {args.threshold}", "pass a probability such as 0.5")
    if args.batch_size < 1 or args.num_workers < 0:
        raise UserError("--batch-size must be ≥ 1 and --num-workers ≥ 0", "pass e.g. --batch-size 64 --num-workers 4")


def output_paths(args) -> tuple[Path, Path, Path]:
    """(per-image CSV, per-person CSV, unreadable-images CSV)."""
    out = Path(args.out) if args.out else Path(f"predictions_{Path(args.input).resolve().name}.csv")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder", "pass a file name such as predictions.csv")
    ckpt.check_writable(out.parent if str(out.parent) else Path("."))
    suffix = out.suffix or ".csv"
    return out, out.with_name(f"{out.stem}_persons{suffix}"), out.with_name(f"{out.stem}_unreadable{suffix}")


def summary_table(persons: PersonPredictions, predicted: np.ndarray, class_names: list[str], positive: int, binary: bool) -> str:
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


def write_predictions(preds: FramePredictions, data: dict, paths: tuple[Path, Path, Path], unreadable: dict[str, str], *,
                      threshold: float | None, aggregation: str) -> tuple[PersonPredictions, np.ndarray]:
    """The per-image, per-person (and unreadable-image) CSVs; returns the persons and their predicted classes."""
    frame_out, person_out, unreadable_out = paths
    frame_out.parent.mkdir(parents=True, exist_ok=True)
    persons = person_predictions(preds, aggregation, positive_index(data))
    predicted = write_prediction_tables(frame_out, person_out, preds, persons, list(data["class_names"]), threshold,
                                        positive_index(data))
    if unreadable:
        write_csv(unreadable_out, ["path", "reason"], sorted(unreadable.items()))
    return persons, predicted


def predict(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    paths = output_paths(args)
    model, data = load_model_for_inference(args.model)
    accelerator, _ = build_accelerator(None, 1, None, 60)
    log = RunLog(accelerator)
    layout, frames, unreadable = on_main(accelerator, lambda: find_input_frames(Path(args.input).absolute(), args.layout))
    items = [(path, 0, person) for person in sorted(frames) for path in frames[person]]
    preds = run_inference(accelerator, model, data, items, batch_size=args.batch_size, num_workers=args.num_workers)
    unreadable |= {path: "cannot be decoded" for path in preds.unreadable}
    if len(preds.paths) == 0:
        raise UserError(f"none of the images in {args.input} can be decoded (e.g. {min(unreadable)})", "check the files")
    threshold, source = decision_threshold(data, args.threshold)
    aggregation = args.person_aggregation or data.get("person_aggregation", "mean")
    if accelerator.is_main_process:
        persons, predicted = write_predictions(preds, data, paths, unreadable, threshold=threshold, aggregation=aggregation)
        class_names = list(data["class_names"])
        operating_point = f"; threshold {threshold:.3f} ({source})" if threshold is not None else ""
        log(f"{len(persons.person_ids)} person(s), {len(preds.paths)} image(s) (layout: {layout}); "
            f"person probability: {aggregation} of frames{operating_point}")
        log(summary_table(persons, predicted, class_names, positive_index(data), threshold is not None))
        if unreadable:
            log(f"warning: {len(unreadable)} unreadable image(s) skipped, e.g. {min(unreadable)}; listed in {paths[2]}")
        log(f"per-image predictions: {paths[0]}\nper-person predictions: {paths[1]}")
    accelerator.wait_for_everyone()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(predict, argv)


if __name__ == "__main__":
    sys.exit(main())
