"""Reading the Excel label file: sheet and column choice, ID normalisation, duplicate and empty-cell checks."""

from __future__ import annotations

import datetime as _dt
import math
import re
import unicodedata
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carotid.errors import UserError

# Header names recognised without --id-column / --label-column, in order of preference.
# Compared after lower-casing and dropping spaces, '_', '-' and '.'.
ID_HEADERS = (
    "id",
    "personid",
    "person",
    "patientid",
    "patient",
    "subjectid",
    "subject",
    "caseid",
    "case",
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
    "标签",
    "类别",
    "分类",
    "诊断",
    "分组",
    "结果",
    "标注",
)
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls and password-protected .xlsx are OLE2 containers
# What a formula that failed leaves in its cell (a VLOOKUP that found nothing gives #N/A): never an ID or a label.
EXCEL_ERRORS = frozenset(
    {
        "#NULL!",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#N/A",
        "#GETTING_DATA",
        "#SPILL!",
        "#CALC!",
        "#FIELD!",
        "#BLOCKED!",
        "#CONNECT!",
        "#BUSY!",
        "#UNKNOWN!",
        "#EXTERNAL!",
        "#PYTHON!",
    }
)
EXCEL_DIGITS = 15  # Excel stores numbers with 15 significant digits; longer numeric IDs are already rounded


@dataclass
class LabelTable:
    """Labels of one sheet: person ID (as text) → class name, and how they were read."""

    labels: dict[str, str]
    class_names: list[str]
    sheet: str
    id_column: str
    label_column: str
    notes: list[str] = field(default_factory=list)

    @property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


