"""Long runs: exact resume after kill -9, preemption by SIGTERM under DDP, gradient accumulation."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import (
    FAST,
    load_model,
    make_data,
    module_command,
    only_run_dir,
    run_module,
    subprocess_env,
    train_in_process,
)

pytestmark = pytest.mark.slow  # real multi-process launches: scripts/test.sh --fast skips them

TIMING = {"epoch_seconds", "images_per_second", "data_wait_fraction"}


def rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in r.items() if k not in TIMING} for r in csv.DictReader(handle)]


def launch(args: list[str], nproc: int) -> subprocess.Popen:
    """carotid.train in the background, in its own process group (so the test can signal all of it)."""
    return subprocess.Popen(
        module_command("carotid.train", *args, nproc=nproc),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )


def wait_for(pattern: str, folder: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.02)
    raise AssertionError(f"{pattern} did not appear in {folder}")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("resume") / "frames", persons=12, frames=6, size=40)


def common(data, output: Path) -> list[str]:
    root, label = data
    return [
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(output),
        "--epochs",
        "3",
        "--checkpoint-every-steps",
        "3",
        "--no-test",
        *FAST[: FAST.index("--batch-size")],
        "--batch-size",
        "4",
        "--num-workers",
        "0",
        "--lr",
        "1e-3",
    ]


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(small_data, tmp_path):
    straight = run_module("carotid.train", *common(small_data, tmp_path / "straight"))
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = launch(common(small_data, tmp_path / "killed"), nproc=1)
    # 12 training batches per epoch and a checkpoint every 3 steps: kill in epoch 2, after batch 3.
    wait_for("train_*/checkpoints/checkpoint-00000015", tmp_path / "killed", killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    run_dir = only_run_dir(tmp_path / "killed")
    load_model(run_dir / "models" / "best_model.pth")  # written before the kill, and whole
    resumed = run_module("carotid.train", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint-" in resumed.stdout
    reference = only_run_dir(tmp_path / "straight")
    assert rows(run_dir) == rows(reference), "same epochs, same losses and metrics, no duplicate rows"
    ours, theirs = (load_model(r / "models" / "final_model.pth")["state_dict"] for r in (run_dir, reference))
    # Exact on the CPU: data order, augmentation and dropout come from RNG states restored from the checkpoint.
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert (
        load_model(run_dir / "models" / "best_model.pth")["epoch"]
        == load_model(reference / "models" / "best_model.pth")["epoch"]
    )


@pytest.mark.slow
def test_sigterm_stops_all_ranks_at_a_step_and_the_run_resumes(small_data, tmp_path, capsys):
    args = common(small_data, tmp_path) + ["--num-workers", "1"]
    job = launch(args, nproc=2)
    wait_for("train_*/checkpoints/checkpoint-00000003", tmp_path, job)
    os.killpg(job.pid, signal.SIGTERM)  # what Slurm does: every process of the job gets the signal
    output = job.communicate(timeout=120)[0]
    run_dir = only_run_dir(tmp_path)
    assert "stopped by SIGTERM in epoch" in output and f"--resume {run_dir}" in output
    assert "Traceback" not in output.split("stopped by SIGTERM")[0], "the ranks themselves stop cleanly"
    stopped_at = sorted((run_dir / "checkpoints").glob("checkpoint-*"))[-1]
    assert (stopped_at / "progress.json").is_file()
    # Resuming with another number of processes is refused, with the fix in the message.
    assert train_in_process("--resume", str(run_dir)) == 2
    assert "written by 2 process(es), this launch has 1" in capsys.readouterr().err
    resumed = run_module("carotid.train", "--resume", str(run_dir), nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["epoch"] for r in rows(run_dir)] == ["1", "2", "3"]
    assert load_model(run_dir / "models" / "final_model.pth")["epoch"] == 3


@pytest.mark.parametrize(
    "person_model, big_batch",
    # A person model's --batch-size counts frames: 16 frames = 4 persons of 4 frames a step, 8 = 2 (at least 2).
    [("frames", "8"), ("attention", "16")],
)
def test_gradient_accumulation_2_x_b_matches_batch_2b(tmp_path, person_model, big_batch):
    root, label = make_data(tmp_path / "frames", persons=10, frames=4, size=40)
    base = [
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--epochs",
        "3",
        "--augment",
        "none",
        "--no-test",
        "--train-ratio",
        "0.8",
        "--val-ratio",
        "0.2",
        "--test-ratio",
        "0",
        *FAST,
    ]
    base += ["--person-model", person_model] + (["--bag-size", "4"] if person_model != "frames" else [])
    assert train_in_process(*base, "--batch-size", big_batch, "--output-dir", str(tmp_path / "big")) == 0
    small_batch = str(int(big_batch) // 2)
    acc = ["--batch-size", small_batch, "--gradient-accumulation-steps", "2", "--output-dir", str(tmp_path / "acc")]
    assert train_in_process(*base, *acc) == 0
    big, acc = only_run_dir(tmp_path / "big"), only_run_dir(tmp_path / "acc")
    for a, b in zip(rows(big), rows(acc)):
        assert float(a["lr"]) == float(b["lr"]), "the schedule counts optimizer steps, not micro-batches"
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-4, abs=1e-5)
    wa, wb = (load_model(r / "models" / "final_model.pth")["state_dict"] for r in (big, acc))
    # The attention score's bias shifts every score of a person alike, which the softmax cancels: its gradient is
    # zero up to rounding, and AdamW's normalised step moves it by that rounding noise (4e-4 measured).
    # The rest agree to float rounding: within 1e-5 with average pooling, 1.7e-5 measured (attention_v.weight) with
    # the max pooling a person model's encoder has by default, whose gradient runs through one place per channel;
    # 5e-5 is 5% of one step at --lr 1e-3, far below what one differing micro-batch would move.
    compared = [k for k in wa if k != "attention_w.bias"]
    assert all(torch.allclose(wa[k], wb[k], atol=5e-5) for k in compared)


def test_resume_with_more_epochs_stretches_the_schedule(small_data, tmp_path, capsys):
    args = common(small_data, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    assert train_in_process(*args) == 0
    run_dir = only_run_dir(tmp_path)
    assert float(rows(run_dir)[-1]["lr"]) < 1e-5, "the 2-epoch cosine ended near 0"
    assert train_in_process("--resume", str(run_dir), "--epochs", "4") == 0
    assert "LR schedule was stretched from 24 to 48 optimizer steps" in capsys.readouterr().out
    lrs = [float(r["lr"]) for r in rows(run_dir)]
    assert [r["epoch"] for r in rows(run_dir)] == ["1", "2", "3", "4"]
    assert lrs[2] > 1e-4 and lrs[3] < lrs[2], "epochs 3-4 train on the stretched cosine, not at LR 0"


def test_a_signal_during_the_last_epoch_stops_before_the_final_model_and_resume_finishes(
    small_data, tmp_path, monkeypatch, capsys
):
    from carotid.training.trainer import Trainer

    train_epoch = Trainer.train_epoch

    def signalled_in_last_epoch(self, stop):
        out = train_epoch(self, stop)
        if self.state["epoch"] == self.cfg.epochs - 1:  # as if SIGTERM came after the loop's last check
            stop.signum = signal.SIGTERM
        return out

    monkeypatch.setattr(Trainer, "train_epoch", signalled_in_last_epoch)
    args = common(small_data, tmp_path)
    args[args.index("--epochs") + 1] = "2"
    assert train_in_process(*args) == 143
    run_dir = only_run_dir(tmp_path)
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after the last epoch (2)" in err and f"--resume {run_dir}" in err
    assert not (run_dir / "models" / "final_model.pth").exists() and not (run_dir / "report.html").exists()
    monkeypatch.setattr(Trainer, "train_epoch", train_epoch)
    assert train_in_process("--resume", str(run_dir)) == 0
    assert [r["epoch"] for r in rows(run_dir)] == ["1", "2"]
    assert load_model(run_dir / "models" / "final_model.pth")["epoch"] == 2
    assert (run_dir / "report.html").is_file()
