"""The run's view of its data: sheet rows matched with person folders, frames capped and checked.

`collect_persons` builds a `DataManifest` (plain types, so it can be broadcast to every rank and
saved in data_report.json); `DataManifest.frames_of(split)` gives the `Frame` records of a split.
"""

from __future__ import annotations

import os
import unicodedata
import warnings
from dataclasses import dataclass, field

from carotid.data import check
from carotid.data.discovery import IMAGE_SUFFIXES, Frame, count_frames, discover_frames, spread_evenly
from carotid.data.labels import LabelTable
from carotid.errors import UserError

SPLITS = ("train", "val", "test")


def _first(ids, k: int = 5) -> dict:
    ids = sorted(ids)
    return {"count": len(ids), "first": ids[:k]}


@dataclass
class DataManifest:
    """Everything a run needs to know about its data; plain types, so it can be broadcast and saved."""

    root_dir: str
    class_names: list[str]
    person_labels: dict[str, int]
    frames: dict[str, list[tuple[str, int]]]  # per person: (file relative to root_dir, frame number in it)
    splits: dict[str, list[str]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def frames_of(self, split: str | None = None) -> list[Frame]:
        """The frames of a split (of every person when None), person by person in sorted order."""
        persons = sorted(self.frames) if split is None else self.splits[split]
        out, path, last = [], "", None
        for p in persons:
            for rel, index in self.frames[p]:
                if rel != last:  # the frames of one file share its path string
                    path, last = os.path.join(self.root_dir, rel), rel
                out.append(Frame(path, p, self.person_labels[p], index))
        return out

    def left_out_notes(self) -> list[str]:
        """One line per kind of person left out (no folder, no sheet row, no image), with the first IDs."""
        return [
            f"{self.report[key]['count']} {key.replace('_', ' ')} left out, e.g. {self.report[key]['first']}"
            for key in ("persons_without_folder", "folders_without_label", "persons_without_images")
            if self.report[key]["count"]
        ]

    def counts(self, split: str) -> dict[str, dict[str, int]]:
        persons = {c: 0 for c in self.class_names}
        images = {c: 0 for c in self.class_names}
        for p in self.splits[split]:
            name = self.class_names[self.person_labels[p]]
            persons[name] += 1
            images[name] += len(self.frames[p])
        return {"persons": persons, "images": images}


def collect_persons(
    root_dir: str,
    table: LabelTable,
    max_imgs_per_person: int | None,
    persons: list[str] | None = None,
    sample: int | None = None,
) -> DataManifest:
    """Match folders with sheet rows, count and cap each person's frames, and check a bounded sample.

    `persons` restricts the result to those IDs (e.g. one split of a finished run). Files are opened only
    for their header where they may hold several frames; `sample` frames are decoded (0: none), every other
    frame is proven when it is first decoded and reported then (carotid.data.check).
    `sample` defaults to carotid.data.check.SAMPLE."""
    # Folder names copied from macOS are NFD; sheet IDs are read as NFC (labels.normalize_id).
    unhandled: list[str] = []
    found = {
        unicodedata.normalize("NFC", person): files for person, files in discover_frames(root_dir, unhandled).items()
    }
    sheet_ids, folder_ids = set(table.labels), set(found)
    if not sheet_ids & folder_ids:
        raise UserError(
            f"none of the {len(sheet_ids)} person IDs in the label sheet matches a folder in {root_dir} "
            f"(sheet: {', '.join(sorted(sheet_ids)[:3])}…; folders: {', '.join(sorted(folder_ids)[:3])}…)",
            "the folder names must be the IDs of the sheet's ID column (check --id-column)",
        )
    wanted = sorted(sheet_ids & folder_ids)
    if persons is not None:
        missing = sorted(set(persons) - set(wanted))
        if missing:
            raise UserError(
                f"{len(missing)} person(s) of the split are not in the data: {', '.join(missing[:5])}",
                "use the same --root-dir and --label-excel as the training run",
            )
        wanted = sorted(persons)
    counted = count_frames(root_dir, (f for p in wanted for f in found[p]))
    all_frames = {p: counted.frames_of(found[p]) for p in wanted}
    no_images = [p for p in wanted if not found[p]]
    if len(no_images) == len(wanted):
        raise UserError(
            f"none of the {len(wanted)} labelled person folders in {root_dir} holds an image file "
            f"(e.g. {wanted[0]}/; looked for {', '.join(sorted(IMAGE_SUFFIXES))} and DICOM files without a suffix)",
            "put each person's frames (png, jpg, bmp, tif, dcm, mp4, avi, mov) in their folder or a sub-folder of it",
        )
    capped = {p: spread_evenly(all_frames[p], max_imgs_per_person) for p in wanted if found[p]}
    sample = check.SAMPLE if sample is None else sample
    checked = check.check_sample(root_dir, capped, sample) if sample else None
    failed = checked.failed if checked else {}
    frames: dict[str, list[tuple[str, int]]] = {}
    for person, person_frames in capped.items():
        readable = [f for f in person_frames if f not in failed]
        if not readable:
            bad = [f for f in found[person] if f in counted.unreadable]
            example, reason = (
                (bad[0], counted.unreadable[bad[0]]) if bad else (person_frames[0][0], failed[person_frames[0]])
            )
            raise UserError(
                f"person '{person}': all {len(found[person])} images are unreadable (e.g. {example}: {reason})",
                "replace the files, or remove the folder or its row from the sheet",
            )
        frames[person] = readable
    wanted_set = set(wanted)
    unhandled = [u for u in unhandled if unicodedata.normalize("NFC", u.split("/", 1)[0].strip()) in wanted_set]
    unreadable = [
        {"path": rel, "frame": None, "reason": reason, "found_at": "discovery (header)"}
        for rel, reason in sorted(counted.unreadable.items())
    ] + [
        {"path": rel, "frame": index, "reason": reason, "found_at": "start-up check"}
        for (rel, index), reason in sorted(failed.items())
    ]
    if unreadable:
        warnings.warn(
            f"{len(unreadable)} unreadable image(s) skipped, e.g. {unreadable[0]['path']}; see data_report.json",
            stacklevel=2,
        )
    class_index = table.class_index
    report = {
        "root_dir": str(root_dir),
        "label_file": {
            "sheet": table.sheet,
            "id_column": table.id_column,
            "label_column": table.label_column,
            "notes": table.notes,
        },
        "persons_in_sheet": len(sheet_ids),
        "person_folders": len(folder_ids),
        "persons_without_folder": _first(sheet_ids - folder_ids),
        "folders_without_label": _first(folder_ids - sheet_ids),
        "persons_without_images": _first(no_images),
        "files_found": sum(len(found[p]) for p in capped),
        "images_found": sum(len(all_frames[p]) for p in capped),
        "images_used": sum(len(f) for f in frames.values()),
        "max_imgs_per_person": max_imgs_per_person,
        "frames_by_kind": dict(counted.frames_by_kind),
        "files_by_kind": dict(counted.files_by_kind),
        "multi_frame_files": len(counted.counts),
        "dicom_colour_frames": counted.dicom_colour_frames,
        "dicom_files_with_ultrasound_region": counted.dicom_files_with_region,
        "unhandled_files": _first(unhandled + counted.not_images, 20),
        "start_up_check": checked.as_dict() if checked else None,
        "unreadable_images": unreadable,
    }
    return DataManifest(
        str(root_dir), list(table.class_names), {p: class_index[table.labels[p]] for p in frames}, frames, report=report
    )
