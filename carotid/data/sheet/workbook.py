"""Reading one sheet of an .xlsx file, bounded: which sheet, its non-empty rows, and where the header row is.

The workbook is read with openpyxl's read-only mode. Before openpyxl parses anything, the uncompressed size
of the parts it will parse is checked, so a hostile or broken file (a 1 GB cell, rows styled out to column
XFD) ends in an `error:` within seconds instead of a MemoryError after minutes.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils import get_column_letter, range_boundaries
from openpyxl.worksheet._reader import WorkSheetParser

from carotid.core.errors import UserError
from carotid.core.library_words import reading
from carotid.data.sheet import raw_xml

MAX_ROWS = 100_000  # non-empty rows; a label sheet has one per person
MAX_COLUMNS = 500  # columns read; a value further right is an error, not silently dropped
MAX_CELL_CHARS = 32_767  # Excel's own limit per cell: a longer text was not typed in Excel
MAX_PART_BYTES = 64 * 2**20  # uncompressed XML of the sheet or its shared strings (~150,000 rows x 10 columns)
OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls and password-protected .xlsx are OLE2 containers
SHARED_PARTS = ("xl/sharedStrings.xml", "xl/styles.xml", "xl/workbook.xml")


@dataclass
class Sheet:
    """The non-empty rows of one sheet, and how the sheet and its header row were chosen."""

    name: str
    reason: str  # why this sheet, for the start-up block
    rows: list[tuple[int, list[Any]]]  # (Excel row number, values without trailing empty cells)
    has_formulas: bool
    merged: list[str] = field(default_factory=list)  # merged ranges spanning several rows, e.g. 'B2:B5'
    hidden_rows: set[int] = field(default_factory=set)  # row numbers hidden in Excel (by hand or by a filter)
    filled_sheets: list[str] = field(default_factory=list)  # an empty sheet chosen without --sheet: those with data

    def row(self, number: int) -> list[Any] | None:
        return next((values for n, values in self.rows if n == number), None)


def cell_name(row: int, column: int) -> str:
    """'B7' for row 7, column index 1 (0-based)."""
    return f"{get_column_letter(column + 1)}{row}"


def _lock_file(path: Path) -> UserError | None:
    """Excel writes '~$label.xlsx' (its owner file: who has label.xlsx open) beside an open workbook."""
    if not path.name.startswith("~$"):
        return None
    rest = path.name[2:]
    beside = sorted(
        p.name
        for p in path.parent.glob("*")
        if not p.name.startswith("~$") and p.is_file() and (p.name == rest or p.name.endswith(rest))
    )
    real = path.parent / (rest if rest in beside else beside[0]) if beside else None
    return UserError(
        f"{path} is Excel's lock file (Excel writes it beside a workbook it has open), not the workbook",
        f"pass the workbook itself, {real}" if real else f"pass the workbook itself (the lock file is for '{rest}')",
    )


def cell_at(row: list[Any], index: int) -> Any:
    """The value in column `index` of a row read by read_sheet (trailing empty cells are not stored)."""
    return row[index] if index < len(row) else None


def _check_file(path: Path) -> None:
    if (lock := _lock_file(path)) is not None:
        raise lock
    if not path.exists():
        raise UserError(f"label file not found: {path}", "check the --label-excel path")
    if not path.is_file():
        raise UserError(f"label file is not a file: {path}", "point --label-excel to an .xlsx file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(8)
    except PermissionError:
        raise UserError(
            f"label file {path} cannot be read (permission denied)", "give your user read access to it"
        ) from None
    if magic == OLE2_MAGIC:
        raise UserError(
            f"{path} is password-protected or an old .xls workbook",
            "open it in Excel or LibreOffice, remove the password and save it as .xlsx",
        )
    if path.suffix.lower() not in (".xlsx", ".xlsm"):
        raise UserError(f"{path} is not an .xlsx file", "save the labels from Excel or LibreOffice as .xlsx")


def _check_part_sizes(path: Path, archive: zipfile.ZipFile, parts: tuple[str, ...]) -> None:
    for info in archive.infolist():
        if info.filename in parts and info.file_size > MAX_PART_BYTES:
            raise UserError(
                f"{path} holds {info.file_size / 2**20:.0f} MB of uncompressed {info.filename} "
                f"(a label sheet is read up to {MAX_PART_BYTES // 2**20} MB): a cell or a range of it is huge",
                "copy the ID and label columns into a new workbook and pass that to --label-excel",
            )


STRICT_NAMESPACE = b"http://purl.oclc.org/ooxml/"  # Strict Open XML's namespaces (ISO 29500 Strict)


def _refuse_strict(path: Path, archive: zipfile.ZipFile) -> None:
    """Excel's 'Strict Open XML Spreadsheet' (.xlsx too): openpyxl sees no sheet in it."""
    try:
        with archive.open("_rels/.rels") as rels:
            strict = STRICT_NAMESPACE in rels.read(MAX_PART_BYTES)
    except KeyError:
        return
    if strict:
        raise UserError(
            f"{path} is saved as 'Strict Open XML Spreadsheet', which cannot be read here",
            "open it in Excel and save it as 'Excel Workbook (*.xlsx)' (File > Save As)",
        )


