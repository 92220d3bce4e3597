"""What a library warns about while reading a user's file (Pillow, pydicom, openpyxl), said in the tool's words:
the file (`reading(path)` names it, per thread, where it is read), what the warning means, and what to do.

A library's warning knows no file; the readers (carotid.data.frames.decode, the header probe, the label sheet)
wrap their reading in `reading(path)`, and carotid.core.console asks `in_our_words` before printing."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_current = threading.local()  # the file this thread is reading (DataLoader workers and probe threads each theirs)

LIBRARIES = {"PIL": "Pillow", "pydicom": "pydicom", "openpyxl": "openpyxl"}
# (library, pattern of its message, what it means for the file, what to do), first match wins.
KNOWN: list[tuple[str, str, str, str]] = [
    (
        "PIL",
        r"(Possibly )?[Cc]orrupt EXIF data",
        "its EXIF metadata (orientation, camera data) is damaged and is ignored",
        "nothing, unless the report lists the file as unreadable or shows it rotated: then re-export it",
    ),
    (
        "PIL",
        r"Image size \((\d+) pixels\) exceeds limit",
        "its {1} pixels are over Pillow's guard against decompression bombs; it is read all the same",
        "nothing if it is a real scan; otherwise remove the file",
    ),
    (
        "PIL",
        r"[Tt]runcated|premature end",
        "the file ends early: the missing part of the image is read as black",
        "copy the file again from its source, or remove it",
    ),
    (
        "openpyxl",
        r"no default style",
        "the workbook was written by a program other than Excel (it has no default cell style)",
        "nothing: the cells' values are read as they are",
    ),
    (
        "openpyxl",
        r"extension is not supported|[Uu]nknown extension|invalid specification",
        "it holds an Excel feature that is not read (data validation, conditional formatting, a defined name)",
        "nothing: the cells' values are read as they are",
    ),
    (
        "pydicom",
        r".",
        "its header breaks the DICOM standard in a way pydicom reads past ('{0}'); the frames are read as stored",
        "nothing if its frames look right in the report; otherwise re-export the study from the scanner or PACS",
    ),
]


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Names `path` as the file this thread reads, for the warnings raised meanwhile."""
    before = getattr(_current, "path", None)
    _current.path = str(path)
    try:
        yield
    finally:
        _current.path = before


def in_our_words(message: str, source: str) -> str | None:
    """The tool's sentence for a warning of `source` (a library's package name), or None for one of no library
    that reads user files (the caller then shows it as it is)."""
    if source not in LIBRARIES:
        return None
    message = " ".join(str(message).split())
    where = getattr(_current, "path", None)
    subject = where if where is not None else f"a file {LIBRARIES[source]} read"
    for library, pattern, meaning, fix in KNOWN:
        found = re.search(pattern, message) if library == source else None
        if found:
            return f"{subject}: {meaning.format(message, *found.groups())} — {fix}"
    return (
        f"{subject}: {LIBRARIES[source]} warned while reading it ('{message}') — nothing, if what the start-up "
        "block and the report show of it is right; otherwise save the file again from its program"
    )
