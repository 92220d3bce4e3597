"""Every distributed strategy really runs: DDP, DeepSpeed ZeRO-2 and ZeRO-3, FSDP2 (2 CPU processes, gloo).

DeepSpeed and FSDP come from the shipped launch configs (configs/accelerate/), with Accelerate's state
promoted by tests/strategies/launch.py, because Accelerate itself promotes only GPU launches. Each
strategy gets one 2-epoch run and one resume from its epoch-1 checkpoint, in a copy of the run
directory whose best_model.pth is gone: what a kill right after that checkpoint leaves (the resume must
rewrite best_model.pth), plus later files the resume replaces. The assertions below share those runs.
"""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin

from carotid.core.errors import UserError
from carotid.core.predict import predict_loader
from carotid.core.runtime import set_deepspeed_clipping
from carotid.data.frames.transforms import NORMALIZATION, eval_preset
from carotid.model.file import ModelFile
from carotid.model.registry import build_model
from carotid.training.engine import EpochProgress, train_one_epoch
from carotid.training.fit import DISTRIBUTION
from tests.conftest import FAST, free_port, make_data, only_run_dir, read_json, subprocess_env, train_in_process

pytestmark = pytest.mark.slow  # real multi-process launches: scripts/test.sh --fast skips them

REPO = Path(__file__).resolve().parents[1]
# strategy → (launch config, the distributed type its log must name)
STRATEGIES = {
    "ddp": ("cpu_ddp", "MULTI_CPU"),
    "zero2": ("deepspeed_zero2", "DEEPSPEED"),
    "zero3": ("deepspeed_zero3", "DEEPSPEED"),
    "fsdp2": ("fsdp", "FSDP"),
}
# A file only that strategy's save_state writes: rank 1's shard of the optimizer (or model) state.
SHARD_FILES = {
    "ddp": "optimizer.bin",
    "zero2": "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt",
    "zero3": "pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt",
    "fsdp2": "optimizer_0/__1_0.distcp",
}
LOSSES = ("train_loss", "val_loss")
TIMING = {"epoch_seconds", "images_per_second", "data_wait_fraction"}
SLOW_RANK_SECONDS = 5  # DDP's resume: rank 1 returns from load_state this much later than rank 0


def launch_command(config: str, *args: str) -> list[str]:
    """The real launcher with a shipped config, 2 CPU processes, fp32, running the promoting wrapper."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / f"{config}.yaml"),
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        "-m",
        "tests.strategies.launch",
        *args,
    ]


@dataclass
class StrategyRuns:
    name: str
    run_dir: Path  # the uninterrupted 2-epoch run
    resumed_dir: Path  # a copy of it, resumed from its epoch-1 checkpoint
    resume_output: str
    seconds: float  # wall time of both launches


def native_abort(output: str) -> bool:
    """A rank died of SIGABRT in native code (torch's launcher names the signal)."""
    return "(SIGABRT)" in output and "terminate called" in output


def run(command: list[str], timeout: float = 420, fresh: Callable[[], None] | None = None) -> str:
    """Run a launch; fail with its output's tail unless it exits 0.

    One CI run saw rank 0 of a ZeRO-3 run abort mid-training in native code ("terminate called without an
    active exception", SIGABRT) where 57 runs of it on a 2-core development machine did not: DeepSpeed over
    gloo on the CPU, the test-only path (a GPU cluster runs NCCL). Such a launch, and only such, is run once
    more from a fresh start (`fresh` puts its directories back), with a warning that shows in pytest's
    summary; Python's faulthandler prints every thread's stack on the abort, so the warning says where
    it happened."""
    env = subprocess_env() | {"PYTHONFAULTHANDLER": "1"}
    for attempt in (1, 2):
        started = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
        output = started.stdout + started.stderr
        if started.returncode == 0 or attempt == 2 or not native_abort(output):
            break
        fatal = started.stderr.find("Fatal Python error")  # faulthandler's report: the threads' stacks
        tail = started.stderr[fatal : fatal + 8000] if fatal >= 0 else started.stderr[-8000:]
        warnings.warn(f"a launch aborted in native code; run again afresh. Its stderr:\n{tail}", stacklevel=2)
        if fresh is not None:
            fresh()
    assert started.returncode == 0, output[-4000:]
    return output


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def strategy_data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("strategies") / "frames", persons=12, frames=4, size=48)


