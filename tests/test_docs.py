"""Docs that cannot drift: every command line of README.md and docs/*.md parses against the tool's real argument
parser (an unknown option, a bad choice or a wrong type fails), every link to a page or heading leads somewhere,
the short examples run on demo data (slow tier), the files a page lists are there after its command, and every CSV
column list a page gives is the real header. New pages under docs/ are held by the same tests."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carotid import commands as cli
from carotid.core.errors import UserError
from carotid.training.config import parse_train_args
from tests.conftest import run_module, subprocess_env
from tests.docs_text import ROOT, commands, csv_column_lists, expand, pages, section

PARSERS = {
    "train": lambda argv: parse_train_args(argv),
    "evaluate": cli.parse_evaluate_args,
    "predict": cli.parse_predict_args,
    "compare": cli.parse_compare_args,
    "export": cli.parse_export_args,
    "demo": lambda argv: cli.parse_demo_args(argv, ""),
}
NO_ARGUMENTS = {"training.config"}  # `python -m carotid.training.config > configs/train/default.yaml`
MISSING_REQUIRED = "the following arguments are required"


def parser_of(module: str):
    """The real parser of a command; a command added later (e.g. `federate`) is found by the same convention:
    `parse_<name>_args` in carotid.commands or in its own module."""
    if module in PARSERS:
        return PARSERS[module]
    import importlib

    for home in ("carotid.commands", f"carotid.{module}"):
        try:
            found = getattr(importlib.import_module(home), f"parse_{module}_args", None)
        except ImportError:
            found = None
        if found is not None:
            return found
    return None


DOC_COMMANDS = [c for c in commands() if not c.module.isupper()]  # `carotid-NAME`: a placeholder


@pytest.mark.parametrize("command", DOC_COMMANDS, ids=lambda c: f"{c.page}:{c.line}")
def test_every_documented_command_parses(command):
    if command.launch_args is not None:
        from accelerate.commands.launch import launch_command_parser

        try:
            launch_command_parser().parse_args([*command.launch_args, "-m", f"carotid.{command.module}"])
        except SystemExit:
            pytest.fail(f"{command.page}:{command.line}: accelerate launch rejects {command.launch_args}")
        for path in command.launch_args:
            if path.startswith("configs/"):
                assert (ROOT / path).is_file(), f"{command.page}:{command.line}: {path} does not exist"
    if command.module in NO_ARGUMENTS:
        assert not command.args, f"{command.page}:{command.line}: carotid.{command.module} takes no options"
        return
    parse = parser_of(command.module)
    assert parse is not None, f"{command.page}:{command.line}: no command carotid.{command.module}"
    if not command.args:  # the command named, its options left out: nothing more to check
        return
    try:
        parse(list(command.args))
    except UserError as error:
        if command.elided and MISSING_REQUIRED in str(error):
            return
        pytest.fail(f"{command.page}:{command.line}: {command.text}\n  {error}")


def test_the_parse_check_catches_an_unknown_option_and_a_bad_choice():
    with pytest.raises(UserError, match="unrecognized arguments: --no-such-option"):
        cli.parse_predict_args(["--model", "m.pth", "--input", "DIR", "--no-such-option"])
    with pytest.raises(UserError, match="invalid choice"):
        cli.parse_predict_args(["--model", "m.pth", "--input", "DIR", "--layout", "folders"])


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.name)
def test_every_link_to_a_page_or_heading_leads_somewhere(page):
    broken = []
    text = page.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md":
            target_text = file.read_text(encoding="utf-8")
            headings = re.findall(r"^#+ (.+)$", target_text, re.M)
            explicit = re.findall(r'<a id="([^"]+)"', target_text)  # an anchor written into the page
            if anchor not in {_anchor(h) for h in headings} | set(explicit):
                broken.append(target)
    assert broken == []


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)", readme))
    assert linked >= {p.name for p in (ROOT / "docs").glob("*.md")} - {"report.png"}, "a guide page the README omits"


def test_predict_layouts_are_described_on_one_page():
    """The layouts of predict --input and the automatic rule are written once (PREDICT.md); others link there."""
    describing = [
        p.name for p in pages() if re.search(r"`persons`.{0,40}one sub-folder per person", p.read_text(), re.S)
    ]
    assert describing == ["PREDICT.md"]
    layout_help = cli.PredictOptions.__dataclass_fields__["layout"].metadata["choices"]
    text = section("docs/PREDICT.md", "The layouts of `--input` and the automatic rule")
    assert [name for name in layout_help if not re.search(rf"\b{name}\b", text)] == []


KNOWN_CSVS = {"predictions.csv", "person_predictions.csv", "FILE.csv", "FILE_persons.csv", "FILE_unreadable.csv"}


def test_every_csv_column_list_in_the_docs_is_checked_against_a_real_file():
    """The slow test below compares these with real headers; a page giving columns of another CSV must add it."""
    assert {name for _, name, _ in csv_column_lists()} <= KNOWN_CSVS


# ---------------------------------------------------------------------------------------------
# The short examples, run on demo data (slow tier)
# ---------------------------------------------------------------------------------------------


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = run_module(module, *args, cwd=cwd, timeout=900)  # minutes on a loaded 2-core machine
    assert result.returncode == 0, f"{module} {' '.join(args)}\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return result


def _documented(page: str, start: str) -> list[str]:
    """The arguments of the command on `page` whose text starts with `start`: the test runs what the page says."""
    matches = [c for c in commands() if c.page == page and c.text.startswith(start)]
    assert len(matches) == 1, f"{page}: expected one command starting {start!r}, found {len(matches)}"
    return list(matches[0].args)


def _substitute(args: list[str], values: dict[str, str]) -> list[str]:
    out = []
    for arg in args:
        for placeholder, value in values.items():
            arg = re.sub(rf"^{placeholder}(?=/|$)", value, arg)
        out.append(arg)
    return out


def _header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def _listed_files(text: str) -> list[str]:
    """File and folder names a page lists in a table's first column or a tree (`name`, `name/`), without the
    ones written only with an option (`with --…`)."""
    names = []
    for line in text.splitlines():
        if "with --" in line or "with `--" in line:
            continue
        names += re.findall(r"^\| `([\w.]+/?)`", line)
    return names


@pytest.mark.slow
def test_the_short_examples_run_and_write_what_their_pages_list(trained_run, tmp_path):
    trained_run = Path(shutil.copytree(trained_run, tmp_path / trained_run.name))  # the shared run stays as it was
    model = load_classes(trained_run)
    values = {"RUN": str(trained_run), "NEW_PATIENTS": str(tmp_path / "new_persons")}
    # PREDICT.md: make persons no model saw, then predict on them, as the page says.
    demo_args = _substitute(
        _documented("docs/PREDICT.md", "python -m carotid.demo"), {"new_persons": values["NEW_PATIENTS"]}
    )
    _run("carotid.demo", *demo_args, "--size", "48", "--frames", "3", cwd=tmp_path)
    predict_args = _substitute(
        _documented(
            "docs/PREDICT.md", "python -m carotid.predict --model RUN/models/best_model.pth --input NEW_PATIENTS --out"
        ),
        values,
    )
    _run("carotid.predict", *predict_args, "--num-workers", "0", cwd=tmp_path)
    out = tmp_path / "results" / "predictions.csv"
    written = {"FILE.csv": out, "FILE_persons.csv": out.with_name("predictions_persons.csv")}
    assert all(path.is_file() for path in written.values())
    assert not out.with_name("predictions_unreadable.csv").exists()  # written only when an image is unreadable
    # STUDY.md: evaluate with heat maps; EVALUATION.md's table of what is written is all there.
    evaluate_args = _substitute(
        _documented("docs/STUDY.md", "python -m carotid.evaluate --run-dir RUN --heatmaps"), values
    )
    _run("carotid.evaluate", *evaluate_args, "--num-workers", "0", "--bootstrap", "50", cwd=tmp_path)
    evaluation = trained_run / "eval_test_best"
    listed = _listed_files(section("docs/EVALUATION.md", "What is written"))
    assert "metrics.json" in listed and "report.html" in listed
    assert [name for name in listed if not (evaluation / name.rstrip("/")).exists()] == []
    written |= {"person_predictions.csv": evaluation / "person_predictions.csv"}
    written["predictions.csv"] = evaluation / "predictions.csv"
    # TRAINING.md's tree of a run folder.
    tree = section("docs/TRAINING.md", "What a run writes").split("```")[1]
    # An entry is indented two spaces; its names end where three spaces start its description.
    entries = [
        name
        for line in tree.splitlines()
        if re.match(r"^  \S", line) and "with --" not in line
        for name in re.split(r"\s{3,}", line.strip())[0].split()
    ]
    assert "config.yaml" in entries and "models/final_model.pth" in entries
    assert [e for e in entries if not (trained_run / e).exists()] == []
    # Every CSV column list of every page against the real header (prob_<class>… is one column per class).
    for page, name, columns in csv_column_lists():
        files = [path for key, path in written.items() if key == name]
        if name == "FILE_unreadable.csv":
            continue  # checked in test_predict_writes_the_documented_unreadable_columns
        assert files, f"{page}: no real {name} to compare with"
        for path in files:
            assert _header(path) == expand(columns, model), f"{page}: {name} {columns} vs {path}"
    # PREDICT.md: export, as written (without the optional --out and --frames).
    export_args = _documented("docs/PREDICT.md", "python -m carotid.export --model RUN/models/best_model.pth")
    export_args = _substitute(export_args[: export_args.index("--out")], values)
    _run("carotid.export", *export_args, cwd=tmp_path)
    assert (trained_run / "models" / "best_model.onnx").is_file()


def load_classes(run: Path) -> list[str]:
    import torch

    return list(torch.load(run / "models" / "best_model.pth", map_location="cpu", weights_only=True)["class_names"])


def test_predict_writes_the_documented_unreadable_columns(trained_run, data_dir, tmp_path):
    person = tmp_path / "new" / "2001"
    person.mkdir(parents=True)
    shutil.copy(next(data_dir[0].rglob("*.png")), person / "frame_000.png")
    (person / "frame_001.png").write_bytes(b"not a png")
    model = str(trained_run / "models" / "best_model.pth")
    _run(
        "carotid.predict",
        "--model",
        model,
        "--input",
        str(tmp_path / "new"),
        "--out",
        str(tmp_path / "p.csv"),
        "--layout",
        "persons",
        cwd=tmp_path,
    )
    documented = [c for p, name, c in csv_column_lists() if name == "FILE_unreadable.csv"]
    assert documented and _header(tmp_path / "p_unreadable.csv") == documented[0]


@pytest.mark.slow  # scripts/demo.sh and its four printed commands, each a process of its own: about a minute
def test_the_demo_prints_next_commands_that_work_as_printed_and_match_the_readme(tmp_path):
    """scripts/demo.sh (one epoch, no install) into tmp_path; then each printed next command, as printed."""
    env = subprocess_env(threads=2)
    env.update({"DEMO_OUTPUT": str(tmp_path / "demo"), "CAROTID_NO_INSTALL": "1", "VIRTUAL_ENV": sys.prefix})
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    demo = subprocess.run(
        ["bash", "scripts/demo.sh", "--epochs", "1", "--image-size", "32", "--num-workers", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    printed = demo.stdout.split("next, from this folder (copy as printed):\n", 1)[1].splitlines()
    next_commands = [line.strip() for line in printed if line.startswith("  python -m carotid.")]
    assert [c.split()[2] for c in next_commands] == [
        "carotid.evaluate",
        "carotid.demo",
        "carotid.predict",
        "carotid.export",
    ]
    report = re.search(r"^report: (\S+report\.html)", demo.stdout, re.M)
    assert report and Path(report[1]).is_file()
    outputs = []
    for command in next_commands:
        result = subprocess.run(command.split(), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        outputs.append(result.stdout + result.stderr)
    # The model never saw the new persons: predict gives no warning that they were trained on.
    assert "warning" not in outputs[2]
    # The README shows the same commands (its run folder and .venv/bin/python aside).
    run = re.search(r"--run-dir (\S+)", next_commands[0])[1]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = [line.strip() for line in readme.splitlines() if line.startswith("  .venv/bin/python -m carotid.")]
    normalised = [
        re.sub(r"output/demo/train_\d{8}_\d{6}", "RUN", line)
        .replace(".venv/bin/python", "python")
        .replace("output/demo", "OUT")
        for line in shown
    ]
    actual = [c.replace(run, "RUN").replace(str(tmp_path / "demo"), "OUT") for c in next_commands]
    assert normalised == actual
    # Every file the README says the demo writes is there.
    said = readme.split("It writes ", 1)[1].split("every file is described", 1)[0]
    names = {Path(name.rstrip("/")).name for name in re.findall(r"`([^`]+)`", said)} - {"train_YYYYMMDD_HHMMSS"}
    present = {path.name for path in (tmp_path / "demo").rglob("*")}
    assert names and sorted(names - present) == []


def test_every_module_that_raises_a_user_error_has_a_troubleshooting_family():
    """A new `UserError` in a module the troubleshooting table does not name fails here: give it a row."""
    listed = set(
        re.findall(r"`(carotid/[\w/]+\.py)`", section("docs/TROUBLESHOOTING.md", "Every `error:` family and its fix"))
    )
    raising = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "carotid").rglob("*.py")
        if re.search(r"\bUserError\(", path.read_text(encoding="utf-8")) and path.name != "errors.py"
    }
    assert sorted(raising - listed) == []
