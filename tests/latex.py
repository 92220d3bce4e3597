"""A table written for LaTeX, checked as LaTeX would read it: compiled with booktabs where a TeX engine is on the
PATH, else parsed — one table float, one tabular whose column spec fits the header, booktabs rules in order, every
row with as many cells as the header, no character that LaTeX treats as special left unescaped."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SPECIAL = re.compile(r"(?<!\\)[&%$#_{}~^]")


def split_row(line: str) -> list[str]:
    assert line.endswith(r" \\"), line
    return re.split(r"(?<!\\)&", line[: -len(r" \\")])


def check_latex_table(path: Path) -> list[list[str]]:
    """The body rows' cells (stripped), after checking the file; compiles it when pdflatex is there."""
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [line for line in lines if not line.startswith("%")]
    assert body[0] == r"\begin{table}[ht]" and body[-1] == r"\end{table}"
    spec = next(re.fullmatch(r"\\begin\{tabular\}\{([lcr]+)\}", line) for line in body if "tabular}{" in line)
    assert spec, "no tabular"
    rules = [line for line in body if line in (r"\toprule", r"\midrule", r"\bottomrule")]
    assert rules == [r"\toprule", r"\midrule", r"\bottomrule"]
    top, mid, bottom = (body.index(rule) for rule in rules)
    header, rows = split_row(body[top + 1]), [split_row(line) for line in body[mid + 1 : bottom]]
    assert mid == top + 2 and rows
    for cells in [header, *rows]:
        assert len(cells) == len(spec.group(1)), cells
        for cell in cells:
            bare = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum)\{\}", "", cell)
            assert not SPECIAL.search(bare), f"unescaped in {cell!r}"
    engine = shutil.which("pdflatex")
    if engine:
        document = path.with_suffix(".check.tex")
        document.write_text(
            "\\documentclass{article}\\usepackage{booktabs}\\usepackage[utf8]{inputenc}\\begin{document}\n"
            + path.read_text(encoding="utf-8")
            + "\\end{document}\n",
            encoding="utf-8",
        )
        result = subprocess.run(
            [engine, "-interaction=nonstopmode", "-halt-on-error", document.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout[-2000:]
    return [[c.strip() for c in cells] for cells in rows]
