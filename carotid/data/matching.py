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
