"""--batch-size counts frames for every model: the start-up block's persons, frames and optimizer steps, what
config.yaml records, what the run really makes, and the warning when a person model gets too few steps."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import yaml
from accelerate.data_loader import BatchSamplerShard
from PIL import Image
from torch.utils.data import BatchSampler

from carotid.data.bags import persons_per_step
from carotid.training.steps import PERSON_MODEL_STEPS, micro_batches
from tests.conftest import FAST, make_data, only_run_dir, read_json, train_in_process, write_xlsx

STEPS_LINE = re.compile(r"steps: (\d+) optimizer steps per epoch x (\d+) epochs? = (\d+) in all")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """The same command (12 persons x 4 frames, 6 training persons, --batch-size 8, 2 epochs) for each model."""
    root, label = make_data(tmp_path_factory.mktemp("steps") / "frames", persons=12, frames=4, size=32)
    made = {}
    for kind in ("frames", "attention", "mean"):
        output = tmp_path_factory.mktemp(kind)
        args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "2"]
        args += [*FAST, "--person-model", kind, "--no-test"]
        args += ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
        assert train_in_process(*args) == 0
        made[kind] = only_run_dir(output)
    return made


def _printed(run_dir) -> tuple[str, tuple[int, int, int]]:
    log = (run_dir / "train.log").read_text(encoding="utf-8")
    return log, tuple(map(int, STEPS_LINE.search(log).groups()))


def test_the_same_batch_size_gives_frame_and_person_models_the_same_steps_as_printed_and_recorded(runs):
    for kind, run_dir in runs.items():
        log, (per_epoch, epochs, total) = _printed(run_dir)
        # 6 training persons: 24 frames / 8 = 3 frame steps; 8 frames / 4 per person = 2 persons a step, 3 steps.
        assert (per_epoch, epochs, total) == (3, 2, 6), kind
        made = max(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
        assert made == total, f"{kind}: the run made {made} optimizer steps, the start-up block said {total}"
        recorded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["steps"]
        assert (recorded["steps_per_epoch"], recorded["total_steps"], recorded["frames_per_step"]) == (3, 6, 8)
        if kind == "frames":
            assert "batch: 8 frames per step per process (--batch-size)" in log
            assert recorded["persons_per_step"] is None and recorded["items"] == 24
        else:
            assert "batch: 2 persons per step per process (--batch-size 8 frames / 4 frames per training" in log
            assert "= 2 persons, about 8 frames per optimizer step" in log
            assert recorded["persons_per_step"] == 2 and recorded["items"] == 6


def test_too_few_steps_for_a_person_model_is_warned_with_the_figures_and_the_fix(runs):
    warning = (
        f"warning: 6 optimizer steps in all; person models need at least about {PERSON_MODEL_STEPS} to learn — "
        "use a smaller --batch-size or more --epochs"
    )
    for kind, run_dir in runs.items():
        log, _ = _printed(run_dir)
        warned = [w for w in read_json(run_dir / "data_report.json")["warnings"] if "optimizer steps" in w]
        if kind == "frames":
            assert warning not in log and not warned
        else:
            assert warning in log and warned == [warning.removeprefix("warning: ")]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_micro_batches_per_process_are_what_accelerate_shards(processes):
    """The plan's count against Accelerate's own sharding of the training loader, dropped remainder included."""
    for items in range(1, 40):
        for per_batch in (1, 2, 3, 8):
            micro, left_out = micro_batches(items, per_batch, processes)
            drop = items >= per_batch * processes
            sampler = BatchSampler(range(items), per_batch, drop_last=drop)
            shards = [BatchSamplerShard(sampler, processes, rank, even_batches=True) for rank in range(processes)]
            assert {len(s) for s in shards} == {micro}, (items, per_batch, processes)
            seen = sum(len(b) for s in shards for b in s) if drop else items
            assert left_out == items - seen, (items, per_batch, processes)


def test_a_person_model_step_holds_the_persons_of_about_batch_size_frames_and_never_one_person():
    """BatchNorm normalising one person's frames alone learns a shortcut (issue 23): at least 2 persons a step."""
    assert persons_per_step(32, 16, [6, 10] * 10) == 4  # 8 frames a person
    assert persons_per_step(32, 4, [6, 10] * 10) == 8  # at most --bag-size 4 frames a person
    assert persons_per_step(8, 16, [8] * 10) == 2  # 1 person's frames would make the batch: 2 instead


# ---------------------------------------------------------------------------------------------
# Whether a run learned at all (carotid.training.chance)
# ---------------------------------------------------------------------------------------------


def test_the_chance_loss_is_the_entropy_of_what_the_loss_sees():
    import math

    from carotid.training.chance import chance_loss

    assert chance_loss([60, 60]) == pytest.approx(math.log(2))
    assert chance_loss([30, 90]) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    # Class weights that balance the classes make the best constant output 1/2 again; smoothing keeps it there.
    assert chance_loss([30, 90], [2.0, 2 / 3]) == pytest.approx(math.log(2))
    # Smoothing moves the targets' mean towards 1/K: (1 - 0.1) x 0.25 + 0.05 = 0.275.
    assert chance_loss([30, 90], label_smoothing=0.1) == pytest.approx(
        -(0.275 * math.log(0.275) + 0.725 * math.log(0.725))
    )


def _noise_or_bright_frames(root, bright_plaque: bool) -> list[str]:
    """12 persons x 3 frames of noise; with `bright_plaque` a plaque person's frames are brighter (easy to learn)."""
    rng = np.random.default_rng(0)
    rows = [["ID", "label"]]
    for i in range(12):
        (root / f"P{i}").mkdir(parents=True)
        for k in range(3):
            noise = rng.integers(0, 128, (32, 32)) + (127 if bright_plaque and i % 2 else 0)
            Image.fromarray(noise.astype(np.uint8)).save(root / f"P{i}" / f"f{k}.png")
        rows.append([f"P{i}", "plaque" if i % 2 else "normal"])
    write_xlsx(root / "label.xlsx", rows)
    return ["--root-dir", str(root), "--label-excel", str(root / "label.xlsx")]


@pytest.mark.parametrize("learnable", [False, True])
def test_a_run_whose_loss_stays_at_chance_is_told_it_has_not_learned(tmp_path, capsys, learnable):
    """Frames that carry no sign of their label: the loss cannot leave the chance loss, and the run says so at its
    end. Frames whose brightness gives the label away: the loss falls, and nothing is said."""
    args = _noise_or_bright_frames(tmp_path / "data", bright_plaque=learnable)
    args += [*FAST, "--epochs", "3", "--no-test", "--output-dir", str(tmp_path / "out")]
    assert train_in_process(*args, "--lr", "1e-2" if learnable else "1e-5") == 0
    said = re.search(
        r"warning: the training loss ended at ([0-9.]+) after 3 epochs, (?:near|at or above) the ([0-9.]+) of a model",
        capsys.readouterr().out,
    )
    rows = list(csv.DictReader((only_run_dir(tmp_path / "out") / "metrics.csv").open(encoding="utf-8")))
    if learnable:
        assert said is None and float(rows[-1]["train_loss"]) < 0.3
    else:
        assert said, "no warning"
        last, chance = map(float, said.groups())
        assert last == pytest.approx(float(rows[-1]["train_loss"]), abs=1e-3) and 0.6 < chance <= 0.694
