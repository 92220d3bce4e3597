"""Shared fixtures: real image folders and .xlsx files in tmp_path, and the real CLIs in subprocesses.

Everything runs on the CPU in fp32 with tiny images (32-48 px), small_cnn and num_workers 0, so the
whole suite stays within a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import openpyxl
import pytest
import torch

from carotid.data.demo import make_demo_data

# pytest-xdist runs the suite on several workers (scripts/test.sh: two). Each takes its share of the cores for
# torch's threads and for the processes it starts, so two workers do not spin two OpenMP threads each on two cores.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, torch.get_num_threads() // WORKERS))
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))

# Fast training options used across the suite. No tracker: TensorBoard, the default, has its own tests
# (test_options, test_cv, test_train), and the others would each import and write it for nothing. A frame model:
# the tests of the default person model (attention) name it after FAST (test_person_model, test_attention_truth,
# test_strategies, test_resume, test_best_epoch, test_steps), and the demo and docs tests run it with no FAST.
# No figures/ folder (SVG, PDF, 300-dpi PNG of each figure: a quarter of a small run's time): the two shared runs
# that the paper's tests read write it (trained_run, cv_run).
FAST = [
    "--person-model",
    "frames",
    "--no-paper-figures",
    "--report-to",
    "none",
    "--model",
    "small_cnn",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--num-workers",
    "0",
    "--lr",
    "1e-3",
    "--bootstrap",
    "50",
]


def write_xlsx(
    path: Path, rows: list[list], sheet: str = "Sheet1", extra_sheets: dict[str, list[list]] | None = None
) -> Path:
    """An .xlsx file written with openpyxl: `rows` includes the header row."""
    book = openpyxl.Workbook()
    book.active.title = sheet
    for row in rows:
        book.active.append(row)
    for name, sheet_rows in (extra_sheets or {}).items():
        other = book.create_sheet(name)
        for row in sheet_rows:
            other.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)
    return path


def make_data(root: Path, persons: int = 12, frames: int = 4, size: int = 48, seed: int = 0) -> tuple[Path, Path]:
    """Synthetic per-person PNG folders + label.xlsx (Chinese headers); returns (root dir, label file)."""
    label = make_demo_data(root, persons=persons, frames=frames, size=size, seed=seed)
    return root, label


def free_port() -> int:
    """A free TCP port, so concurrent launches do not fight over Accelerate's default 29500."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_env(threads: int = 1) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "OMP_NUM_THREADS": str(threads),
            "PYTHONUNBUFFERED": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "ACCELERATE_MIXED_PRECISION": "no",
            "TQDM_DISABLE": "1",
        }
    )
    return env


def module_command(
    module: str, *args: str, nproc: int = 1, launcher: bool = False, extra_launch: list[str] | None = None
) -> list[str]:
    """`python -m module args` (nproc 1, no launcher), or the same under `accelerate launch` on the CPU."""
    if not (nproc > 1 or launcher):
        return [sys.executable, "-m", module, *args]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--num_processes",
        str(nproc),
    ]
    command += ["--multi_gpu", "--main_process_port", str(free_port())] if nproc > 1 else []
    return command + (extra_launch or []) + ["-m", module, *args]


