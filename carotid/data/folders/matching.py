"""Sheet IDs ↔ person folders, matched as a person would match them, and every non-exact match reported.

Both sides are compared after Unicode NFKC (full-width digits typed with a Chinese input method become
ASCII), dropping zero-width characters, trimming and case folding. A numeric ID also matches a folder
that carries leading zeros (Excel shows 1 for 001, even with a 0000 number format) when exactly one
folder and one ID pair that way. Two folders (or two IDs) that compare equal are an error: one would
silently stand for the other.
"""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from carotid.core.errors import UserError
from carotid.data.classes import ZERO_WIDTH

EXAMPLES = 3  # IDs shown per kind of mismatch; data_report.json has them all


def id_key(text: str) -> str:
    """What is compared: NFKC, no zero-width characters, trimmed, case folded."""
    return unicodedata.normalize("NFKC", text).translate(ZERO_WIDTH).strip().casefold()


def _number(key: str) -> str | None:
    return (key.lstrip("0") or "0") if re.fullmatch(r"[0-9]+", key) else None


def how_matched(sheet_id: str, folder: str) -> str:
    """'exact', or what differs between an ID and its folder (the first difference that explains it)."""
    if sheet_id == folder:
        return "exact"
    steps = (
        ("spaces", str.strip),
        ("Unicode width or form", lambda t: unicodedata.normalize("NFKC", t).translate(ZERO_WIDTH).strip()),
        ("case", lambda t: id_key(t)),
    )
    for name, step in steps:
        if step(sheet_id) == step(folder):
            return name
    return "leading zeros"


@dataclass
class Matching:
    """Which folder holds which sheet row's person, and what was left over on either side."""

    folders: dict[str, str]  # sheet ID → folder name
    non_exact: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # kind → [(sheet ID, folder)]
    rows_without_folder: list[str] = field(default_factory=list)
    folders_without_row: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)  # numeric IDs that several zero-padded folders could be

    def summary(self) -> dict:
        """For data_report.json and the start-up block."""
        return {
            "matched": len(self.folders),
            "not_spelled_alike": {kind: len(pairs) for kind, pairs in self.non_exact.items()},
            "examples": {kind: [list(p) for p in pairs[:EXAMPLES]] for kind, pairs in self.non_exact.items()},
            "rows_without_folder": len(self.rows_without_folder),
            "folders_without_row": len(self.folders_without_row),
            "ambiguous_leading_zeros": sorted(self.ambiguous),
        }


def _unique_keys(names: Iterable[str], what: str, where: str, fix: str) -> dict[str, str]:
    by_key: dict[str, list[str]] = defaultdict(list)
    for name in sorted(names):
        by_key[id_key(name)].append(name)
    clashes = [group for group in by_key.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(n) for n in group) for group in clashes[:EXAMPLES])
        raise UserError(
            f"{len(clashes)} pair(s) of {what} in {where} are the same person once spaces, case and character "
            f"width are ignored: {shown}",
            fix,
        )
    return {key: group[0] for key, group in by_key.items()}


def match_ids(sheet_ids: Iterable[str], folders: Iterable[str], root_dir: str = "the root dir") -> Matching:
    """Pair sheet IDs with folder names; raises UserError when two folders or two IDs compare equal."""
    ids = _unique_keys(sheet_ids, "IDs", "the label sheet", "keep one row per person (fix the typing of the ID)")
    found = _unique_keys(folders, "folders", root_dir, "merge or rename the folders so each person has one")
    pairs = {ids[key]: found[key] for key in ids.keys() & found.keys()}
    loose_ids = {key: ids[key] for key in ids.keys() - found.keys()}
    loose_folders = {key: found[key] for key in found.keys() - ids.keys()}
    by_number_ids: dict[str, list[str]] = defaultdict(list)
    by_number_folders: dict[str, list[str]] = defaultdict(list)
    for key, name in loose_ids.items():
        if (n := _number(key)) is not None:
            by_number_ids[n].append(name)
    for key, name in loose_folders.items():
        if (n := _number(key)) is not None:
            by_number_folders[n].append(name)
    ambiguous = []
    for number, sheet_side in by_number_ids.items():
        folder_side = by_number_folders.get(number, [])
        if len(sheet_side) == 1 and len(folder_side) == 1:
            pairs[sheet_side[0]] = folder_side[0]
        elif folder_side:
            ambiguous += sheet_side
    matched_folders = set(pairs.values())
    non_exact: dict[str, list[tuple[str, str]]] = {}
    for sheet_id, folder in sorted(pairs.items()):
        kind = how_matched(sheet_id, folder)
        if kind != "exact":
            non_exact.setdefault(kind, []).append((sheet_id, folder))
    return Matching(
        pairs,
        non_exact,
        sorted(set(ids.values()) - pairs.keys()),
        sorted(set(found.values()) - matched_folders),
        ambiguous,
    )


