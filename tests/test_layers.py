"""The package's shape holds: the import-linter layers contract, no import cycle, the package's own imports at the
top of each library module, and docs that name only modules that exist."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "carotid"
CLIS = {
    "train",
    "evaluate",
    "predict",
    "compare",
    "export",
    "demo",
    "federate",
    "flare",
}  # only these may defer imports (fast --help)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_file(dotted: str) -> Path | None:
    candidate = ROOT / Path(*dotted.split("."))
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.exists():
            return path
    return None


def test_the_layers_contract_is_kept():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if lint is None:
        pytest.fail("lint-imports is missing: install the dev extra (pip install -e '.[dev]')")
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout + result.stderr


def test_no_module_imports_itself_back():
    """No cycle of imports among the package's modules, function-level imports included (grimp sees them)."""
    graph = grimp.build_graph("carotid")
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert cycles == []


def test_library_modules_import_the_package_at_the_top():
    """Only the CLIs (and the package's own __init__, before anything runs) defer imports of carotid modules."""
    deferred = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if name == "carotid" or name.removeprefix("carotid.") in CLIS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import) and id(node) not in top:
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(n == "carotid" or n.startswith("carotid.") for n in names):
                    deferred.append(f"{name}:{node.lineno}")
    assert deferred == []


def test_every_module_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for doc in docs:
        text = doc.read_text(encoding="utf-8")
        for path in set(re.findall(r"carotid/[A-Za-z_/]+\.py", text)):
            if not (ROOT / path).exists():
                missing.append(f"{doc.name}: {path}")
        for dotted in set(re.findall(r"\bcarotid(?:\.[a-z_]+)+\b(?!\.)", text)) - {"carotid.json"}:
            if _module_file(dotted) is None:
                # `carotid.report.outputs.evaluate_model`: the module part exists and defines the name
                module, _, name = dotted.rpartition(".")
                source = _module_file(module)
                defined = source is not None and re.search(
                    rf"^(?:def|class) {name}\b|^{name}\b.*=", source.read_text(encoding="utf-8"), re.M
                )
                if not defined:
                    missing.append(f"{doc.name}: {dotted}")
    assert missing == []


CHANGE_TOPICS = (
    "split rule",
    "aggregation",
    "a metric",
    "model-file format",
    "augmentation",
    "LR schedule",
    "CLI option",
    "architecture",
    "file kind",
    "section of report.html",
)


def test_to_change_x_edit_y_names_files_and_symbols_that_exist():
    """docs/ARCHITECTURE.md's table: every topic a contributor asks about is there, every file it names exists and
    every `symbol` in parentheses after a file is defined in that file (a grep, as a reader would check)."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    table = text.split("## To change X, edit Y", 1)[1]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| to change")]
    assert all(any(topic in row for row in rows) for topic in CHANGE_TOPICS), [
        t for t in CHANGE_TOPICS if not any(t in row for row in rows)
    ]
    problems = []
    for row in rows:
        for path, symbols in re.findall(r"`(carotid/[\w/]+(?:\.py|/))`(?: \(([^)]*)\))?", row):
            target = ROOT / path
            if not target.exists():
                problems.append(f"{path} does not exist")
                continue
            sources = [target] if target.is_file() else sorted(target.glob("*.py"))
            text_of = "\n".join(source.read_text(encoding="utf-8") for source in sources)
            for symbol in re.findall(r"`([A-Za-z_]\w*)`", symbols):
                if not re.search(rf"^\s*(?:def|class) {symbol}\b|^{symbol}\b\s*[:=]", text_of, re.M):
                    problems.append(f"{symbol} is not defined in {path}")
    assert problems == []


def test_every_module_has_its_line_in_the_architecture_map():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    unnamed = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" and f"`{path.relative_to(ROOT)}`" not in text
    ]
    assert unnamed == []