def run_module(
    module: str,
    *args: str,
    nproc: int = 1,
    timeout: float = 300,
    launcher: bool = False,
    extra_launch: list[str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run module_command(...) to completion, capturing its output."""
    command = module_command(module, *args, nproc=nproc, launcher=launcher, extra_launch=extra_launch)
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=subprocess_env(), cwd=cwd)


def only_run_dir(output: Path) -> Path:
    runs = sorted(p for p in output.iterdir() if p.name.startswith("train_"))
    assert len(runs) == 1, f"expected one run directory in {output}, found {runs}"
    return runs[0]


def load_model(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def tensorboard_scalars(run_dir: Path, tag: str) -> list[int]:
    """The steps (epochs) at which RUN/tensorboard's event files hold `tag`, read by TensorBoard's own loader."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        steps += [
            event.step for event in EventFileLoader(str(path)).Load() for v in event.summary.value if v.tag == tag
        ]
    return steps


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> tuple[Path, Path]:
    """12 persons x 4 frames of 48x36 px; shared read-only by the tests that only read data."""
    return make_data(tmp_path_factory.mktemp("data") / "frames")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> Path:
    """One finished 2-epoch run (single process), reused by tests that only need its files."""
    root, label = data_dir
    output = tmp_path_factory.mktemp("trained")
    result = run_module(
        "carotid.train",
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(output),
        "--epochs",
        "2",
        "--train-ratio",
        "0.5",
        "--val-ratio",
        "0.25",
        "--test-ratio",
        "0.25",
        *FAST,
        "--paper-figures",  # the run most tests read, with every file a run writes
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return only_run_dir(output)


def cv_data(root: Path, persons: int = 16, frames: int = 3) -> tuple[Path, Path]:
    """The persons of the cross-validation tests: 16 x 3 frames of 32 px."""
    label = make_demo_data(root, persons=persons, frames=frames, size=32, seed=1)
    return root, label


def cv_args(root: Path, label: Path, output: Path, *extra: str) -> list[str]:
    """A 2-fold cross-validation of `root` with FAST options, after a 25% test split."""
    return [
        *("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--folds", "2"),
        *("--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25", "--augment", "none"),
        *FAST,
        *extra,
    ]


def only_cv_dir(output: Path) -> Path:
    found = sorted(output.glob("cv_*"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="session")
def cv_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """One finished 2-fold, 2-epoch cross-validation (with TensorBoard records), read by test_cv and test_cv_report:
    (CV folder, root dir, label file)."""
    root, label = cv_data(tmp_path_factory.mktemp("cvdata") / "frames")
    (root / "1001" / "scan.gif").write_bytes(b"GIF89a")  # not read: a start-up warning (see data_report.json)
    book = openpyxl.load_workbook(label)  # a hospital per person: the subgroups of every fold and out of fold
    rows = [list(r) for r in book.active.iter_rows(values_only=True)]
    write_xlsx(
        label, [rows[0] + ["医院"]] + [r + [f"H{i // 2 % 2}"] for i, r in enumerate(rows[1:])], book.active.title
    )
    output = tmp_path_factory.mktemp("cv")
    extra = ("--epochs", "2", "--report-to", "tensorboard", "--subgroup-column", "医院", "--paper-figures")
    assert train_in_process(*cv_args(root, label, output, *extra)) == 0
    return only_cv_dir(output), root, label


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most slow tests (multi-process launches, minutes each) first, then by their number of
    tests: pytest-xdist hands whole files to its workers in this order (scripts/test.sh), so a long file does not
    start near the end while the other worker idles. A file's own tests keep their order."""
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    count = Counter(item.path for item in items)
    items.sort(key=lambda item: (-slow[item.path], -count[item.path]))


def reset_accelerate() -> None:
    """Forget Accelerate's process-wide singletons, so the next in-process run starts fresh."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()


def train_in_process(*args: str) -> int:
    """carotid.train.main(args) in this process (no interpreter start-up: fast), with fresh Accelerate state."""
    from carotid.train import main

    reset_accelerate()
    try:
        return main(list(args))
    finally:
        reset_accelerate()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Tests that call main() in-process each get a fresh Accelerate singleton."""
    yield
    reset_accelerate()


# What a test run may leave in the checkout: Python's and the tools' caches, the environment.
CACHES = ("__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache", ".grimp_cache", ".venv", ".egg-info")


def checkout_state() -> set[str]:
    """Every untracked or ignored path of the checkout (git's view), caches aside: what a run could create. (Edits
    to tracked files are left out: a developer may edit while the tests run.)"""
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked sdist): nothing to compare
        return set()
    created = (line for line in listed.stdout.splitlines() if line[:2] in ("??", "!!"))
    return {line for line in created if not any(cache in line for cache in CACHES)}


@pytest.fixture(scope="session", autouse=True)
def _the_checkout_stays_as_it_was():
    """The tests never write into the checkout (its output/, a .venv, a stray file): git status, ignored files
    included, is the same after the run as before."""
    before = checkout_state()
    yield
    written = sorted(checkout_state() - before)
    assert written == [], f"the tests wrote into the checkout: {written[:10]}"
