"""What the docs say, read as a user reads them: the command lines of README.md and docs/*.md, the files a page
lists and the CSV column lists, for tests/test_docs.py. Every page under docs/ is read, so a new page is held too."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A line (or inline code) that starts with a command, after environment settings: `python -m carotid.X`,
# `.venv/bin/python -m carotid.X`, `accelerate launch … -m carotid.X`, `carotid-X`. Mentions inside prose or printed
# messages ("made by carotid-train") are not command lines.
COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S*\s+)*(?:"
    r"(?P<launch>accelerate launch(?P<launch_args>(?:\s+\S+)*?)\s+-m\s+carotid\.(?P<lmodule>[\w.]+))"
    r"|\S*python3?\s+-m\s+carotid\.(?P<pmodule>[\w.]+)"
    r"|carotid-(?P<script>\w+))(?=\s|$)"
)
ELLIPSIS = ("…", "...")


@dataclass(frozen=True)
class DocCommand:
    page: str  # README.md or docs/NAME.md
    line: int
    text: str  # the command as the page writes it (continuation lines joined)
    module: str  # train, evaluate, …
    args: tuple[str, ...]  # the tool's arguments, placeholders kept, brackets and alternatives resolved
    launch_args: tuple[str, ...] | None  # accelerate launch's own options, when launched
    elided: bool  # the page writes "…": options may be left out


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def _code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every shell line: in fenced blocks other than Python, indented code blocks, and
    inline `code` spans; a line ending in a backslash continues on the next."""
    lines, fenced, language, pending, start = [], False, "", "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, language = not fenced, line.strip().strip("`").strip()
            continue
        indented = not fenced and line.startswith("    ") and not line.lstrip().startswith(("-", "*", "|"))
        if (fenced and language != "python") or indented or pending:
            if pending:
                pending += " " + line.strip()
            else:
                pending, start = line.strip(), number
            if pending.endswith("\\"):
                pending = pending[:-1].rstrip()
                continue
            lines.append((start, pending))
            pending = ""
        elif not fenced:
            lines += [(number, span) for span in re.findall(r"`([^`]+)`", line)]
    return lines


def _tokens(text: str) -> list[str]:
    """Shell words without comments; `[--out X]` → `--out X`; `a|b|c` (alternatives) → `a`; `…` dropped."""
    try:
        words = shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose
        words = text.split()
    out = []
    for word in words:
        word = word.strip("[]")
        if not word or word in ELLIPSIS:
            continue
        if word.startswith("$"):  # a shell variable: a value after an option (a number here), else options
            if out and out[-1].startswith("--"):
                out.append("1")
            continue
        if "|" in word and not word.startswith("'"):
            word = word.split("|")[0]
        out.append(word)
    return out


def commands() -> list[DocCommand]:
    found = []
    for page in pages():
        for number, line in _code_lines(page.read_text(encoding="utf-8")):
            line = line.split(" # ")[0].strip() if not line.startswith("#") else ""
            match = COMMAND.search(line)
            if not match:
                continue
            module = match["lmodule"] or match["pmodule"] or match["script"]
            rest = line[match.end() :]
            # The next command on the same line (`… && carotid-evaluate …`) ends this one.
            rest = re.split(r"\s(?:&&|\|\||;|\|)\s", rest)[0]
            launch = tuple(_tokens(match["launch_args"])) if match["launch"] else None
            found.append(
                DocCommand(
                    _name(page),
                    number,
                    line.strip(),
                    module,
                    tuple(_tokens(rest)),
                    launch,
                    any(e in line for e in ELLIPSIS) or " $" in rest,
                )
            )
    return found


def section(page: str, heading: str) -> str:
    """The text under a heading (any level) of a page, to the next heading of that level or above."""
    text = (ROOT / page).read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"{page} has no heading {heading!r}"
    level = len(match[1])
    end = re.search(rf"^#{{1,{level}}} ", text[match.end() :], re.M)
    return text[match.end() : match.end() + end.start() if end else None]


# A column list: a backticked CSV file name, then (before the next CSV name, within the line) a backticked list
# of at least three comma-separated names.
CSV_COLUMNS = re.compile(r"`(?P<file>[\w<>.\-/]*\.csv)`(?P<between>[^`\n]*(?:`[^`,\n]*`[^`\n]*)*?)`(?P<cols>[^`]+)`")


def csv_column_lists() -> list[tuple[str, str, list[str]]]:
    """(page, CSV file name, columns) for every column list the docs give."""
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for line in text.splitlines():
            for match in CSV_COLUMNS.finditer(line):
                columns = [c.strip() for c in match["cols"].split(",")]
                if len(columns) >= 3 and all(re.fullmatch(r"[\w<>…]+", c) for c in columns):
                    found.append((_name(page), match["file"].rsplit("/", 1)[-1], columns))
    return found


def expand(columns: list[str], class_names: list[str]) -> list[str]:
    """`prob_<class>…` stands for one prob_ column per class, in the model's order."""
    out = []
    for column in columns:
        if column.startswith("prob_<class>"):
            out += [f"prob_{name}" for name in class_names]
        else:
            out.append(column)
    return out
