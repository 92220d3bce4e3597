"""How well the sheet's IDs and the root's folders overlap: none at all (an error, which says where the IDs
are when they are one level down: a PACS export DATA/<date>/<ID>/ or folders sorted by class DATA/normal/<ID>/),
rows or folders left out (a warning above LEFT_OUT_WARNING of them), and IDs Excel or a script changed."""

from __future__ import annotations

from carotid.core.errors import UserError
from carotid.core.text import printable
from carotid.data.classes import spelling_key
from carotid.data.folders.matching import EXAMPLES, Matching, explain_unmatched, id_key

LEFT_OUT_WARNING = 0.10  # share of sheet rows or folders left out above which it is a warning, not a note
LEFT_OUT_WHAT = {  # the words of that warning, per kind of left-out person in data_report.json
    "persons_without_folder": "sheet rows have no person folder",
    "folders_without_label": "person folders have no labelled sheet row",
}


def check_overlap(
    matching: Matching, found: dict[str, list[str]], root_dir: str, id_column: str, class_names: list[str], strict: bool
) -> list[str]:
    """Raises when no sheet ID has a folder, or (`strict`) when any is left out; else the warnings to print."""
    below = ids_one_level_down(found, matching)
    if not matching.folders:
        if below:
            raise one_level_down_error(root_dir, below, class_names)
        sheet_ids, folders = sorted(matching.rows_without_folder), sorted(matching.folders_without_row)
        raise UserError(
            f"none of the {len(sheet_ids)} person IDs in column '{id_column}' of the label sheet matches a "
            f"folder in {root_dir} (sheet: {', '.join(sheet_ids[:3])}…; folders: {', '.join(folders[:3])}…)",
            "name each person's folder by their ID in the sheet (or pick the ID column with --id-column)",
        )
    left_out = len(matching.rows_without_folder) + len(matching.folders_without_row)
    if strict and left_out:
        raise UserError(
            f"--strict-matching: {len(matching.rows_without_folder)} sheet row(s) have no folder "
            f"(e.g. {matching.rows_without_folder[:3]}) and {len(matching.folders_without_row)} folder(s) have no "
            f"row (e.g. {matching.folders_without_row[:3]})",
            "add the missing rows or folders, or drop --strict-matching to train on the matched persons",
        )
    return (
        [f"{where(root_dir, below, class_names)[0]}: left out; move their folders up into {root_dir}"] if below else []
    )


def matching_warnings(matching: Matching) -> list[str]:
    warnings_ = []
    rows = len(matching.folders) + len(matching.rows_without_folder)
    folders = len(matching.folders) + len(matching.folders_without_row)
    for left, total, what in (
        (matching.rows_without_folder, rows, LEFT_OUT_WHAT["persons_without_folder"]),
        (matching.folders_without_row, folders, LEFT_OUT_WHAT["folders_without_label"]),
    ):
        if left and len(left) > LEFT_OUT_WARNING * total:
            warnings_.append(
                f"{len(left)} of {total} {what} and are left out (e.g. {', '.join(map(repr, left[:3]))}); "
                "--strict-matching makes this an error"
            )
    if matching.ambiguous:
        warnings_.append(
            f"{len(matching.ambiguous)} numeric ID(s) match several zero-padded folders and are left out "
            f"(e.g. {matching.ambiguous[0]!r}): rename the folders"
        )
    return warnings_ + explain_unmatched(matching)


# ---------------------------------------------------------------------------------------------
# Person folders one level down
# ---------------------------------------------------------------------------------------------


def ids_one_level_down(found: dict[str, list[str]], matching: Matching) -> dict[str, list[str]]:
    """{root folder matching no row: its sub-folders named like a sheet ID that has no folder}."""
    wanted = {id_key(sheet_id) for sheet_id in matching.rows_without_folder}
    below: dict[str, list[str]] = {}
    for top in matching.folders_without_row:
        subs = {rel.split("/")[1] for rel in found.get(top, []) if rel.count("/") >= 2}
        hits = sorted(s for s in subs if id_key(s) in wanted)
        if hits:
            below[top] = hits
    return below


def where(root_dir: str, below: dict[str, list[str]], class_names: list[str]) -> tuple[str, list[str]]:
    """(the sentence saying where the IDs are and inside what, the folders holding them)."""
    tops = sorted(below)
    ids = {id_key(s) for subs in below.values() for s in subs}
    named = ", ".join(f"'{printable(t)}'" for t in tops[:EXAMPLES]) + (" …" if len(tops) > EXAMPLES else "")
    example = f"{printable(tops[0])}/{printable(below[tops[0]][0])}"
    if {spelling_key(t) for t in tops} <= {spelling_key(c) for c in class_names}:
        inside = f"folders named like the sheet's classes ({named}); the labels come from the sheet, not from folders"
    else:
        inside = f"{len(tops)} folder(s) such as {named}, as a PACS export by date or study makes"
    return f"{len(ids)} sheet ID(s) are folders one level down in {root_dir} (e.g. {example}), inside {inside}", tops


def one_level_down_error(root_dir: str, below: dict[str, list[str]], class_names: list[str]) -> UserError:
    what, tops = where(root_dir, below, class_names)
    if len(tops) == 1:
        fix = f"pass --root-dir {root_dir.rstrip('/')}/{printable(tops[0])}"
    else:
        fix = (
            "put every person's folder directly in one folder (merging the folders of a person found in several) "
            "and pass that folder as --root-dir"
        )
    return UserError(f"no folder in {root_dir} is named like a sheet ID, but {what}", fix)