# ---------------------------------------------------------------------------------------------
# Why a sheet ID has no folder: what Excel or a script did to it
# ---------------------------------------------------------------------------------------------

EXCEL_DATE = re.compile(r"\d{4}-(\d{2})-(\d{2})(T00:00:00)?")  # a date cell, as carotid.data.classes.cell_text reads it
MONTH_DAY = re.compile(r"(\d{1,2})[-/.](\d{1,2})")  # a folder such as '1-5', which Excel turns into a date
ID_TRAPS = {  # kind of sheet ID → (is it that kind, why and how to fix the sheet)
    "dates": (
        lambda t: EXCEL_DATE.fullmatch(t) is not None,
        "Excel turned IDs typed like 1-5 into dates: format the ID column as Text, then retype those IDs",
    ),
    "numbers stored as text with '.0'": (
        lambda t: re.fullmatch(r"\d+\.0+", t) is not None,
        "a script or CSV export wrote the numbers as floats: retype the IDs without '.0'",
    ),
    "text starting with an apostrophe": (
        lambda t: t[:1] in ("'", "\u2019", "`"),
        "the apostrophe is part of the text (a program wrote it; Excel hides only its own): delete it from those cells",
    ),
    "text holding a path separator": (
        lambda t: "/" in t or "\\" in t,
        "a folder name cannot hold '/' or '\\': write each ID as the person's folder is named",
    ),
}


def _day_folder(sheet_id: str, day_folders: list[str]) -> str | None:
    """The folder ('1-5', '5.1') that a date ID (2026-01-05) was typed as, if there is one."""
    date = EXCEL_DATE.fullmatch(sheet_id)
    wanted = {(int(date[1]), int(date[2])), (int(date[2]), int(date[1]))}
    return next((f for f in day_folders if tuple(map(int, MONTH_DAY.fullmatch(f).groups())) in wanted), None)


def explain_unmatched(matching: Matching) -> list[str]:
    """A warning per kind of sheet ID left out for what Excel or a script did to it, with how to fix the sheet."""
    day_folders = [f for f in matching.folders_without_row if MONTH_DAY.fullmatch(f)]
    found: dict[str, list[str]] = defaultdict(list)
    for sheet_id in matching.rows_without_folder:
        kind = next((k for k, (test, _) in ID_TRAPS.items() if test(sheet_id)), None)
        if kind == "dates" and (folder := _day_folder(sheet_id, day_folders)) is not None:
            found[kind].append(f"{sheet_id[:10]} beside folder '{folder}'")
        elif kind is not None:
            found[kind].append(repr(sheet_id))
    warnings = []
    for kind, ids in found.items():
        warnings.append(
            f"{len(ids)} sheet ID(s) are {kind} (e.g. {', '.join(ids[:EXAMPLES])}): they match no "
            f"folder and are left out; {ID_TRAPS[kind][1]}"
        )
    return warnings


def nested_person_folder(files_of: dict[str, list[str]], rows_without_folder: list[str]) -> tuple[str, str] | None:
    """(folder path under the root, sheet ID) of the first sub-folder inside a person's folder named like a sheet
    ID that has no folder of its own: a person folder dragged into another, whose frames would count as the
    outer person's. Only IDs without a folder are looked for, so series folders named 1, 2, … of persons 1, 2
    (who have their own folders) are not taken for persons."""
    wanted = {id_key(sheet_id): sheet_id for sheet_id in rows_without_folder}
    if not wanted:
        return None
    for files in files_of.values():
        # Each folder once, in the order its first file comes (the answer depends on the folder alone).
        for folder in dict.fromkeys(rel.rpartition("/")[0] for rel in files):
            parts = folder.split("/")  # the person's folder, the folders below it; not the file name
            for depth in range(1, len(parts)):
                sheet_id = wanted.get(id_key(parts[depth]))
                if sheet_id is not None:
                    return "/".join(parts[: depth + 1]), sheet_id
    return None
