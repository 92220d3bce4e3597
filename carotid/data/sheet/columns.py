"""Where the label sheet's table is: its header row (title rows above it skipped), and which columns hold the
person ID and the label (the header names recognised without --id-column / --label-column, the flags' lookup,
and the one guess allowed: a sheet of two columns)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from carotid.core.errors import UserError
from carotid.data.sheet.workbook import Sheet

HEADER_SCAN_ROWS = 20  # non-empty rows searched for the header row

# Header names recognised without --id-column / --label-column, in order of preference. Compared after
# lower-casing and dropping spaces, '_', '-', '.', and a bracketed note such as "(Y/N)".
ID_HEADERS = (
    "id",
    "personid",
    "person",
    "patientid",
    "patient",
    "patientno",
    "patientnumber",
    "subjectid",
    "subject",
    "caseid",
    "case",
    "caseno",
    "mrn",
    "编号",
    "患者编号",
    "病人编号",
    "病例号",
    "患者id",
    "病人id",
    "住院号",
    "检查号",
    "name",
    "姓名",
)
LABEL_HEADERS = (
    "label",
    "labels",
    "class",
    "target",
    "diagnosis",
    "category",
    "group",
    "y",
    "plaque",
    "标签",
    "类别",
    "分类",
    "诊断",
    "分组",
    "结果",
    "标注",
    "斑块",
    "有无斑块",
    "斑块有无",
)


def _header_keys(text: Any) -> set[str]:
    if text is None:
        return set()
    plain = str(text).strip().lower()
    keys = {re.sub(r"[\s_\-.]+", "", plain), re.sub(r"[\s_\-.]+", "", re.sub(r"[(（\[].*?[)）\]]", "", plain))}
    return keys - {""}


def recognised_header(text: Any) -> bool:
    return bool(_header_keys(text) & set(ID_HEADERS + LABEL_HEADERS))


def wanted_column(headers: list[Any], wanted: str, flag: str, taken: int | None, what: str, shown: str) -> int:
    key = _header_keys(wanted)
    if not key:  # would match the first column without a header
        raise UserError(f"{flag} '{wanted}' is empty; the headers are {shown}", f"pass one of them to {flag}")
    plain = [re.sub(r"[\s_\-.]+", "", str(h).strip().lower()) if h is not None else "" for h in headers]
    target = re.sub(r"[\s_\-.]+", "", wanted.strip().lower())
    if target not in plain:
        raise UserError(
            f"{flag} '{wanted}' is not a column header; the headers are {shown}", f"pass one of them to {flag}"
        )
    if plain.index(target) == taken:
        raise UserError(f"{flag} '{wanted}' is also the ID column", f"pass the header of the {what} column to {flag}")
    return plain.index(target)


NAME_HEADERS = frozenset({"name", "姓名"})  # an ID of last resort: beside a real ID column, a name is not the ID


def _recognised_columns(headers: list[Any], known: tuple[str, ...], taken: set[int]) -> list[int]:
    """The columns whose header is one of `known`, in order of preference, `taken` left out."""
    rank = {name: i for i, name in enumerate(known)}
    found = {
        i: min(rank[k] for k in keys)
        for i, header in enumerate(headers)
        if i not in taken and (keys := _header_keys(header) & rank.keys())
    }
    return sorted(found, key=lambda i: (found[i], i))


def _one_recognised(headers: list[Any], known: tuple[str, ...], taken: set[int], what: str) -> int | None:
    """The one recognised column, or None; several (Plaque (left) and Plaque (right)) are an error, since
    taking the first would train on one of them without a word."""
    found = _recognised_columns(headers, known, taken)
    if what == "ID" and any(not (_header_keys(headers[i]) & NAME_HEADERS) for i in found):
        found = [i for i in found if not (_header_keys(headers[i]) & NAME_HEADERS)]
    if len(found) <= 1:
        return found[0] if found else None
    flag = f"--{what.lower()}-column"
    listed = ", ".join(repr(str(headers[i])) for i in sorted(found))
    runs = " (one run per column, e.g. one per side)" if what == "label" else ""
    raise UserError(
        f"{len(found)} columns are recognised as the {what} column: {listed}",
        f"choose one with {flag}, e.g. {flag} '{headers[sorted(found)[0]]}'{runs}",
    )


def choose_columns(
    headers: list[Any], id_column: str | None, label_column: str | None, excluded: frozenset[int] = frozenset()
) -> tuple[int, str, int, str]:
    """(ID column, why, label column, why). Unrecognised headers are guessed only on a two-column sheet;
    `excluded` are columns named by other flags (--group-column), never taken as the ID or the label."""
    columns = [i for i, h in enumerate(headers) if h is not None]
    shown = ", ".join(repr(str(headers[i])) for i in columns) or "(none)"
    if id_column is not None:
        id_idx, id_why = wanted_column(headers, id_column, "--id-column", None, "ID", shown), "from --id-column"
    else:
        id_idx, id_why = _one_recognised(headers, ID_HEADERS, set(excluded), "ID"), "recognised header"
    if label_column is not None:
        label_idx = wanted_column(headers, label_column, "--label-column", id_idx, "label", shown)
        label_why = "from --label-column"
    else:
        taken = set(excluded) | ({id_idx} if id_idx is not None else set())
        label_idx, label_why = _one_recognised(headers, LABEL_HEADERS, taken, "label"), "recognised header"
    if id_idx is not None and label_idx is not None:
        return id_idx, id_why, label_idx, label_why
    if len(columns) == 2:  # the one case where the other column is not a guess among several
        if id_idx is None and label_idx is None:
            why = "no known header; the sheet has two columns, the first taken as the ID"
            return columns[0], why, columns[1], why.replace("first taken as the ID", "second taken as the label")
        if id_idx is None:
            other = columns[1] if label_idx == columns[0] else columns[0]
            return other, "the other of the sheet's two columns", label_idx, label_why
        other = columns[1] if id_idx == columns[0] else columns[0]
        return id_idx, id_why, other, "the other of the sheet's two columns"
    what, flag = ("ID", "--id-column") if id_idx is None else ("label", "--label-column")
    found = "found" if len(columns) < 2 else f"recognised among {len(columns)} columns"
    example = next((str(headers[i]) for i in reversed(columns) if i != id_idx), None)
    fix = f"name it with {flag}" + (f", e.g. {flag} '{example}'" if example and len(columns) > 2 else "")
    raise UserError(f"no {what} column {found}; the headers are {shown}", fix)


# ---------------------------------------------------------------------------------------------
# The header row
# ---------------------------------------------------------------------------------------------


def _all_text(values: list[Any]) -> bool:
    return all(isinstance(v, str) for v in values if v is not None)


def _looks_like_headers(values: list[Any]) -> bool:
    # A title row (one cell, merged across columns or not) has one value; a header row names two columns or more,
    # all as text (a row holding a number or a date is data).
    filled = [v for v in values if v is not None and str(v).strip()]
    return len(filled) >= 2 and _all_text(filled)


def _shown(values: list[Any]) -> str:
    text = " | ".join(str(v).strip() for v in values if v is not None and str(v).strip())
    return text if len(text) <= 60 else text[:57] + "…"


def find_header_row(sheet: Sheet, wanted: int | None, recognised: Callable[[Any], bool]) -> tuple[int, str]:
    """(position in sheet.rows, why): row `wanted`, else the first header-like row holding a recognised header,
    else the first header-like row; title rows, merged title cells and blank rows above it are skipped."""
    if wanted is not None:
        for position, (number, _) in enumerate(sheet.rows):
            if number == wanted:
                return position, "from --header-row"
        last = sheet.rows[-1][0] if sheet.rows else 0
        where = "is blank" if wanted < last else f"is past the last row ({last})"
        raise UserError(f"--header-row {wanted} of sheet '{sheet.name}' {where}", "pass the row number of the headers")
    scanned = sheet.rows[:HEADER_SCAN_ROWS]
    known = [i for i, (_, values) in enumerate(scanned) if _all_text(values) and any(map(recognised, values))]
    candidates = [i for i, (_, values) in enumerate(scanned) if _looks_like_headers(values)]
    if not candidates and not known:
        first = scanned[0] if scanned else (1, [])
        raise UserError(
            f"no header row found in the first {len(scanned)} non-empty rows of sheet '{sheet.name}' "
            f"(row {first[0]}: {_shown(first[1])!r})",
            "put a row of column names (e.g. ID | label) above the data, or pass --header-row N",
        )
    position = known[0] if known else candidates[0]
    why = "holds recognised headers" if known else "the first row of text cells"
    above = [f"row {n}: {_shown(v)!r}" for n, v in sheet.rows[:position]]
    if above:
        why += f"; above it skipped as title: {'; '.join(above[:3])}" + (" …" if len(above) > 3 else "")
    return position, why