@pytest.fixture(scope="module")
def all_runs(strategy_data, tmp_path_factory):
    """Runs made on first use and shared by every test of this module: a strategy's first test takes its two
    launches of 2 processes (a 2-epoch run and its resume), over a minute on two cores."""
    made: dict[str, StrategyRuns] = {}

    def get(name: str) -> StrategyRuns:
        if name in made:
            return made[name]
        if name != "ddp":
            needs = "torch" if name == "fsdp2" else "deepspeed"
            pytest.importorskip(needs, reason="pip install 'carotid[deepspeed]' (scripts/test.sh does)")
        config = STRATEGIES[name][0]
        root, label = strategy_data
        output = tmp_path_factory.mktemp(name)
        clock = time.perf_counter()
        straight = output / "straight"
        args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(straight)]
        run(launch_command(config, *args, "--epochs", "2", *FAST), fresh=lambda: shutil.rmtree(straight))
        run_dir = only_run_dir(straight)
        resumed_dir = output / "resumed" / run_dir.name

        def copy_for_resume() -> None:
            shutil.rmtree(resumed_dir, ignore_errors=True)
            shutil.copytree(run_dir, resumed_dir)
            (resumed_dir / "models" / "best_model.pth").unlink()

        copy_for_resume()
        epoch_1 = sorted((resumed_dir / "checkpoints").glob("checkpoint-*-epoch-end"))[0]
        assert read_json(epoch_1 / "progress.json")["epoch"] == 1
        wrapper = ["--probe-finiteness"]
        if name == "ddp":
            wrapper += ["--slow-rank-after-load-state", str(SLOW_RANK_SECONDS)]
        # --no-test: the straight run's test evaluation is what test_the_test_split_is_evaluated_under_every_strategy
        # checks; the resume's would write the same files again (an evaluation and its 7 figure sets).
        resume = ["--resume", str(epoch_1), "--dist-timeout-minutes", "2", "--no-test"]
        # A hang (ranks disagreeing about the collective best_model.pth rewrite) ends at the timeout.
        resume_output = run(launch_command(config, *wrapper, *resume), timeout=240, fresh=copy_for_resume)
        made[name] = StrategyRuns(name, run_dir, resumed_dir, resume_output, time.perf_counter() - clock)
        print(f"\n{name}: 2-epoch run + resume took {made[name].seconds:.0f} s")
        return made[name]

    return get


@pytest.fixture(scope="module", params=list(STRATEGIES))
def strategy(request, all_runs) -> StrategyRuns:
    return all_runs(request.param)


