"""SIGKILL a training run at many moments, saves included; after every kill each file is whole and --resume finishes.

One run is killed again and again: start → kill → resume → kill the resumed process → … → a last resume that
completes. Some kills wait for a save to be under way (a temp file or folder on disk), others come after a
random delay. For the aimed kills a slow disk (every fsync takes 30 ms) makes saves long enough to be hit;
it changes timing only.
At the end the run must equal an uninterrupted run with the same options, bit for bit on the CPU.
"""

from __future__ import annotations

import csv
import json
import random
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from carotid.evaluation.registry import METRIC_COLUMNS
from carotid.model.file import ModelFile
from carotid.training import checkpoints
from tests.conftest import FAST, make_data, only_run_dir, train_in_process
from tests.forked import start_training

pytestmark = pytest.mark.slow  # real multi-process launches: scripts/test.sh --fast skips them

TIMING = {"epoch_seconds", "images_per_second", "data_wait_fraction"}
SLOW_FSYNC = 0.03
PERSONS = 16


def options(root: Path, label: Path, output: Path) -> list[str]:
    # 8 training persons x 3 frames, batches of 4: 6 optimizer steps per epoch, a checkpoint after each.
    return [
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(output),
        *FAST,
        "--batch-size",
        "4",
        "--epochs",
        "3",
        "--checkpoint-every-steps",
        "1",
        "--keep-checkpoints",
        "2",
        "--monitor",
        "val_loss",
        "--no-test",
        "--train-ratio",
        "0.5",
        "--val-ratio",
        "0.25",
        "--test-ratio",
        "0.25",
    ]


def run_dirs(output: Path) -> list[Path]:
    return sorted(output.glob("train_*")) if output.is_dir() else []


def hidden(folder: Path, pattern: str, since: float = 0.0) -> list[Path]:
    """Hidden entries matching `pattern`, made or changed since `since` (older ones are left by earlier kills)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.glob(pattern):
        try:
            if path.stat().st_mtime >= since:
                found.append(path)
        except FileNotFoundError:  # renamed or removed while we looked
            pass
    return sorted(found)


# What each kill waits for: a predicate on (output folder, launch time), polled every 0.5 ms, or (None) a random delay.
def staging(out: Path, since: float) -> bool:
    return bool(hidden(out, ".train_*.partial", since)) and not run_dirs(out)


def published(out: Path, since: float) -> bool:
    runs = run_dirs(out)
    return bool(runs) and not (runs[0] / "checkpoints").exists()


def checkpoint_save(out: Path, since: float) -> bool:
    return any(hidden(run / "checkpoints", ".checkpoint-*.tmp", since) for run in run_dirs(out))


def temp_file(name: str):
    def under_way(out: Path, since: float) -> bool:
        return any(
            hidden(run, f".{name}.tmp-*", since) or hidden(run / "models", f".{name}.tmp-*", since)
            for run in run_dirs(out)
        )

    return under_way


PLAN = [
    ("the staging folder", staging),
    ("the run directory", published),
    ("a random delay", None),
    ("a checkpoint save", checkpoint_save),
    ("a random delay", None),
    ("a metrics.csv write", temp_file("metrics.csv")),
    ("a best_model.pth write", temp_file("best_model.pth")),
    ("a random delay", None),
    ("a checkpoint save", checkpoint_save),
    ("a final_model.pth write", temp_file("final_model.pth")),
]


def where_it_landed(out: Path, since: float) -> str:
    """Which save the kill interrupted, from the temp files this launch left (older ones are from earlier kills)."""
    runs = run_dirs(out)
    if not runs:
        return "before the run directory was published" + (
            " (staging folder left)" if hidden(out, ".train_*.partial") else ""
        )
    run = runs[0]
    for folder, pattern, what in (
        (run / "checkpoints", ".checkpoint-*.tmp", "checkpoint save"),
        (run / "models", ".best_model.pth.tmp-*", "best_model.pth write"),
        (run / "models", ".final_model.pth.tmp-*", "final_model.pth write"),
        (run, ".metrics.csv.tmp-*", "metrics.csv write"),
    ):
        if hidden(folder, pattern, since):
            return f"during a {what}"
    done = checkpoints.list_checkpoints(run)
    if not done:
        return "between saves, before the first checkpoint"
    progress = checkpoints.read_progress(done[-1])
    where = (
        f"after all {progress['epoch']} epochs"
        if progress["epoch"] == 3
        else f"in epoch {progress['epoch'] + 1} after batch {progress['epoch_progress']['batches_done']}"
    )
    return f"between saves, {where} (last checkpoint: {done[-1].name})"


def assert_every_file_whole(run: Path) -> None:
    """What a user would open after a crash: each must parse, each model file must load safely."""
    assert yaml.safe_load((run / "config.yaml").read_text())["options"]
    splits = json.loads((run / "splits.json").read_text())
    assert sum(len(v) for v in splits.values()) == PERSONS
    json.loads((run / "data_report.json").read_text())
    if (run / "metrics.csv").exists():
        with (run / "metrics.csv").open(newline="") as handle:
            reader = csv.DictReader(handle)
            epochs = [int(row["epoch"]) for row in reader]
        assert reader.fieldnames == list(METRIC_COLUMNS) and epochs == list(range(1, len(epochs) + 1))
    for model_file in (run / "models").glob("*.pth"):  # temp files start with '.', so glob skips them
        data = ModelFile.load(model_file)  # weights_only=True
        assert all(torch.isfinite(t).all() for t in data.state_dict.values())
    for checkpoint in checkpoints.list_checkpoints(run):
        assert checkpoints.read_progress(checkpoint)["global_step"] >= 0
        assert load_file(checkpoint / "model.safetensors")


def metric_rows(run: Path) -> list[dict]:
    with (run / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def uninterrupted_run(root: Path, label: Path, output: Path) -> Path:
    """The reference, in this process, with one thread as in the forked runs (float sums depend on the split of work).

    It also imports and warms everything a run touches, so the forked runs start at once."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train_in_process(*options(root, label, output)) == 0
    finally:
        torch.set_num_threads(threads)
    return only_run_dir(output)


