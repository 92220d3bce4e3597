"""Extra columns of the label sheet for the persons of its ID column: a subgroup such as hospital or sex, a
reader's call (carotid-evaluate's --subgroup and --reader-column)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from carotid.core.errors import UserError
from carotid.data.classes import cell_text as normalize_id
from carotid.data.sheet.workbook import cell_at, read_sheet


def read_person_columns(
    path: str | Path, sheet: str, id_header: str, columns: list[str]
) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """({column: {person ID: cell text or None}}, notes): extra columns of the label sheet (a subgroup such
    as hospital or sex, a reader's call), for the persons of the ID column that read_labels chose.

    The header row is the first row holding the ID header and every wanted header, so this does not
    depend on how read_labels found its header row. Cells are read as IDs are (normalize_id)."""

    def key(text: Any) -> str:
        return re.sub(r"[\s_\-.]+", "", str(text).strip().lower()) if text is not None else ""

    rows = [row for _, row in read_sheet(Path(path), sheet).rows]
    wanted = [key(c) for c in columns]
    id_key = key(id_header)
    header_number = next(
        (i for i, row in enumerate(rows) if {id_key, *wanted} <= {key(normalize_id(h)) for h in row}), None
    )
    if header_number is None:
        id_row = next((row for row in rows if id_key in {key(normalize_id(h)) for h in row}), [])
        shown = ", ".join(repr(str(normalize_id(h))) for h in id_row if normalize_id(h) is not None) or "(none)"
        missing = [c for c, k in zip(columns, wanted) if k not in {key(normalize_id(h)) for h in id_row}]
        raise UserError(
            f"column(s) {', '.join(map(repr, missing))} not found in sheet '{sheet}' of {path}; "
            f"the headers are {shown}",
            "pass the header of a column of the label sheet",
        )
    keys = [key(normalize_id(h)) for h in rows[header_number]]
    id_idx = keys.index(id_key)
    out: dict[str, dict[str, str | None]] = {c: {} for c in columns}
    conflicts: list[str] = []
    for row_number, row in enumerate(rows[header_number + 1 :], start=header_number + 2):
        person = normalize_id(cell_at(row, id_idx))
        if person is None:
            continue
        for column, k in zip(columns, wanted):
            value = normalize_id(cell_at(row, keys.index(k)))
            seen = out[column].get(person)
            if seen is not None and value is not None and seen != value:
                conflicts.append(f"'{person}' has {column} '{seen}' and '{value}' (row {row_number})")
            if seen is None:
                out[column][person] = value
    if conflicts:
        raise UserError(
            f"repeated persons with different values in {path}: {'; '.join(conflicts[:3])}", "keep one row per person"
        )
    return out, [
        f"sheet '{sheet}': column '{c}' read for {sum(v is not None for v in out[c].values())} persons" for c in columns
    ]
