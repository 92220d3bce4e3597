"""The run's view of its data: sheet rows matched with person folders, frames capped and checked.

`collect_persons` builds a `DataManifest` (plain types, so it can be broadcast to every rank and
saved in data_report.json); `DataManifest.frames_of(split)` gives the `Frame` records of a split.
"""

from __future__ import annotations

import os
import unicodedata
from dataclasses import dataclass, field
from itertools import chain, repeat

from carotid.core.errors import UserError
from carotid.core.memory import records_built
from carotid.core.text import printable
from carotid.data.classes import positive_index
from carotid.data.folders import audit, checks, readable
from carotid.data.folders.boilerplate import without_boilerplate
from carotid.data.folders.discovery import discover_frames, spread_evenly
from carotid.data.folders.file_cache import FileFacts
from carotid.data.folders.frame_counts import count_frames
from carotid.data.folders.matching import Matching, match_ids
from carotid.data.folders.overlap import LEFT_OUT_WHAT, check_overlap, matching_warnings
from carotid.data.folders.patient_ids import other_person_warning
from carotid.data.frames.frame import Frame
from carotid.data.frames.kinds import FRAME_SUFFIXES
from carotid.data.sheet.labels import LabelTable

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
    positive_class: str | None = None  # binary tasks: the class counted as positive (LabelTable.choices says why)
    person_columns: dict[str, dict[str, str | None]] = field(default_factory=dict)  # --subgroup-column's values

    @property
    def positive_index(self) -> int:
        return positive_index(self.class_names, self.positive_class)

    def frames_of(self, split: str | None = None) -> list[Frame]:
        """The frames of a split (of every person when None), person by person in sorted order."""
        with records_built():
            return self._frames_of(sorted(self.frames) if split is None else self.splits[split])

    def _frames_of(self, persons: list[str]) -> list[Frame]:
        # rel is never absolute (a path below root_dir): joining is a concatenation, ~5x cheaper than
        # os.path.join a file, which counts at 100,000s of frames (PERFORMANCE.md, start-up scaling).
        base = os.path.join(self.root_dir, "")
        out: list[Frame] = []
        for p in persons:
            frames = self.frames[p]
            if all(index == 0 for _, index in frames):  # one frame a file (the common case): no path shared
                paths = [base + rel for rel, _ in frames]
                out += map(Frame, paths, repeat(p), repeat(self.person_labels[p]))
                continue
            path, last = "", None
            for rel, index in frames:
                if rel != last:  # the frames of one file share its path string
                    path, last = base + rel, rel
                out.append(Frame(path, p, self.person_labels[p], index))
        return out

    def left_out_notes(self) -> list[str]:
        """One line per kind of person left out (no folder, no sheet row, no image), with the first IDs."""
        warned = " ".join(self.report["warnings"])  # a kind already in a warning (LEFT_OUT_WARNING) is said once
        return [
            f"{self.report[key]['count']} {key.replace('_', ' ')} left out, e.g. {self.report[key]['first']}"
            for key in ("persons_without_folder", "folders_without_label", "persons_without_images")
            if self.report[key]["count"] and LEFT_OUT_WHAT.get(key, "\0") not in warned
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
    strict_matching: bool = False,
    sample: int | None = None,
) -> DataManifest:
    """Match folders with sheet rows (carotid.data.folders.matching), count and cap each person's frames, and check
    a bounded sample of them.

    A person's ID is their folder's name (trimmed). `persons` restricts the result to those IDs (e.g. one
    split of a finished run); `strict_matching` makes any sheet row without a folder, or folder without a
    row, an error. Files are opened only for their header where they may hold several frames; `sample`
    frames are decoded (0: none; default carotid.data.folders.readable.SAMPLE), every other frame is proven when it is
    first decoded and reported then (carotid.data.folders.readable)."""
    with records_built():
        return _collect(root_dir, table, max_imgs_per_person, persons, strict_matching, sample)


