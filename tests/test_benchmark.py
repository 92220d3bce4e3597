"""The benchmark package (benchmarks/): its quick run covers every comparison and writes the table; its
modules form no cycle (a comparison imports only benchmarks.common and the hand-written references)."""

from __future__ import annotations

import ast
import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import subprocess_env

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "benchmarks"
REFERENCES = {"benchmarks.common", "benchmarks.handwritten"}  # what a comparison may import of the package


def package_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("benchmarks"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("benchmarks")}
    return names


def test_comparisons_import_only_the_shared_module():
    from benchmarks.__main__ import COMPARISONS

    assert {p.stem for p in PACKAGE.glob("*.py")} >= set(COMPARISONS) | {"common", "gpu"}
    for name in COMPARISONS:
        assert package_imports(PACKAGE / f"{name}.py") <= REFERENCES, name
    # common reaches the hand-written loop (for its model) and nothing else; the loop imports nothing of ours
    assert package_imports(PACKAGE / "common.py") == {"benchmarks.handwritten"}
    assert package_imports(PACKAGE / "handwritten.py") == set()


def test_an_unknown_comparison_is_one_error_line():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "no_such"], capture_output=True, text=True, cwd=ROOT,
        env=subprocess_env(threads=1), timeout=60,
    )  # fmt: skip
    assert result.returncode == 2 and "unknown comparison 'no_such'" in result.stderr


@pytest.mark.slow  # whole training processes: scripts/test.sh --fast skips it
def test_quick_benchmark_writes_every_comparison(tmp_path):
    from benchmarks.__main__ import COMPARISONS

    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, cwd=ROOT,
        timeout=1500,  # ~2 min on an idle 2-core machine; 9 min seen with load average 25
        env=subprocess_env(threads=2),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "Load average" in table and "cores" in table and "torch " in table
    rows = list(csv.DictReader((tmp_path / "results.csv").open(encoding="utf-8")))
    assert not [r for r in rows if r["note"].startswith("failed")]
    by_name = {r["comparison"].split(",")[0]: r for r in rows}
    for name in (
        "carotid.train --help", "first optimizer step", "whole run (small_cnn", "start-up to the first batch",
        "bag step vs frame step", "predict", "loader", "decode mp4_cine",
    ):  # fmt: skip
        row = by_name[name]
        assert float(row["ratio"]) > 0 and int(row["pairs"]) >= 0, name
    measured = [r for r in rows if r["pairs"] != "0"]
    assert all(float(r["low"]) <= float(r["ratio"]) <= float(r["high"]) for r in measured)
    assert len({r["comparison"].split(":")[0] for r in rows}) >= len(COMPARISONS)
    assert (tmp_path / "work" / "handwritten" / "final.pth").is_file()  # the hand-written loop ran to the end
    assert len(list((tmp_path / "work" / "runs").iterdir())) >= 1
