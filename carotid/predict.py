"""Apply a model file to unlabelled frames: per-image and per-person predictions.

    python -m carotid.predict --model RUN/models/best_model.pth --input DIR|FILE [--out predictions.csv]

--input is read as one of three layouts (`--layout` forces one); persons are never merged by a guess:
- persons: a root with one sub-folder per person (person ID = folder name, images anywhere below it);
- person:  one person's folder (person ID = the folder's name; images in its sub-folders are theirs too);
- images:  each image on its own (a single image file as --input is this layout).
auto: a folder holding only person folders (each with images of its own) is `persons`, a folder holding
only images is `person`; images beside folders of images, or folders nested two levels deep
(DATA/<class>/<id>/), are an error that asks for --layout.
Also under `accelerate launch`; unreadable images are reported and skipped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.commands import PredictOptions, parse_predict_args
from carotid.data.discovery import Frame, count_frames, discover_frames, frames_below, is_image_name
from carotid.errors import UserError, run_cli
from carotid.text import display_width, pad, plural

if TYPE_CHECKING:
    import numpy as np

    from carotid.evaluation.inference import FramePredictions, PersonPredictions
    from carotid.model.file import ModelFile

MAX_ROWS_SHOWN = 50  # persons listed on the console; the CSV has them all


# ---------------------------------------------------------------------------------------------
# Finding the frames of an unlabelled folder
# ---------------------------------------------------------------------------------------------


def detect_layout(folder: Path) -> str:
    """'persons' or 'person' for an unambiguous folder; a UserError naming --layout for a mix."""
    try:
        with os.scandir(folder) as entries:
            listed = [(e.name, e.path, e.is_dir()) for e in entries if not e.name.startswith(".")]
    except PermissionError:
        raise UserError(f"cannot read folder {folder} (permission denied)", "give your user read access") from None
    images = [name for name, _, is_dir in listed if not is_dir and is_image_name(name)]
    with_images = [(name, path) for name, path, is_dir in listed if is_dir and frames_below(path)]
    choose = "pass --layout persons (one sub-folder per person), person (all one person's) or images (each alone)"
    if images and with_images:
        raise UserError(
            f"{folder} holds {len(images)} image(s) (e.g. {images[0]}) beside {len(with_images)} folder(s) with "
            f"images (e.g. {with_images[0][0]}/): one person's folder, or person folders and stray files?",
            choose,
        )
    if images or not with_images:
        return "person"
    # Exports often keep a person's frames in a sequence sub-folder, so some person folders hold only folders;
    # when none holds an image itself, the tree is two levels deep: DATA/<class>/<id>/ or person/<series>/.
    nested = [name for name, path in with_images if not _holds_images(path)]
    if len(nested) == len(with_images):
        raise UserError(
            f"no sub-folder of {folder} (e.g. {nested[0]}/) holds images itself, only folders of images: "
            f"each sub-folder a person (with series folders), or a class folder of persons "
            f"(DATA/<class>/<id>/, then pass {folder / nested[0]} as --input)?",
            choose,
        )
    return "persons"


def _holds_images(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(not e.name.startswith(".") and not e.is_dir() and is_image_name(e.name) for e in entries)


def find_input_frames(source: Path, layout: str) -> tuple[str, dict[str, list[tuple[str, int]]], list[dict], list[str]]:
    """(layout used, {person_id: [(file path, frame number)]}, files whose header cannot be read, warnings).

    Main process only. Single images are not opened here: they are proven when decoded, and reported then."""
    warnings: list[str] = []
    if source.is_file():
        if not is_image_name(source.name):
            raise UserError(
                f"--input {source} is not an image file (png, jpg, bmp, tif, dcm, mp4, avi, mov)",
                "pass an image or a folder",
            )
        layout, folder, relative = "images", source.parent, {source.name: [source.name]}
    elif not source.is_dir():
        raise UserError(
            f"input folder not found: {source}", "pass --input DIR, a folder of images or of person folders"
        )
    else:
        folder = source
        layout = detect_layout(folder) if layout == "auto" else layout
        if layout == "persons":
            relative = discover_frames(folder)
            loose = sorted(e.name for e in os.scandir(folder) if e.is_file() and is_image_name(e.name))
            if loose:
                warnings.append(
                    f"{len(loose)} image(s) directly in {folder} (e.g. {loose[0]}) are in no person folder and "
                    "were not predicted"
                )
        elif layout == "person":
            relative = {folder.resolve().name: frames_below(folder)}
        else:  # images: every image its own row, named by its path below --input
            relative = {path: [path] for path in frames_below(folder)}
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
        raise UserError(f"none of the images in {source} can be read (e.g. {example})", "check the files")
    return layout, frames, unreadable, warnings


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def output_paths(args: PredictOptions) -> tuple[Path, Path, Path]:
    """(per-image CSV, per-person CSV, unreadable-images CSV)."""
    from carotid.training.run_dir import check_writable

    source = Path(args.input).resolve()
    out = Path(args.out) if args.out else Path(f"predictions_{source.stem if source.is_file() else source.name}.csv")
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
            f"person probability: {aggregation} of frames{threshold_note}"
        )
        log(summary_table(persons, predicted, class_names, model_file.positive_index, threshold is not None))
        for warning in input_warnings:
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
    accelerator.wait_for_everyone()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(predict, argv)


if __name__ == "__main__":
    sys.exit(main())