def _collect(
    root_dir: str,
    table: LabelTable,
    max_imgs_per_person: int | None,
    persons: list[str] | None,
    strict_matching: bool,
    sample: int | None,
) -> DataManifest:
    unhandled: list[str] = []
    special: list[str] = []  # frame names that are no regular file: never opened
    found = discover_frames(root_dir, unhandled, special)
    matching = match_ids(table.labels, found, str(root_dir))
    overlap = check_overlap(matching, found, str(root_dir), table.id_column, table.class_names, strict_matching)
    # The person ID: the folder's name as a person reads it (macOS folder names are NFD, sheets NFC).
    person_of = {folder: unicodedata.normalize("NFC", folder).strip() for folder in matching.folders.values()}
    sheet_id_of = {person_of[folder]: sheet_id for sheet_id, folder in matching.folders.items()}
    folder_of = {person: folder for folder, person in person_of.items()}
    wanted = _wanted(sorted(sheet_id_of), persons)
    files_of = {p: found[folder_of[p]] for p in wanted}
    checks.check_nested(files_of, matching, root_dir)
    facts = FileFacts.gather(root_dir, files_of)  # one stat a file, for the counts and the shared-files check
    counted = count_frames(root_dir, chain.from_iterable(files_of[p] for p in wanted), facts)
    all_frames = {p: counted.frames_of(files_of[p]) for p in wanted}
    # A folder with no frame (empty, or only a DICOMDIR, a README, a DICOM without its preamble) is left out.
    no_images = [p for p in wanted if not all_frames[p]]
    checks.check_modalities(no_images, files_of, counted)
    if len(no_images) == len(wanted):
        raise _no_frames(wanted, root_dir, folder_of[wanted[0]])
    capped = {p: spread_evenly(all_frames[p], max_imgs_per_person) for p in wanted if all_frames[p]}
    sample = readable.SAMPLE if sample is None else sample
    checked = readable.check_sample(root_dir, capped, sample) if sample else None
    failed = checked.failed if checked else {}
    frames = _readable(capped, failed, files_of, counted.unreadable)
    unreadable = audit.unreadable_list(counted, failed)
    in_wanted = [u for u in unhandled if "/" not in u or u.split("/", 1)[0] in {folder_of[p] for p in wanted}]
    findings, file_warnings = audit.audit_files(
        root_dir, found, files_of, frames, counted, in_wanted, unreadable, max_imgs_per_person, facts
    )
    facts.save()  # what this start read of the files, for the next
    frames = without_boilerplate(frames, findings["boilerplate_files"])
    file_warnings += other_person_warning(files_of, sheet_id_of, list(table.labels), counted.patient_ids)
    person_labels = {p: table.class_index[table.labels[sheet_id_of[p]]] for p in frames}
    report = _report(root_dir, table, person_labels, found, matching) | {
        "persons_without_images": _first(no_images),
        "files_found": sum(len(files_of[p]) for p in wanted),
        "images_found": sum(len(all_frames[p]) for p in capped),
        "images_used": sum(len(f) for f in frames.values()),
        "max_imgs_per_person": max_imgs_per_person,
        **audit.files_report(counted),
        **findings,
        "start_up_check": checked.as_dict() if checked else None,
        "unreadable_images": unreadable,
        # Every start-up warning about the data, as printed.
        "warnings": table.warnings
        + overlap
        + matching_warnings(matching)
        + audit.special_warning(special)
        + file_warnings,
        "not_regular_files": _first(special),
    }
    return DataManifest(
        str(root_dir),
        list(table.class_names),
        person_labels,
        frames,
        report=report,
        positive_class=table.positive_class,
    )


def _no_frames(wanted: list[str], root_dir: str, example: str) -> UserError:
    return UserError(
        f"none of the {len(wanted)} labelled person folders in {root_dir} holds an image file that can be read "
        f"(e.g. {printable(example)}/; looked for {', '.join(sorted(FRAME_SUFFIXES))} and DICOM files without a "
        "suffix)",
        "put each person's frames (png, jpg, bmp, tif, dcm, mp4, avi, mov) in their folder or a sub-folder of it",
    )


def _wanted(matched: list[str], persons: list[str] | None) -> list[str]:
    """The persons to collect: every matched one, or `persons` (all of which must be matched)."""
    if persons is None:
        return matched
    missing = sorted(set(persons) - set(matched))
    if missing:
        raise UserError(
            f"{len(missing)} person(s) of the split are not in the data: {', '.join(missing[:5])}",
            "use the same --root-dir and --label-excel as the training run",
        )
    return sorted(persons)


