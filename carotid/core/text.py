"""Words and columns for console messages: counted nouns ("1 person", "3 persons") and padding that
counts a Chinese character as two columns, as terminals draw it."""

from __future__ import annotations

import codecs
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


# ---------------------------------------------------------------------------------------------
# Names that are not valid UTF-8
# ---------------------------------------------------------------------------------------------
# Python reads a file name's bytes that are not UTF-8 (GBK from a zip made on a Chinese Windows machine)
# as lone surrogates U+DC80..U+DCFF, which open the file but cannot be written as UTF-8. The files the
# tool writes carry them as the text "\xNN" (the byte), so every name survives, escaped.


def _escape_surrogates(err: UnicodeError):
    if not isinstance(err, UnicodeEncodeError):
        raise err
    bad = err.object[err.start : err.end]
    return "".join(
        f"\\x{ord(ch) - 0xDC00:02x}" if 0xDC80 <= ord(ch) <= 0xDCFF else f"\\u{ord(ch):04x}" for ch in bad
    ), err.end


ESCAPE = "carotid-escape"  # the error handler: encode(..., errors=ESCAPE)
codecs.register_error(ESCAPE, _escape_surrogates)


def is_utf8(name: str) -> bool:
    """False for a name holding bytes that are not UTF-8 (read as lone surrogates)."""
    if name.isascii():
        return True
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(name: str) -> str:
    """`name` with its non-UTF-8 bytes written as \\xNN (as the tool's files carry it)."""
    return name if is_utf8(name) else name.encode("utf-8", ESCAPE).decode("utf-8")
