"""The frames of an unlabelled --input (carotid-predict), read as one of three layouts; persons are never
merged by a guess:
- persons: a root with one sub-folder per person (person ID = folder name, images anywhere below it);
- person:  one person's folder (person ID = the folder's name; images in its sub-folders are theirs too);
- images:  each image on its own (a single image file as --input is this layout).
auto: a folder holding only person folders (each with images of its own) is `persons`, a folder holding
only images is `person`; images beside folders of images, or folders nested two levels deep
(DATA/<class>/<id>/), are an error that asks for --layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from carotid.core.errors import UserError
from carotid.core.text import printable
from carotid.data.folders.audit import misnamed_report, modality_warning, special_warning
from carotid.data.folders.discovery import discover_frames, frames_below, is_frame_file
from carotid.data.folders.frame_counts import count_frames
from carotid.data.folders.readable import misnamed_note


def detect_layout(folder: Path) -> str:
    """'persons' or 'person' for an unambiguous folder; a UserError naming --layout for a mix."""
    try:
        with os.scandir(folder) as entries:
            # os.path.isdir, not DirEntry.is_dir: a link loop is False, not an OSError.
            listed = [(e.name, e.path, os.path.isdir(e.path)) for e in entries if not e.name.startswith(".")]
    except PermissionError:
        raise UserError(f"cannot read folder {folder} (permission denied)", "give your user read access") from None
    images = [name for name, path, is_dir in listed if not is_dir and is_frame_file(path)]
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
        return any(is_frame_file(e.path) for e in entries)  # regular files only


def find_input_frames(source: Path, layout: str) -> tuple[str, dict[str, list[tuple[str, int]]], list[dict], list[str]]:
    """(layout used, {person_id: [(file path, frame number)]}, files whose header cannot be read, warnings).

    Main process only. Single images are not opened here: they are proven when decoded, and reported then."""
    warnings: list[str] = []
    special: list[str] = []  # frame names that are no regular file: never opened
    if source.is_file():
        if not is_frame_file(str(source)):
            raise UserError(
                f"--input {source} is not an image file (png, jpg, bmp, tif, dcm, mp4, avi, mov)",
                "pass an image or a folder",
            )
        layout, folder, relative = "images", source.parent, {source.name: [source.name]}
    elif source.exists() and not source.is_dir():
        raise UserError(
            f"--input {source} is not a regular file or a folder (a named pipe, a device or a socket): never read",
            "pass a folder of images or an image file",
        )
    elif not source.is_dir():
        raise UserError(
            f"input folder not found: {source}", "pass --input DIR, a folder of images or of person folders"
        )
    else:
        folder = source
        layout = detect_layout(folder) if layout == "auto" else layout
        if layout == "persons":
            relative = discover_frames(folder, None, special)
            loose = sorted(e.name for e in os.scandir(folder) if is_frame_file(e.path))
            if loose:
                warnings.append(
                    f"{len(loose)} image(s) directly in {folder} (e.g. {loose[0]}) are in no person folder and "
                    "were not predicted"
                )
        elif layout == "person":
            relative = {folder.resolve().name: frames_below(folder, "", None, special)}
        else:  # images: every image its own row, named by its path below --input
            relative = {path: [path] for path in frames_below(folder, "", None, special)}
    empty = sorted(person for person, frames in relative.items() if not frames)
    relative = {person: frames for person, frames in relative.items() if frames}
    if empty and relative:  # as training names them: a person folder with nothing to predict is said, not dropped
        warnings.append(
            f"{len(empty)} person folder(s) hold no image and were not predicted (e.g. "
            f"{', '.join(printable(p) + '/' for p in empty[:3])}): put the person's frames in the folder"
        )
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
    warnings += special_warning(special) + modality_warning(counted, "not predicted")
    warnings += misnamed_note(misnamed_report(counted))
    if not frames and counted.other_modality:
        rel, modality = next(iter(sorted(counted.other_modality.items())))
        raise UserError(
            f"{source} holds no ultrasound frame, only DICOM of another modality (e.g. {folder / rel}: {modality})",
            "pass the ultrasound series",
        )
    if not frames:
        example = unreadable[0]["path"] if unreadable else folder
        raise UserError(f"none of the images in {source} can be read (e.g. {example})", "check the files")
    return layout, frames, unreadable, warnings