def normalize_id(value: Any) -> str | None:
    """Excel cell → person ID text: 1005, 1005.0 and ' 1005 ' all become '1005'."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN/inf cached from a formula error
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    # NFC: a name typed on one system and copied from macOS folder names on another compare equal.
    text = unicodedata.normalize("NFC", str(value).strip())
    return None if not text or text in EXCEL_ERRORS else text


def is_excel_error(value: Any) -> bool:
    return isinstance(value, str) and value.strip() in EXCEL_ERRORS


def normalize_label(value: Any) -> str | None:
    """Labels may be ints (0/1), floats that are whole numbers, or text (Chinese too)."""
    return normalize_id(value)


def _header_key(text: Any) -> str:
    return re.sub(r"[\s_\-.]+", "", str(text).strip().lower()) if text is not None else ""


def _sorted_classes(names: set[str]) -> list[str]:
    def number(name: str) -> float | None:
        try:
            return float(name)
        except ValueError:
            return None

    if all(number(n) is not None for n in names):
        return sorted(names, key=lambda n: (number(n), n))
    return sorted(names)


def _open_workbook(path: Path):
    import openpyxl

    if not path.exists():
        raise UserError(f"label file not found: {path}", "check the --label-excel path")
    if not path.is_file():
        raise UserError(f"label file is not a file: {path}", "point --label-excel to an .xlsx file")
    with path.open("rb") as handle:
        magic = handle.read(8)
    if magic == OLE2_MAGIC:
        raise UserError(
            f"{path} is password-protected or an old .xls workbook",
            "open it in Excel or LibreOffice, remove the password and save it as .xlsx",
        )
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        raise UserError(f"{path} is not an .xlsx file", "save the labels from Excel or LibreOffice as .xlsx")
    try:
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError, EOFError) as err:
        raise UserError(
            f"{path} cannot be read as .xlsx ({type(err).__name__})", "the file is corrupt: save it again from Excel"
        ) from None
    except Exception as err:  # noqa: BLE001 - openpyxl raises its own InvalidFileException and parser errors
        raise UserError(
            f"{path} cannot be read as .xlsx ({err})", "the file is corrupt: save it again from Excel"
        ) from None


def _choose_column(
    headers: list[Any],
    wanted: str | None,
    known: tuple[str, ...],
    what: str,
    flag: str,
    fallback: int,
    taken: int | None,
) -> tuple[int, str]:
    keys = [_header_key(h) for h in headers]
    shown = ", ".join(repr(str(h)) for h in headers if h is not None) or "(none)"
    if wanted is not None:
        key = _header_key(wanted)
        if not key:  # would match the first column without a header
            raise UserError(f"{flag} '{wanted}' is empty; the headers are {shown}", f"pass one of them to {flag}")
        if key not in keys:
            raise UserError(
                f"{flag} '{wanted}' is not a column header; the headers are {shown}", f"pass one of them to {flag}"
            )
        if keys.index(key) == taken:
            raise UserError(
                f"{flag} '{wanted}' is also the ID column", f"pass the header of the {what} column to {flag}"
            )
        return keys.index(key), f"{what} column '{headers[keys.index(key)]}' (from {flag})"
    for candidate in known:
        for i, key in enumerate(keys):
            if key == candidate and i != taken:
                return i, f"{what} column '{headers[i]}' (recognised header)"
    if fallback >= len(headers) or fallback == taken:
        raise UserError(f"no {what} column found; the headers are {shown}", f"name it with {flag}")
    return (
        fallback,
        f"{what} column '{headers[fallback]}' (column {chr(ord('A') + fallback)}: no known header, "
        f"pass {flag} to choose)",
    )


def read_labels(
    path: str | Path,
    sheet: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    min_classes: int = 2,
) -> LabelTable:
    """Read person IDs and labels from an .xlsx sheet; every user mistake is a UserError.

    Training needs two classes; evaluating a model on an external cohort of one class (say, all
    patients with plaque) is legitimate, so evaluate passes min_classes=1."""
    path = Path(path)
    workbook = _open_workbook(path)
    try:
        names = workbook.sheetnames
        if not names:
            raise UserError(f"{path} has no sheets", "save a workbook with the labels on its first sheet")
        if sheet is None:
            sheet_name = names[0]
        elif sheet in names:
            sheet_name = sheet
        else:
            raise UserError(
                f"sheet '{sheet}' not found in {path}; its sheets are {', '.join(map(repr, names))}",
                "pass one of them to --sheet",
            )
        rows = [list(r) for r in workbook[sheet_name].iter_rows(values_only=True)]
    finally:
        workbook.close()

    # (Excel row number, cells) of the rows that hold anything; messages name rows as Excel numbers them.
    numbered = [(number, r) for number, r in enumerate(rows, start=1) if any(normalize_id(v) is not None for v in r)]
    if not numbered:
        raise UserError(f"sheet '{sheet_name}' of {path} is empty", "put a header row and one row per person on it")
    headers = [normalize_id(h) for h in numbered[0][1]]
    id_idx, id_note = _choose_column(headers, id_column, ID_HEADERS, "ID", "--id-column", 0, None)
    label_idx, label_note = _choose_column(
        headers, label_column, LABEL_HEADERS, "label", "--label-column", 1 if id_idx != 1 else 0, id_idx
    )
    notes = [f"sheet '{sheet_name}': {id_note}, {label_note}"]

    labels: dict[str, str] = {}
    first_row: dict[str, int] = {}
    conflicts: list[str] = []
    no_id = no_label = repeated = 0
    errors: list[str] = []
    long_numbers: list[str] = []
    for row_number, row in numbered[1:]:
        id_cell = row[id_idx] if id_idx < len(row) else None
        label_cell = row[label_idx] if label_idx < len(row) else None
        person_id, label = normalize_id(id_cell), normalize_label(label_cell)
        errors += [f"{cell.strip()} in row {row_number}" for cell in (id_cell, label_cell) if is_excel_error(cell)]
        if (
            isinstance(id_cell, (int, float))
            and not isinstance(id_cell, bool)
            and person_id
            and abs(id_cell) >= 10**EXCEL_DIGITS
        ):
            long_numbers.append(person_id)
        if person_id is None:
            no_id += label is not None
            continue
        if label is None:
            no_label += 1
            continue
        if person_id in labels:
            if labels[person_id] != label:
                conflicts.append(
                    f"'{person_id}' is '{labels[person_id]}' in row {first_row[person_id]} "
                    f"and '{label}' in row {row_number}"
                )
            repeated += 1
            continue
        labels[person_id] = label
        first_row[person_id] = row_number
    if conflicts:
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise UserError(
            f"duplicate person IDs with conflicting labels in {path}: {'; '.join(conflicts[:3])}{more}",
            "keep one row per person",
        )
    if errors:
        notes.append(
            f"{len(errors)} cell(s) hold an Excel error value and count as empty (e.g. {errors[0]}): fix the formulas"
        )
    if long_numbers:
        notes.append(
            f"{len(long_numbers)} ID(s) are numbers of more than {EXCEL_DIGITS} digits (e.g. {long_numbers[0]}); Excel "
            f"keeps only {EXCEL_DIGITS} digits, so they may not match their folders: store such IDs as text"
        )
    if no_id:
        notes.append(f"{no_id} row(s) have a label but no ID and were skipped")
    if no_label:
        notes.append(f"{no_label} person(s) have no label and were skipped")
    if repeated:
        notes.append(f"{repeated} repeated row(s) with the same label were merged")
    class_names = _sorted_classes(set(labels.values()))
    if len(class_names) < min_classes:
        found = f"only '{class_names[0]}'" if class_names else "no labels"
        raise UserError(
            f"{path} has {found} in column '{headers[label_idx]}'; "
            + ("a classifier needs at least two classes" if min_classes > 1 else "nothing to evaluate"),
            "check --label-column and the sheet's label cells",
        )
    return LabelTable(labels, class_names, sheet_name, str(headers[id_idx]), str(headers[label_idx]), notes)


def read_person_columns(
    path: str | Path, sheet: str, id_header: str, columns: list[str]
) -> tuple[dict[str, dict[str, str | None]], list[str]]:
    """({column: {person ID: cell text or None}}, notes): extra columns of the label sheet (a subgroup such
    as hospital or sex, a reader's call), for the persons of the ID column that read_labels chose.

    The header row is the first row holding the ID header and every wanted header, so this does not
    depend on how read_labels found its header row. Cells are read as IDs are (normalize_id)."""
    workbook = _open_workbook(Path(path))
    try:
        rows = [list(r) for r in workbook[sheet].iter_rows(values_only=True)]
    finally:
        workbook.close()
    wanted = [_header_key(c) for c in columns]
    id_key = _header_key(id_header)
    header_number = next(
        (i for i, row in enumerate(rows) if {id_key, *wanted} <= {_header_key(normalize_id(h)) for h in row}), None
    )
    if header_number is None:
        id_row = next((row for row in rows if id_key in {_header_key(normalize_id(h)) for h in row}), [])
        shown = ", ".join(repr(str(normalize_id(h))) for h in id_row if normalize_id(h) is not None) or "(none)"
        missing = [c for c, k in zip(columns, wanted) if k not in {_header_key(normalize_id(h)) for h in id_row}]
        raise UserError(
            f"column(s) {', '.join(map(repr, missing))} not found in sheet '{sheet}' of {path}; "
            f"the headers are {shown}",
            "pass the header of a column of the label sheet",
        )
    keys = [_header_key(normalize_id(h)) for h in rows[header_number]]
    id_idx = keys.index(id_key)
    out: dict[str, dict[str, str | None]] = {c: {} for c in columns}
    conflicts: list[str] = []
    for row_number, row in enumerate(rows[header_number + 1 :], start=header_number + 2):
        person = normalize_id(row[id_idx]) if id_idx < len(row) else None
        if person is None:
            continue
        for column, key in zip(columns, wanted):
            idx = keys.index(key)
            value = normalize_id(row[idx]) if idx < len(row) else None
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
