"""What a paper takes from a page's folder: every figure also as SVG, PDF and a 300-dpi PNG under figures/,
and the main tables as CSV, LaTeX (booktabs) and Markdown under tables/. The page itself keeps its screen PNG
beside it. Every file is rendered in memory and written atomically, like every other file of a run.

`--no-paper-figures` (train, evaluate, compare) leaves figures/ out: the entry point runs its work inside
`paper_figures(False)`, and the pages then name no figures/ file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_bytes, atomic_write_text, write_table

FIGURES, TABLES = "figures", "tables"
PRINT_DPI, SCREEN_DPI = 300, 120
_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}

# Whether save_figure_set writes figures/ too (the default); an entry point sets it from --paper-figures for
# the work it runs (a context variable: a test or a caller in the same process keeps its own setting).
_PAPER_FIGURES: ContextVar[bool] = ContextVar("carotid_paper_figures", default=True)


@contextmanager
def paper_figures(enabled: bool) -> Iterator[None]:
    """Inside: figures/ is written (enabled) or left out (--no-paper-figures: the screen PNGs only, about 0.3 s
    less a figure on a CPU core)."""
    token = _PAPER_FIGURES.set(enabled)
    try:
        yield
    finally:
        _PAPER_FIGURES.reset(token)


def print_files(folder: Path, stem: str) -> str:
    """'; figures/<stem>.svg, .pdf, .png (300 dpi)' for a page's caption when they are in `folder`, else ''."""
    return f"; {FIGURES}/{stem}.svg, .pdf, .png (300 dpi)" if (folder / FIGURES / f"{stem}.svg").is_file() else ""


def save_figure_set(fig, screen_png: Path) -> None:
    """`screen_png` (for the page) and figures/<stem>.svg, .pdf and .png (300 dpi) in its folder (the screen PNG
    alone inside `paper_figures(False)`)."""
    from matplotlib import pyplot as plt

    # One tight box for all four files: bbox_inches="tight" would lay the figure out again for each (a draw
    # per file, ~40% of the time); the box is in inches, so every format frames the same content.
    tight = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.1)  # 0.1: savefig's pad_inches default
    files = [(screen_png, "png", SCREEN_DPI)]
    if _PAPER_FIGURES.get():
        figures = screen_png.parent / FIGURES
        figures.mkdir(exist_ok=True)
        files += [
            (figures / f"{screen_png.stem}.png", "png", PRINT_DPI),
            (figures / f"{screen_png.stem}.svg", "svg", None),
            (figures / f"{screen_png.stem}.pdf", "pdf", None),
        ]
    for path, fmt, dpi in files:
        buffer = io.BytesIO()
        # svg.hashsalt and a fixed PDF date keep the files identical from run to run.
        metadata = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else None)
        fig.savefig(buffer, format=fmt, dpi=dpi, bbox_inches=tight, metadata=metadata)
        atomic_write_bytes(path, buffer.getvalue())
    plt.close(fig)


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def shown(value) -> str:
    """A cell as LaTeX and Markdown show it: a number with three decimals, a missing one as n/a."""
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, (float, np.floating)) else str(value)


def exact(value):
    """A cell as the CSV holds it: a number with every digit (repr reads back bit for bit), a missing one empty."""
    if value is None:
        return ""
    return repr(float(value)) if isinstance(value, (float, np.floating)) else value


def latex_table(header: list[str], rows: list[list], caption: str) -> str:
    """A booktabs tabular inside a table float; first column left-aligned, the others too (cells hold CIs)."""
    columns = "l" * len(header)
    lines = [
        r"% needs \usepackage{booktabs}",
        r"\begin{table}[ht]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
        *(" & ".join(latex_escape(shown(c)) for c in row) + r" \\" for row in rows),
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return str(value).replace("|", r"\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(shown(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_table_set(folder: Path, stem: str, header: list[str], rows: list[list], caption: str) -> list[Path]:
    """tables/<stem>.csv, .tex and .md in `folder` from the same rows (numbers: every digit in the CSV, three
    decimals in LaTeX and Markdown; None: empty, n/a); returns their paths."""
    tables = folder / TABLES
    tables.mkdir(exist_ok=True)
    written = []
    write_table(tables / f"{stem}.csv", header, [[exact(c) for c in row] for row in rows])  # formulas as text
    written.append(tables / f"{stem}.csv")
    for suffix, text in (
        ("tex", latex_table(header, rows, caption)),
        ("md", markdown_table(header, rows)),
    ):
        path = tables / f"{stem}.{suffix}"
        atomic_write_text(path, text)
        written.append(path)
    return written