def test_sigkill_at_many_moments_then_resume_completes(tmp_path):
    root, label = make_data(tmp_path / "frames", persons=PERSONS, frames=3, size=32)
    straight = uninterrupted_run(root, label, tmp_path / "straight")
    out = tmp_path / "killed"
    rng = random.Random(6)
    outcomes = []
    for number, (name, target) in enumerate(PLAN, start=1):
        runs = run_dirs(out)
        argv = ["--resume", str(runs[0])] if runs else options(root, label, out)
        launched = time.time() - 0.01  # file times may trail the clock by a tick
        # Kills aimed at a save get the slow disk; random ones a normal disk, so they land anywhere.
        process = start_training(argv, tmp_path / f"launch-{number}.log", slow_fsync=SLOW_FSYNC if target else 0.0)
        deadline = time.monotonic() + (rng.uniform(0.05, 0.4) if target is None else 60)
        while time.monotonic() < deadline and process.is_alive() and not (target and target(out, launched)):
            time.sleep(0.0005)
        process.kill()
        process.join()
        assert process.exitcode in (0, -9), (tmp_path / f"launch-{number}.log").read_text()[-3000:]  # done, or killed
        landed = "the process had already finished" if process.exitcode == 0 else where_it_landed(out, launched)
        outcomes.append(f"kill {number} (after {name}): {landed}")
        runs = run_dirs(out)
        assert len(runs) <= 1
        if runs:
            assert_every_file_whole(runs[0])
        else:  # killed before publication: no half run directory, at most the hidden staging folder
            assert all(p.name.startswith(".train_") and p.name.endswith(".partial") for p in out.iterdir())

    final = start_training(["--resume", str(only_run_dir(out))], tmp_path / "final.log")
    final.join(timeout=120)
    assert final.exitcode == 0, (tmp_path / "final.log").read_text()[-3000:]
    print("\n".join(outcomes + [f"{len(PLAN)} kill points; the last resume completed"]))

    run = only_run_dir(out)
    assert_every_file_whole(run)
    assert not [p for p in run.rglob(".*") if ".tmp" in p.name], "killed saves leave no temp files once the run resumes"
    assert not hidden(out, ".train_*.partial"), (
        "a later run clears the staging folder of a run killed before publication"
    )
    assert metric_rows(run) == metric_rows(straight), "same epochs, same numbers, no row lost or repeated"
    for file_name in ("final_model.pth", "best_model.pth"):
        ours, theirs = (ModelFile.load(r / "models" / file_name) for r in (run, straight))
        assert ours.epoch == theirs.epoch, file_name
        assert all(torch.equal(ours.state_dict[k], theirs.state_dict[k]) for k in theirs.state_dict), file_name
    landed_in_saves = [o for o in outcomes if "during a" in o]
    assert len(landed_in_saves) >= 3, outcomes
