"""Words and columns for console messages: counted nouns ("1 person", "3 persons") and padding that
counts a Chinese character as two columns, as terminals draw it."""

from __future__ import annotations

import unicodedata

IRREGULAR = {"person": "persons", "class": "classes", "this": "these", "is": "are", "was": "were"}


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """'1 person', '2 persons', '0 images'."""
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {plural_form or IRREGULAR.get(noun, noun + 's')}"


def display_width(text: str) -> int:
    """Terminal columns of `text`: wide and full-width characters (CJK) take two, combining marks none."""
    return sum(
        0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text
    )


def pad(text: str, width: int, align: str = "<") -> str:
    """`text` padded with spaces to `width` terminal columns ('<' left, '>' right aligned)."""
    fill = " " * max(0, width - display_width(text))
    return text + fill if align == "<" else fill + text
