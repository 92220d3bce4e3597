"""Faults during a run: a diverging loss, a full disk, running out of GPU memory.

None of them may leave a corrupt or lost file: what was saved before the fault stays whole and usable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from carotid.core import files, run_dir
from carotid.model.file import ModelFile
from carotid.training import checkpoints
from tests.conftest import FAST, make_data, only_run_dir, subprocess_env, train_in_process
from tests.forked import start_training

QUICK = [*FAST, "--batch-size", "4", "--no-test", "--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("faults") / "frames", persons=8, frames=3, size=32)


def args(data, output: Path, *extra: str) -> list[str]:
    root, label = data
    return ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), *QUICK, *extra]


def assert_all_finite(run: Path) -> None:
    """Every model file and checkpoint on disk holds finite weights: nothing diverged was saved."""
    for model_file in (run / "models").glob("*.pth"):
        assert all(torch.isfinite(t).all() for t in ModelFile.load(model_file).state_dict.values()), model_file
    for checkpoint in checkpoints.list_checkpoints(run):
        assert all(torch.isfinite(t).all() for t in load_file(checkpoint / "model.safetensors").values()), checkpoint


# ---------------------------------------------------------------------------------------------
# A non-finite loss
# ---------------------------------------------------------------------------------------------


def test_a_huge_learning_rate_stops_in_epoch_1_naming_the_batch(data, tmp_path, capsys):
    status = train_in_process(*args(data, tmp_path, "--lr", "1e30", "--epochs", "2", "--checkpoint-every-steps", "1"))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert err.startswith("error: the ") and "non-finite (NaN/inf)" in err and "epoch 1" in err and "batch " in err, err
    assert "lower --lr" in err
    run = only_run_dir(tmp_path)
    assert not (run / "models" / "best_model.pth").exists() and not (run / "models" / "final_model.pth").exists()
    assert_all_finite(run)  # checkpoints taken before the weights blew up only
    last = checkpoints.list_checkpoints(run)
    assert (f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet") in err


def test_divergence_in_epoch_2_keeps_epoch_1s_model_and_checkpoints(data, tmp_path, capsys):
    # The step schedule multiplies the LR by --lr-gamma after each epoch: 1e-3 in epoch 1, 1e27 in epoch 2.
    status = train_in_process(
        *args(
            data,
            tmp_path,
            "--epochs",
            "3",
            "--checkpoint-every-steps",
            "1",
            "--scheduler",
            "step",
            "--lr-step-epochs",
            "1",
            "--lr-gamma",
            "1e30",
            "--warmup-epochs",
            "0",
            "--monitor",
            "val_loss",
        )
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1 and "non-finite (NaN/inf)" in err and "epoch 2" in err and "batch " in err, err
    run = only_run_dir(tmp_path)
    best = ModelFile.load(run / "models" / "best_model.pth")
    assert best.epoch == 1 and "models/ still holds best_model.pth from before" in err
    assert_all_finite(run)
    last = checkpoints.list_checkpoints(run)[-1]
    assert str(last) in err and checkpoints.read_progress(last)["rows"][0]["epoch"] == 1
    assert [r["epoch"] for r in files.read_records(run / "metrics.csv")] == ["1"]


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------

# Runs in its own process: RLIMIT_FSIZE makes every write past LIMIT bytes fail with EFBIG, as a full disk
# fails with ENOSPC (with SIGXFSZ ignored, the write returns the error instead of killing the process).
FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from carotid.core import files
    from carotid.model.file import ModelFile
    from carotid.model.registry import SmallCNN
    from carotid.training import checkpoints

    folder, limit = Path(sys.argv[1]), int(sys.argv[2])
    def model_file(model, epoch):
        return ModelFile(state_dict=model.state_dict(), arch="small_cnn", class_names=["a", "b"], in_channels=1,
                         image_size=32, normalization={"mean": [0.5], "std": [0.25]}, positive_index=1, epoch=epoch)
    small, big = SmallCNN(2, 1, width=8), torch.nn.Linear(1000, 200)  # 100 KB of weights vs 800 KB
    wide = SmallCNN(2, 1, width=32)  # a model file of 1.5 MB
    accelerator = Accelerator(cpu=True)
    model, optimizer = accelerator.prepare(big, torch.optim.SGD(big.parameters(), lr=0.1))
    run = folder / "run"
    (run / "models").mkdir(parents=True)

    # Before the disk fills up: one of each file.
    model_file(small, 1).save(run / "models" / "best_model.pth")
    files.atomic_write_json(run / "splits.json", {"train": ["1"], "val": [], "test": []})
    files.write_records(run / "metrics.csv", [{"epoch": 1}], ["epoch"])
    checkpoints.save_training_state(accelerator, run, {"global_step": 1}, global_step=1, epoch_end=False, keep=2)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    errors = {}
    def attempt(name, write):
        try:
            write()
            errors[name] = None
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}" + "".join(getattr(err, "__notes__", []))
    with torch.no_grad():
        big.weight.add_(1.0)
    attempt("model file", lambda: model_file(wide, 2).save(run / "models" / "best_model.pth"))
    many = [str(i) for i in range(100000)]
    attempt("splits.json", lambda: files.atomic_write_json(run / "splits.json", {"train": many}))
    attempt("metrics.csv", lambda: files.write_records(run / "metrics.csv", [{"epoch": i} for i in many], ["epoch"]))
    attempt("checkpoint", lambda: checkpoints.save_training_state(accelerator, run, {"global_step": 2}, global_step=2,
                                                           epoch_end=False, keep=2))
    print(json.dumps(errors))
""")


