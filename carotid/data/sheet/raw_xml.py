"""A sheet's XML read in bytes where openpyxl would be slow or blind: formulas, and the merged ranges.

openpyxl builds an object per merged range, about 0.1-0.2 ms each, so a sheet of a million (a few tens of MB
of <mergeCell> elements, within the 64 MB part limit) kept the reader busy for minutes; its read-only
worksheets then drop them anyway. `WithoutMergeCells` hands openpyxl's parser the XML with the <mergeCells>
element cut out, and collects the ranges on the way with a regular expression, in blocks of 1 MB.
"""

from __future__ import annotations

import re
import zipfile

BLOCK = 2**20
MAX_MERGED = 10_000  # merged ranges kept (the rest counted): a message names a few
MERGE_OPEN = re.compile(rb"<(?:[\w.-]+:)?mergeCells\b")
MERGE_EMPTY = re.compile(rb"<(?:[\w.-]+:)?mergeCells\b[^>]*/>")
MERGE_CLOSE = re.compile(rb"</(?:[\w.-]+:)?mergeCells\s*>")
MERGE_REF = re.compile(rb"<(?:[\w.-]+:)?mergeCell\b[^>]*?\sref=[\"']([^\"']+)[\"']")
TAIL = 64  # bytes kept back while looking for '<mergeCells', so a tag split between two blocks is found


def has_formulas(archive: zipfile.ZipFile, part: str) -> bool:
    """Whether the part holds a formula: a substring scan in 1 MB blocks (only then is it read a second time)."""
    tail = b""
    with archive.open(part) as source:
        while block := source.read(BLOCK):
            if b"<f>" in tail + block or b"<f " in tail + block:
                return True
            tail = block[-3:]
    return False


class WithoutMergeCells:
    """A readable stream of `raw` (a sheet part) less its <mergeCells> element; `refs` gets the merged
    ranges ('B2:B5', the first MAX_MERGED of them)."""

    def __init__(self, raw) -> None:
        self.raw, self.pending, self.ready, self.inside, self.ended = raw, b"", b"", False, False
        self.refs: list[str] = []

    def read(self, size: int = -1) -> bytes:
        while not self.ended and (size < 0 or len(self.ready) < size):
            block = self.raw.read(BLOCK)
            self.ended = not block
            self._take(self.pending + block)
        size = len(self.ready) if size < 0 else size
        out, self.ready = self.ready[:size], self.ready[size:]
        return out

    def _take(self, data: bytes) -> None:
        """Move what is certainly outside <mergeCells> to `ready`; keep back what a next block may complete."""
        while data:
            if not self.inside:
                found = MERGE_OPEN.search(data)
                if found is None:
                    keep = 0 if self.ended else min(TAIL, len(data))
                    self.ready += data[: len(data) - keep]
                    self.pending = data[len(data) - keep :]
                    return
                self.ready += data[: found.start()]
                data, self.inside = data[found.start() :], True
            if (empty := MERGE_EMPTY.match(data)) is not None:
                data, self.inside = data[empty.end() :], False
                continue
            close = MERGE_CLOSE.search(data)
            done = close.start() if close else (len(data) if self.ended else data.rfind(b">") + 1)
            self._collect(data[:done])
            if close is None:
                self.pending = data[done:]
                return
            data, self.inside = data[close.end() :], False
        self.pending = b""

    def _collect(self, text: bytes) -> None:
        for match in MERGE_REF.finditer(text):
            if len(self.refs) == MAX_MERGED:
                return
            self.refs.append(match[1].decode("ascii", "replace"))