def _corrupt(path: Path, err: BaseException) -> UserError:
    what = type(err).__name__ if isinstance(err, (zipfile.BadZipFile, KeyError, OSError, EOFError)) else str(err)
    return UserError(f"{path} cannot be read as .xlsx ({what})", "the file is corrupt: save it again from Excel")


def open_workbook(path: Path, data_only: bool = True):
    """The workbook in read-only mode; every way the file can be wrong is a UserError."""

    _check_file(path)
    try:
        with zipfile.ZipFile(path) as archive:
            _check_part_sizes(path, archive, SHARED_PARTS)
            _refuse_strict(path, archive)
        return openpyxl.load_workbook(path, read_only=True, data_only=data_only)
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"label file {path} cannot be read (permission denied)", "give your user read access") from None
    except Exception as err:  # noqa: BLE001 - zipfile, XML parsers and openpyxl raise many types for a bad file
        raise _corrupt(path, err) from None


def choose_sheet(workbook, wanted: str | None, path: Path) -> tuple[str, str]:
    """(sheet name, why): the named sheet, else the active sheet if visible, else the first visible one."""
    names = workbook.sheetnames
    if not names:
        raise UserError(f"{path} has no sheets", "save a workbook with the labels on its first sheet")
    hidden = [ws.title for ws in workbook.worksheets if ws.sheet_state != "visible"]
    skipped = f"; hidden sheet(s) {', '.join(map(repr, hidden))} not read, unless named with --sheet" if hidden else ""
    if wanted is not None:
        if wanted not in names:
            raise UserError(
                f"sheet '{wanted}' not found in {path}; its sheets are {', '.join(map(repr, names))}",
                "pass one of them to --sheet",
            )
        return wanted, "from --sheet" + (" (a hidden sheet)" if wanted in hidden else "")
    visible = [name for name in names if name not in hidden]
    if not visible:
        raise UserError(f"every sheet of {path} is hidden", "name the sheet to read with --sheet")
    others = [n for n in visible if n != visible[0]]
    try:
        active = workbook.active.title if workbook.active is not None else None
    except (IndexError, AttributeError):  # a workbook view pointing past the last sheet
        active = None
    if active in visible:
        others = [n for n in visible if n != active]
        more = f"; other sheet(s) {', '.join(map(repr, others))} not read" if others else ""
        return active, f"the active sheet{more}{skipped}"
    more = f"; other sheet(s) {', '.join(map(repr, others))} not read" if others else ""
    return visible[0], f"the first visible sheet{more}{skipped}"


def read_sheet(path: str | Path, wanted: str | None = None) -> Sheet:
    """The chosen sheet's non-empty rows, bounded by MAX_ROWS, MAX_COLUMNS and MAX_CELL_CHARS."""
    with reading(path):  # openpyxl's warnings meanwhile name this file
        return _read_sheet(Path(path), wanted)


def _read_sheet(path: Path, wanted: str | None) -> Sheet:
    workbook = open_workbook(path)
    try:
        name, reason = choose_sheet(workbook, wanted, path)
        worksheet = workbook[name]
        part = worksheet._worksheet_path  # read-only sheets name their zip part only here
        with zipfile.ZipFile(path) as archive:
            _check_part_sizes(path, archive, (part,))
            has_formulas = raw_xml.has_formulas(archive, part)
        layout: dict = {}
        rows = _bounded_rows(worksheet, name, path, layout)
        filled = _filled_sheets(workbook, path, name) if not rows and wanted is None else []
    except UserError:
        raise
    except PermissionError:
        raise UserError(f"label file {path} cannot be read (permission denied)", "give your user read access") from None
    except Exception as err:  # noqa: BLE001 - a broken sheet part fails inside openpyxl's parser
        raise _corrupt(path, err) from None
    finally:
        workbook.close()
    return Sheet(name, reason, rows, has_formulas, layout["merged"], layout["hidden_rows"], filled)