@pytest.mark.slow
def test_the_strategy_runs_as_named_and_trains_like_ddp(strategy, all_runs):
    log = (strategy.run_dir / "train.log").read_text(encoding="utf-8")
    words = {"MULTI_CPU": "DDP over CPU processes", "DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}
    assert f"processes: 2 ({words[STRATEGIES[strategy.name][1]]})" in log
    assert "warning: the launch config asks for" not in log
    last = sorted((strategy.run_dir / "checkpoints").glob("checkpoint-*"))[-1]
    assert (last / SHARD_FILES[strategy.name]).is_file(), sorted(p.name for p in last.rglob("*"))
    ours, ddp = metric_rows(strategy.run_dir), metric_rows(all_runs("ddp").run_dir)
    assert [r["epoch"] for r in ours] == ["1", "2"]
    for mine, reference in zip(ours, ddp):
        for key in LOSSES:
            assert float(mine[key]) == pytest.approx(float(reference[key]), abs=1e-5), (strategy.name, mine, key)


@pytest.mark.slow
def test_model_files_are_single_fp32_consolidated_files_of_the_architecture(strategy, all_runs):
    for name in ("best_model.pth", "final_model.pth"):
        path = strategy.run_dir / "models" / name
        model_file = ModelFile.load(path)  # weights_only=True, keys and shapes checked
        fresh = build_model(model_file.arch, model_file.num_classes, model_file.in_channels)
        expected = fresh.state_dict()
        assert {k: v.shape for k, v in model_file.state_dict.items()} == {k: v.shape for k, v in expected.items()}
        assert all(v.dtype == torch.float32 for v in model_file.state_dict.values() if v.is_floating_point())
        fresh.load_state_dict(model_file.state_dict, strict=True)
    # Consolidated, not one rank's shard: the final weights are DDP's. DDP trains channels_last (DeepSpeed and
    # FSDP cannot), whose convolutions sum in another order: 3.4e-5 apart after 2 epochs, hence 1e-4.
    ours = ModelFile.load(strategy.run_dir / "models" / "final_model.pth").state_dict
    ddp = ModelFile.load(all_runs("ddp").run_dir / "models" / "final_model.pth").state_dict
    assert all(torch.allclose(ours[k].float(), ddp[k].float(), atol=1e-4) for k in ddp), strategy.name


@pytest.mark.slow
def test_a_resume_from_the_epoch_1_checkpoint_reproduces_epoch_2(strategy):
    out = strategy.resume_output
    assert "resumed from checkpoint-" in out and "rewriting best_model.pth for epoch 1" in out
    assert metric_rows(strategy.resumed_dir) == metric_rows(strategy.run_dir), "epoch 2 again, same numbers"
    ours, straight = (
        ModelFile.load(r / "models" / "final_model.pth").state_dict for r in (strategy.resumed_dir, strategy.run_dir)
    )
    assert all(torch.equal(ours[k], straight[k]) for k in straight), "the optimizer state came back whole"
    # best_model.pth rewritten for epoch 1 at the resume, then replaced by epoch 2 where it was better: as straight.
    best = [ModelFile.load(r / "models" / "best_model.pth") for r in (strategy.resumed_dir, strategy.run_dir)]
    assert best[0].epoch == best[1].epoch and all(
        torch.equal(best[0].state_dict[k], v) for k, v in best[1].state_dict.items()
    )


@pytest.mark.slow
def test_the_test_split_is_evaluated_under_every_strategy(strategy):
    metrics = read_json(strategy.run_dir / "eval_test_best" / "metrics.json")
    assert metrics["n_persons"] == len(read_json(strategy.run_dir / "splits.json")["test"])
    with (strategy.run_dir / "eval_test_best" / "predictions.csv").open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 8  # 2 test persons x 4 frames, each once


@pytest.mark.slow
def test_the_finiteness_check_sees_a_nan_in_any_ranks_part_of_the_weights(strategy):
    kind = STRATEGIES[strategy.name][1]
    for rank in (0, 1):
        assert f"finiteness probe: rank {rank} ({kind}): finite before True, after NaN on rank 1 False" in (
            strategy.resume_output
        )


def test_a_launch_config_asking_for_fsdp_that_runs_as_plain_ddp_says_so(strategy_data, tmp_path, monkeypatch, capsys):
    root, label = strategy_data
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --config_file fsdp.yaml` sets
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path), "--epochs", "1"]
    assert train_in_process(*args, *FAST, "--no-test") == 0
    warning = "warning: the launch config asks for FSDP, but this run is NO (a single process)"
    assert warning in capsys.readouterr().out
    assert warning in (only_run_dir(tmp_path) / "train.log").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "launch_value, flag, expected",
    [("auto", None, 0.0), ("auto", 0.5, 0.5), ("1.0", 1.0, 1.0), ("1.0", None, UserError), ("0.3", 0.5, UserError)],
)
def test_deepspeed_clips_exactly_as_clip_grad_norm_says(monkeypatch, launch_value, flag, expected):
    # The plugin Accelerate builds from what `accelerate launch` sets for the config's gradient_clipping.
    monkeypatch.setenv("ACCELERATE_GRADIENT_CLIPPING", launch_value)
    config = DeepSpeedPlugin().deepspeed_config
    if expected is UserError:
        with pytest.raises(UserError, match="clips gradients at"):
            set_deepspeed_clipping(config, flag)
    else:
        set_deepspeed_clipping(config, flag)
        assert config["gradient_clipping"] == expected


def test_a_bf16_model_takes_fp32_frames_in_training_and_prediction():
    """What DeepSpeed bf16 does (bf16 weights, an autocast that does nothing), on a CPU without native bf16."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 3).to(torch.bfloat16)
    frames = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    batch = (frames, torch.tensor([0, 1] * 4), torch.arange(8), torch.ones(8, dtype=torch.bool))
    norm = NORMALIZATION[3]
    preset = eval_preset(norm["mean"], norm["std"])
    before = [p.detach().clone() for p in model.parameters()]
    end = train_one_epoch(
        model,
        [batch],
        torch.optim.AdamW(model.parameters(), lr=1e-2),
        accelerator,
        preset,
        epoch=0,
        epochs=1,
        progress=EpochProgress(),
    )
    assert end.stop is None and end.progress.seen == 8 and math.isfinite(end.progress.loss_sum)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step trained the model"
    out = predict_loader(model, [batch], accelerator, preset)
    assert out["probs"].shape == (8, 2) and np.allclose(out["probs"].sum(axis=1), 1.0, atol=1e-2)


@pytest.fixture(scope="module")
def attention_runs(strategy_data, tmp_path_factory):
    """2-epoch runs of a person model (--person-model attention), made on first use."""
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            if name != "ddp":
                pytest.importorskip("torch" if name == "fsdp2" else "deepspeed")
            root, label = strategy_data
            output = tmp_path_factory.mktemp(f"attention_{name}")
            args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "2"]
            args += [*FAST, "--batch-size", "6", "--bag-size", "3", "--person-model", "attention"]
            args += ["--attention-dropout", "0.25", "--mask-top-frames", "1"]  # training-only stabilisers
            args += ["--no-test"]  # training and validation are compared; test_person_model evaluates such a model
            run(launch_command(STRATEGIES[name][0], *args), fresh=lambda: shutil.rmtree(output, ignore_errors=True))
            made[name] = only_run_dir(output)
        return made[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zero2", "zero3", "fsdp2"])
def test_an_attention_model_trains_and_validates_under_the_strategy_like_under_ddp(name, attention_runs):
    """Bags of several persons per step; validation's chunked encode/pool calls stay in step on both ranks
    (each forward gathers the sharded weights under ZeRO-3 and FSDP2)."""
    run_dir = attention_runs(name)
    assert f"processes: 2 ({DISTRIBUTION[STRATEGIES[name][1]]})" in (run_dir / "train.log").read_text(encoding="utf-8")
    ours, ddp = metric_rows(run_dir), metric_rows(attention_runs("ddp"))
    assert [r["epoch"] for r in ours] == ["1", "2"]
    for mine, reference in zip(ours, ddp):
        for key in LOSSES:
            assert float(mine[key]) == pytest.approx(float(reference[key]), abs=1e-5), (name, mine, key)
    model_file = ModelFile.load(run_dir / "models" / "final_model.pth")  # consolidated, keys and shapes checked
    assert model_file.person_model == "attention"
