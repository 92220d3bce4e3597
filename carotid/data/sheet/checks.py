"""A label sheet that cannot be read as meant: the checks that turn it into an error naming the cells and the
fix (an empty sheet beside a filled one, ID or label cells merged down over rows, an ID column left blank,
formulas without stored results), and the warning on rows hidden in Excel that are read all the same."""

from __future__ import annotations

from pathlib import Path

from openpyxl.utils import range_boundaries

from carotid.core.errors import UserError
from carotid.data.classes import cell_text, normalize_label
from carotid.data.sheet.workbook import Sheet, cell_at, cell_name, formula_cells

EXAMPLES = 3  # IDs or ranges shown in a message


def empty_sheet_error(path: Path, data: Sheet) -> UserError:
    if data.filled_sheets:
        listed = ", ".join(map(repr, data.filled_sheets))
        return UserError(
            f"sheet '{data.name}' of {path} ({data.reason.split(';')[0]}) is empty; sheet(s) {listed} hold data",
            f"pass --sheet '{data.filled_sheets[0]}'",
        )
    return UserError(f"sheet '{data.name}' of {path} is empty", "put a header row and one row per person on it")


def refuse_merged_cells(path: Path, data: Sheet, header_number: int, headers: list, columns: tuple[int, int]) -> None:
    """A label (or ID) merged down over several rows is read, like Excel stores it, in its first row only:
    the other rows would silently have no label, so the ranges are named instead."""
    found: dict[str, int] = {}  # range → the ID or label column it covers
    for ref in data.merged:
        low_col, _, high_col, high_row = range_boundaries(ref)
        covered = [c for c in columns if low_col - 1 <= c <= high_col - 1]
        if high_row > header_number and covered:
            found[ref] = covered[0]
    if found:
        refs = sorted(found, key=lambda ref: range_boundaries(ref)[1::-1])
        names = " and ".join(repr(str(headers[c])) for c in columns if c in found.values())
        more = f" (and {len(refs) - EXAMPLES} more)" if len(refs) > EXAMPLES else ""
        raise UserError(
            f"{len(refs)} merged cell range(s) of column {names} in sheet '{data.name}' of {path} span several rows: "
            f"{', '.join(refs[:EXAMPLES])}{more}; a merged cell holds its value in its first row only, the other "
            "rows would have none",
            "unmerge those cells (Merge & Center off) and fill the value into every row",
        )


def refuse_blank_id_column(
    path: Path, sheet: str, body: list[tuple[int, list]], headers: list, id_idx: int, label_idx: int
) -> None:
    """An ID column with no value at all beside labels is the wrong column (or IDs not filled in), not 'no
    labels'; a sheet with neither is told 'no labels' by read_labels."""
    labelled = sum(normalize_label(cell_at(row, label_idx)) is not None for _, row in body)
    if not labelled or any(cell_text(cell_at(row, id_idx)) is not None for _, row in body):
        return
    raise UserError(
        f"the ID column '{headers[id_idx]}' of sheet '{sheet}' in {path} is blank in every row, while the label "
        f"column '{headers[label_idx]}' holds {labelled} value(s)",
        "fill in each person's ID (their folder's name), or name the column that holds it with --id-column",
    )


def refuse_uncached_formulas(path: Path, data: Sheet, header_number: int, columns: tuple[int, int]) -> None:
    """A formula whose result was never stored (a file written by a script, not saved by Excel) reads as an
    empty cell; that is no missing label, so it is an error naming the cells."""
    if not data.has_formulas:
        return
    filled = {(n, c) for n, row in data.rows for c in columns if cell_at(row, c) is not None}
    found = formula_cells(path, data.name, set(columns), header_number + 1, filled)
    if found:
        (row, column), formula = min(found.items())
        raise UserError(
            f"{len(found)} cell(s) of the ID and label columns of {path} hold a formula with no stored result "
            f"(e.g. {cell_name(row, column)}: {formula}): the file was written by a program and never saved by Excel",
            "open it in Excel or LibreOffice and save it (that stores the results), or write values, not formulas",
        )


def hidden_rows_used(data: Sheet, first_row: dict[str, int]) -> list[str]:
    """Rows hidden in Excel (by hand or by a filter) are read like any other: say so, since hiding a row
    looks like leaving the person out."""
    hidden = sorted((n, p) for p, n in first_row.items() if n in data.hidden_rows)
    if not hidden:
        return []
    shown = ", ".join(f"'{p}' (row {n})" for n, p in hidden[:EXAMPLES])
    return [
        f"{len(hidden)} person(s) are in rows hidden in Excel (e.g. {shown}) and are used like the visible ones: "
        "to leave a person out, delete the row"
    ]