def test_a_full_disk_while_saving_leaves_the_previous_files_intact(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path), str(64 * 1024)],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(errors.values()), f"every write past the limit must fail: {errors}"
    assert "File too large" in errors["model file"] and "best_model.pth was not replaced" in errors["model file"]
    assert "earlier checkpoints" in errors["checkpoint"] and "--resume" in errors["checkpoint"]
    run = tmp_path / "run"
    assert torch.load(run / "models" / "best_model.pth", weights_only=True)["epoch"] == 1
    assert run_dir.read_splits(run) == {"train": ["1"], "val": [], "test": []}
    assert files.read_records(run / "metrics.csv") == [{"epoch": "1"}]
    assert [c.name for c in checkpoints.list_checkpoints(run)] == ["checkpoint-00000001"]
    assert checkpoints.read_progress(run / "checkpoints" / "checkpoint-00000001") == {"global_step": 1}
    weights = load_file(run / "checkpoints" / "checkpoint-00000001" / "model.safetensors")
    assert not any(torch.equal(w, torch.ones_like(w)) for w in weights.values())
    leftovers = [p.name for p in run.rglob(".*")]
    assert leftovers == [], f"a failed write leaves no temp file or folder: {leftovers}"


def test_a_full_disk_mid_run_stops_it_and_resume_finishes_after_space_is_freed(data, tmp_path):
    assert train_in_process(*args(data, tmp_path, "--epochs", "1", "--checkpoint-every-steps", "1")) == 0
    run = only_run_dir(tmp_path)
    before = {name: files.file_sha256(run / "models" / name) for name in ("best_model.pth", "final_model.pth")}
    # Continue to 3 epochs with 256 KB of "disk": the first checkpoint of epoch 2 (1.5 MB) cannot be written.
    log = tmp_path / "full.log"
    full = start_training(["--resume", str(run), "--epochs", "3"], log, file_size_limit=256 * 1024)
    full.join(timeout=120)
    output = log.read_text()
    assert full.exitcode == 1 and "Traceback" in output, output[-3000:]  # a fault, not a user mistake
    assert "the earlier checkpoints" in output and f"--resume {run}" in output
    assert {name: files.file_sha256(run / "models" / name) for name in before} == before
    assert [r["epoch"] for r in files.read_records(run / "metrics.csv")] == ["1"]
    assert checkpoints.list_checkpoints(run)[-1].name == "checkpoint-00000003-epoch-end"
    assert not list((run / "checkpoints").glob(".*"))
    # Space is back: the same command finishes the run.
    assert train_in_process("--resume", str(run), "--epochs", "3") == 0
    assert [r["epoch"] for r in files.read_records(run / "metrics.csv")] == ["1", "2", "3"]
    assert ModelFile.load(run / "models" / "final_model.pth").epoch == 3


# ---------------------------------------------------------------------------------------------
# Out of GPU memory
# ---------------------------------------------------------------------------------------------


def test_out_of_memory_says_which_options_to_lower(data, tmp_path, capsys, monkeypatch):
    """No GPU here: the allocator's exception is raised where a real one would come from (a training step)."""

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("carotid.training.trainer.train_one_epoch", out_of_memory)
    status = train_in_process(*args(data, tmp_path, "--epochs", "1"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("error: out of memory"), err
    for flag in ("--batch-size 4", "--gradient-accumulation-steps", "--image-size", "--resume"):
        assert flag in err[0], flag
