"""The console's own lines for what libraries say: Python warnings (Pillow's, pydicom's and openpyxl's in the
tool's words with the file, carotid.core.library_words; others with their source) become `warning: …` lines,
each said once and counted,
and the console streams never fail on a file name that is not UTF-8 (written with its bytes as \\xNN)."""

from __future__ import annotations

import os
import sys
import warnings

from carotid.core.library_words import in_our_words
from carotid.core.text import ESCAPE

_said: dict[tuple, list] = {}  # (category, file, line) → [times, text]; one entry per place that warns


def _source(filename: str) -> str:
    """'PIL', 'pydicom', 'sklearn' … for a library's file; the module's name for ours."""
    parts = filename.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts and parts.index(marker) + 1 < len(parts):
            return parts[parts.index(marker) + 1]
    return os.path.splitext(parts[-1])[0]


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    key = (category, filename, lineno)
    if key in _said:
        _said[key][0] += 1
        return
    source = _source(filename)
    text = in_our_words(str(message), source) or f"{message} ({category.__name__}, {source})"
    _said[key] = [1, text]
    rank = os.environ.get("RANK", "0")
    where = "" if rank == "0" else f" [process {rank}]"
    print(f"warning: {text}{where}", file=sys.stderr, flush=True)


def route_warnings() -> None:
    """From here Python warnings are `warning:` lines on stderr, each place once (the rest counted)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors=ESCAPE)
        except (AttributeError, ValueError, OSError):  # not a text stream that can (a test's capture)
            pass
    warnings.showwarning = _show
    # "default" shows a place once per module registry, so repeats would never be counted: count them all.
    warnings.filterwarnings("always", category=UserWarning)
    warnings.filterwarnings("always", category=RuntimeWarning)


def repeated_warnings() -> list[str]:
    """One line per warning said more than once: how many times in all."""
    return [f"warning: said {times} times in all: {text[:160]}" for times, text in _said.values() if times > 1]


def forget_warnings() -> None:
    _said.clear()