def _filled_sheets(workbook, path: Path, empty: str) -> list[str]:
    """The other sheets holding a value (each read up to its first non-empty row), when the one chosen without
    --sheet is empty: an empty active sheet beside the filled one is a workbook saved on the wrong tab."""
    filled = []
    with zipfile.ZipFile(path) as archive:
        for worksheet in workbook.worksheets:
            if worksheet.title == empty or not hasattr(worksheet, "_worksheet_path"):
                continue
            _check_part_sizes(path, archive, (worksheet._worksheet_path,))
            if any(cells for _, cells in _sparse_rows(worksheet)):
                filled.append(worksheet.title)
    return filled


def _sparse_rows(worksheet, layout: dict | None = None):
    """(Excel row number, {column index: value}) for each row the sheet's XML holds, empty cells left out.

    openpyxl's iter_rows pads every row to the sheet's width, 16,384 cells for rows styled out to column XFD
    (a MemoryError on a 1 MB file), so rows are taken, sparse, from the parser iter_rows itself uses, fed the
    XML less its merged ranges (carotid.data.sheet.raw_xml). `layout` receives, once the rows are read, the
    hidden rows (from the parser's row attributes) and the merged ranges spanning several rows."""

    workbook = worksheet.parent
    with worksheet._get_source() as raw:
        source = raw_xml.WithoutMergeCells(raw)
        parser = WorkSheetParser(
            source,
            worksheet._shared_strings,
            data_only=workbook.data_only,
            epoch=workbook.epoch,
            date_formats=workbook._date_formats,
            timedelta_formats=workbook._timedelta_formats,
        )
        for number, cells in parser.parse():
            yield number, {cell["column"] - 1: cell["value"] for cell in cells if cell["value"] is not None}
    if layout is not None:
        layout["hidden_rows"] = {
            int(r) for r, attrs in parser.row_dimensions.items() if attrs.get("hidden") in ("1", "true")
        }
        layout["merged"] = [ref for ref in source.refs if _rows_spanned(ref) > 1]


def _rows_spanned(ref: str) -> int:
    try:
        _, first, _, last = range_boundaries(ref)
    except ValueError:  # a malformed range: openpyxl's own reader ignores it too
        return 0
    return (last or first or 0) - (first or 0) + 1


def _bounded_rows(worksheet, name: str, path: Path, layout: dict | None = None) -> list[tuple[int, list[Any]]]:
    rows: list[tuple[int, list[Any]]] = []
    for number, cells in _sparse_rows(worksheet, layout):
        if not cells:
            continue
        if len(rows) == MAX_ROWS:
            raise UserError(
                f"sheet '{name}' of {path} has more than {MAX_ROWS:,} non-empty rows",
                "a label sheet holds one row per person: copy the ID and label columns into a new workbook",
            )
        last = max(cells)
        if last >= MAX_COLUMNS:
            raise UserError(
                f"sheet '{name}' of {path} has a value in {cell_name(number, last)}, beyond the "
                f"{MAX_COLUMNS} columns a label sheet is read to",
                "delete the cells right of the table, or copy the ID and label columns into a new workbook",
            )
        for column, value in cells.items():
            if isinstance(value, str) and len(value) > MAX_CELL_CHARS:
                raise UserError(
                    f"cell {cell_name(number, column)} of sheet '{name}' in {path} holds {len(value):,} characters "
                    f"(Excel allows {MAX_CELL_CHARS:,})",
                    "the file was not saved by Excel: clear that cell or copy the ID and label columns to a new file",
                )
        values = [None] * (last + 1)
        for column, value in cells.items():
            values[column] = value
        rows.append((number, values))
    return rows


def formula_cells(
    path: str | Path, sheet: str, columns: set[int], first_row: int, filled: set[tuple[int, int]]
) -> dict[tuple[int, int], str]:
    """{(row, column): formula} for the cells of `columns` from `first_row` on that hold a formula but read as
    empty (`filled` lists the cells that hold a value): the sheet read again, without cached results."""
    workbook = open_workbook(Path(path), data_only=False)
    found: dict[tuple[int, int], str] = {}
    try:
        for number, cells in _sparse_rows(workbook[sheet]):
            for column in columns:
                value = cells.get(column)
                if number >= first_row and isinstance(value, str) and value.startswith("="):
                    if (number, column) not in filled:
                        found[(number, column)] = value
    finally:
        workbook.close()
    return found