def _readable(capped: dict, failed: dict, files_of: dict, unreadable: dict) -> dict[str, list[tuple[str, int]]]:
    """Each person's frames less those the start-up check failed; a person with none left is an error."""
    if not failed:  # every sampled frame decoded (the usual case): no list is filtered
        return capped
    frames: dict[str, list[tuple[str, int]]] = {}
    for person, person_frames in capped.items():
        readable = [f for f in person_frames if f not in failed]
        if not readable:
            bad = [f for f in files_of[person] if f in unreadable]
            example, reason = (bad[0], unreadable[bad[0]]) if bad else (person_frames[0][0], failed[person_frames[0]])
            raise UserError(
                f"person '{person}': all {len(files_of[person])} images are unreadable (e.g. {example}: {reason})",
                "replace the files, or remove the folder or its row from the sheet",
            )
        frames[person] = readable
    return frames


def _report(root_dir: str, table: LabelTable, person_labels: dict, found: dict, matching: Matching) -> dict:
    """data_report.json's account of the sheet and the matching."""
    return {
        "root_dir": str(root_dir),
        "label_file": {
            "sheet": table.sheet,
            "header_row": table.header_row,
            "id_column": table.id_column,
            "label_column": table.label_column,
            "positive_class": table.positive_class,
            "chosen_because": table.choices,
            "notes": table.notes,
            "warnings": table.warnings,
        },
        "classes": {name: sum(1 for k in person_labels.values() if k == i) for i, name in enumerate(table.class_names)},
        "persons_in_sheet": len(table.labels),
        "person_labels": {p: table.class_names[k] for p, k in sorted(person_labels.items())},  # resume checks it
        "person_folders": len(found),
        "matching": matching.summary(),
        "persons_without_folder": _first(matching.rows_without_folder),
        "folders_without_label": _first(matching.folders_without_row),
    }


def check_classes_in_training(manifest: DataManifest) -> None:
    """Every class needs persons to learn from: a class absent from the training split is an error."""
    present = {manifest.person_labels[p] for p in manifest.splits["train"]}
    absent = [name for i, name in enumerate(manifest.class_names) if i not in present]
    if absent:
        counts = manifest.report.get("classes", {})
        shown = ", ".join(f"'{name}' ({counts.get(name, 0)} person(s) in all)" for name in absent)
        raise UserError(
            f"no person of class {shown} is in the training split",
            "add persons of that class (check their folders match the sheet), raise --train-ratio, "
            "or remove the class from the sheet",
        )


# ---------------------------------------------------------------------------------------------
# The start-up block
# ---------------------------------------------------------------------------------------------


def data_block(report: dict, label_excel: str) -> list[str]:
    """The data facts every CLI prints first (and data_report.json holds): what was read, and why."""
    label = report["label_file"]
    why = label["chosen_because"]
    matching = report["matching"]
    lines = [
        f"label sheet: '{label['sheet']}' of {label_excel} ({why['sheet']})",
        f"  header row: {label['header_row']} ({why['header_row']})",
        f"  ID column: '{label['id_column']}' ({why['id_column']})",
        f"  label column: '{label['label_column']}' ({why['label_column']})",
        # Evaluating one split: the classes count its persons, the matching line the whole sheet; say which.
        f"  classes{' (' + report['classes_of'] + ')' if report.get('classes_of') else ''}: "
        + ", ".join(f"'{name}' {n} person(s)" for name, n in report["classes"].items()),
        f"  positive class: {repr(label['positive_class']) if label['positive_class'] else '—'} "
        f"({why['positive_class']})",
        f"  persons{' (the whole sheet)' if report.get('classes_of') else ''}: {matching['matched']} sheet row(s) "
        "matched a folder, "
        f"{matching['rows_without_folder']} row(s) have no folder, "
        f"{matching['folders_without_row']} folder(s) have no labelled row",
    ]
    for kind, count in matching["not_spelled_alike"].items():
        shown = ", ".join(f"sheet '{a}' ↔ folder '{b}'" for a, b in matching["examples"][kind])
        lines.append(f"  matched though spelled differently ({kind}): {count}, e.g. {shown}")
    lines += [f"note: {note}" for note in label["notes"]]
    lines += [f"warning: {warning}" for warning in report["warnings"]]  # the label file's among them
    return lines
