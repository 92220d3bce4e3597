"""The label sheet as a `LabelTable`: the ID and label columns, each person's class, and the positive class.

Every choice made without a flag (sheet, header row, columns, class spellings, positive class) is recorded
in `LabelTable.choices` with its reason, and made only when it is unambiguous; otherwise a UserError lists
the candidates and the flag that chooses. Reading the workbook itself is `carotid.data.sheet.workbook`; the header row
and which columns are the ID and the label, `carotid.data.sheet.columns`; cells that cannot be read as meant (merged,
hidden, blank, formulas), `carotid.data.sheet.checks`; what a label cell means, `carotid.data.classes`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carotid.core.errors import UserError
from carotid.data.classes import (
    EXCEL_ERRORS,
    cell_text,
    choose_positive,
    is_missing_mark,
    is_undecided,
    merge_spellings,
    normalize_label,
    sorted_classes,
)
from carotid.data.sheet.checks import (
    empty_sheet_error,
    hidden_rows_used,
    refuse_blank_id_column,
    refuse_merged_cells,
    refuse_uncached_formulas,
)
from carotid.data.sheet.columns import choose_columns, find_header_row, recognised_header, wanted_column
from carotid.data.sheet.label_values import is_totals_row, refuse_measurement, totals_note
from carotid.data.sheet.workbook import OLE2_MAGIC, cell_at, read_sheet

__all__ = ["OLE2_MAGIC", "EXCEL_ERRORS", "LabelTable", "normalize_id", "normalize_label", "read_labels"]

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
    warnings: list[str] = field(default_factory=list)
    header_row: int = 1
    positive_class: str | None = None
    # {"sheet" | "header_row" | "id_column" | "label_column" | "positive_class": why it was chosen}
    choices: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] | None = None  # person ID → group (--group-column); None without that column

    @property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.class_names)}


normalize_id = cell_text  # an ID is matched as text; carotid.data.folders.matching compares IDs with folder names


def read_labels(
    path: str | Path,
    sheet: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    min_classes: int = 2,
    *,
    header_row: int | None = None,
    positive_class: str | None = None,
    known_classes: list[str] | None = None,
    group_column: str | None = None,
) -> LabelTable:
    """Read person IDs and labels from an .xlsx sheet; every user mistake is a UserError.

    Training needs two classes; evaluating a model on an external cohort of one class (say, all patients
    with plaque) is legitimate, so evaluate passes min_classes=1, and the model's class names as
    `known_classes` so that a spelling variant of a class gets the model's spelling."""
    path = Path(path)
    data = read_sheet(path, sheet)
    if not data.rows:
        raise empty_sheet_error(path, data)
    position, header_why = find_header_row(data, header_row, recognised_header)
    header_number, raw_headers = data.rows[position]
    headers = [cell_text(h) for h in raw_headers]
    excluded = frozenset() if group_column is None else frozenset({_group_index(headers, group_column)})
    id_idx, id_why, label_idx, label_why = choose_columns(headers, id_column, label_column, excluded)
    body = data.rows[position + 1 :]
    refuse_uncached_formulas(path, data, header_number, (id_idx, label_idx))
    refuse_merged_cells(path, data, header_number, headers, (id_idx, label_idx))
    refuse_blank_id_column(path, data.name, body, headers, id_idx, label_idx)
    rows = _label_rows(path, body, id_idx, label_idx, known_classes)
    rows.warnings += hidden_rows_used(data, rows.first_row)
    refuse_measurement(path, str(headers[label_idx]), rows.labels)
    class_names = sorted_classes(set(rows.labels.values()))
    if len(class_names) < min_classes:
        found = f"only '{class_names[0]}'" if class_names else "no labels"
        raise UserError(
            f"{path} has {found} in column '{headers[label_idx]}'; "
            + ("a classifier needs at least two classes" if min_classes > 1 else "nothing to evaluate"),
            "check --label-column and the sheet's label cells",
        )
    positive, positive_why, doubtful = choose_positive(class_names, positive_class)
    if doubtful:
        rows.warnings.append(f"positive class '{positive}' is {positive_why}")
    choices = {
        "sheet": data.reason,
        "header_row": header_why,
        "id_column": id_why,
        "label_column": label_why,
        "positive_class": positive_why,
    }
    groups = None
    if group_column is not None:
        groups = _read_groups(headers, body, id_idx, rows.labels, group_column, rows.notes)
    return LabelTable(
        rows.labels,
        class_names,
        data.name,
        str(headers[id_idx]),
        str(headers[label_idx]),
        rows.notes,
        rows.warnings,
        header_number,
        positive,
        choices,
        groups,
    )


# ---------------------------------------------------------------------------------------------
# The rows: one label per person, and what was left out
# ---------------------------------------------------------------------------------------------


@dataclass
class _Rows:
    labels: dict[str, str]  # person ID → class name
    first_row: dict[str, int]  # person ID → the Excel row its label was read from
    notes: list[str]
    warnings: list[str]


