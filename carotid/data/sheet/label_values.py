"""Label cells that are not classes, and rows that are not persons: a measurement taken as the label (IMT in
mm, an age), and a totals row under the table ('合计', 'Total'), whose count would become a class."""

from __future__ import annotations

from pathlib import Path

from carotid.core.errors import UserError

# The ID cell of a row that sums the table up (compared case-folded, without a trailing colon).
TOTAL_WORDS = frozenset(
    {"合计", "总计", "小计", "共计", "汇总", "总数", "合計", "總計", "小計"}
    | {"total", "totals", "sum", "subtotal", "grand total"}
)
# Classes never need this many distinct numbers; a measurement has about one per person.
MEASUREMENT_MIN = 10


def is_totals_row(person_id: str) -> bool:
    return person_id.casefold().strip().rstrip(":：").strip() in TOTAL_WORDS


def totals_note(rows: list[tuple[int, str]]) -> list[str]:
    """The note naming the totals rows left out (row number as Excel shows it, and the ID cell)."""
    if not rows:
        return []
    shown = ", ".join(f"row {n} ('{text}')" for n, text in rows[:3])
    return [f"{shown}: a totals row, not a person: left out"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def refuse_measurement(path: Path, column: str, labels: dict[str, str]) -> None:
    """Labels that are all numbers, many and distinct (fractions, or about one per person): a measurement.

    Grades (0-4) and 0/1 codes stay classes: fewer than MEASUREMENT_MIN whole numbers are never refused."""
    numbers = [_number(text) for text in set(labels.values())]
    if not numbers or any(n is None for n in numbers):
        return
    fractions = any(not n.is_integer() for n in numbers)
    if len(numbers) < 5 or not (fractions or (len(numbers) >= MEASUREMENT_MIN and 2 * len(numbers) > len(labels))):
        return
    raise UserError(
        f"column '{column}' of {path} has {len(numbers)} distinct numbers for {len(labels)} persons "
        f"({min(numbers):g} to {max(numbers):g}): a measurement, not a class",
        "choose the label column with --label-column (or add a column of classes, e.g. plaque yes/no, to the sheet)",
    )