def _label_rows(
    path: Path, body: list[tuple[int, list]], id_idx: int, label_idx: int, known_classes: list[str] | None
) -> _Rows:
    """Each person's label (class spellings merged), repeated rows merged, conflicting ones refused."""
    cells = [(n, cell_at(row, id_idx), cell_at(row, label_idx)) for n, row in body]
    texts = [(n, cell_text(i), normalize_label(lab)) for n, i, lab in cells]
    totals = [(n, p) for n, p, _ in texts if p is not None and is_totals_row(p)]  # '合计' with a count beside it
    texts = [(n, p, t) for n, p, t in texts if (n, p) not in totals]
    column = {t.casefold() for _, _, t in texts if t is not None}
    missing = [t for _, _, t in texts if t is not None and is_missing_mark(t, column)]
    texts = [(n, p, None if t is None or is_missing_mark(t, column) else t) for n, p, t in texts]
    undecided = Counter(t for _, p, t in texts if p is not None and t is not None and is_undecided(t))
    texts = [(n, p, None if t is not None and is_undecided(t) else t) for n, p, t in texts]
    names, warnings = merge_spellings([t for _, p, t in texts if p is not None and t], known_classes)
    labels: dict[str, str] = {}
    first_row: dict[str, int] = {}
    conflicts: list[str] = []
    no_id = no_label = repeated = 0
    for row_number, person_id, text in texts:
        if person_id is None or text is None:
            no_id += person_id is None and text is not None
            no_label += person_id is not None and text is None
            continue
        label = names[text]
        if person_id in labels:
            if labels[person_id] != label:
                conflicts.append(
                    f"'{person_id}' is '{labels[person_id]}' in row {first_row[person_id]} "
                    f"and '{label}' in row {row_number}"
                )
            repeated += 1
            continue
        labels[person_id], first_row[person_id] = label, row_number
    if conflicts:
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise UserError(
            f"duplicate person IDs with conflicting labels in {path}: {'; '.join(conflicts[:3])}{more}",
            "keep one row per person",
        )
    if undecided:  # a binary study would otherwise grow a class per spelling of "not decided yet"
        listed = ", ".join(f"'{t}' ({k})" for t, k in undecided.most_common())
        warnings.append(
            f"{sum(undecided.values())} person(s) have an undecided label ({listed}): left out as unlabelled, not "
            "a class; give them their class in the sheet when it is decided"
        )
    notes = (
        totals_note(totals)
        + _cell_notes(cells, missing)
        + [
            text
            for count, text in (
                (no_id, f"{no_id} row(s) have a label but no ID and were skipped"),
                (no_label, f"{no_label} person(s) have no label and were skipped"),
                (repeated, f"{repeated} repeated row(s) with the same label were merged"),
            )
            if count
        ]
    )
    return _Rows(labels, first_row, notes, warnings)


def _cell_notes(cells: list[tuple[int, Any, Any]], missing: list[str]) -> list[str]:
    """Notes on cells that read as blank or may not match: Excel errors, rounded long numbers, missing marks."""
    notes = []
    errors = [f"{c.strip()} in row {n}" for n, i, lab in cells for c in (i, lab) if _is_excel_error(c)]
    long_numbers = [
        cell_text(i) for _, i, _ in cells if isinstance(i, (int, float)) and not isinstance(i, bool) and _long(i)
    ]
    if errors:
        notes.append(
            f"{len(errors)} cell(s) hold an Excel error value and count as empty (e.g. {errors[0]}): fix the formulas"
        )
    if long_numbers:
        notes.append(
            f"{len(long_numbers)} ID(s) are numbers of more than {EXCEL_DIGITS} digits (e.g. {long_numbers[0]}); Excel "
            f"keeps only {EXCEL_DIGITS} digits, so they may not match their folders: store such IDs as text"
        )
    if missing:
        marks = ", ".join(sorted({repr(m) for m in missing}))
        notes.append(f"{len(missing)} label cell(s) hold a missing-value mark ({marks}) and count as blank")
    return notes


def _group_index(headers: list[Any], group_column: str) -> int:
    shown = ", ".join(repr(str(h)) for h in headers if h is not None) or "(none)"
    return wanted_column(headers, group_column, "--group-column", None, "group", shown)


def _read_groups(
    headers: list[Any], rows: list[tuple[int, list]], id_idx: int, labels: dict[str, str], column: str, notes: list[str]
) -> dict[str, str]:
    """Person → group from the --group-column cells of the labelled persons' rows."""
    shown = ", ".join(repr(str(h)) for h in headers if h is not None) or "(none)"
    idx = wanted_column(headers, column, "--group-column", id_idx, "group", shown)
    groups: dict[str, str] = {}
    for row_number, row in rows:
        person_id, group = normalize_id(cell_at(row, id_idx)), normalize_id(cell_at(row, idx))
        if person_id not in labels or group is None:
            continue
        if groups.setdefault(person_id, group) != group:
            raise UserError(
                f"person '{person_id}' is in group '{groups[person_id]}' and, in row {row_number}, in group '{group}'",
                f"give each person one value in column '{headers[idx]}'",
            )
    if len(groups) < len(labels):
        notes.append(
            f"{len(labels) - len(groups)} person(s) have no value in group column '{headers[idx]}': each is a group "
            "of its own"
        )
    return groups


def _is_excel_error(value: Any) -> bool:
    return isinstance(value, str) and value.strip() in EXCEL_ERRORS


def _long(number: float) -> bool:
    return abs(number) >= 10**EXCEL_DIGITS
