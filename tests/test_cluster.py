"""Launch configs, the Slurm script, and the multi-node path on one machine (two "nodes" on 127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from tests.conftest import FAST, free_port, load_model, only_run_dir, read_json, subprocess_env

pytestmark = pytest.mark.slow  # real multi-process launches: scripts/test.sh --fast skips them

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ["single_gpu", "multi_gpu_ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp", "multi_node", "cpu_ddp"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_launch_config_loads_with_accelerates_own_loader(name):
    path = REPO / "configs" / "accelerate" / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.distributed_type is not None
    header = path.read_text().split("compute_environment")[0]
    assert "Use when" in header and "accelerate launch --config_file configs/accelerate/" in header


def test_slurm_script_is_valid_bash_and_uses_the_slurm_variables():
    script = (REPO / "scripts" / "slurm_train.sh").read_text()
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "slurm_train.sh")], check=True)
    for name in (
        "SLURM_NNODES",
        "SLURM_NODEID",
        "SLURM_JOB_NODELIST",
        "--machine_rank",
        "--main_process_ip",
        "--resume",
    ):
        assert name in script


@pytest.mark.slow
def test_two_nodes_on_loopback_make_one_run_directory(data_dir, tmp_path):
    root, label = data_dir
    port = str(free_port())
    nodes = []
    for rank in ("0", "1"):
        command = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_machines",
            "2",
            "--num_processes",
            "2",
            "--machine_rank",
            rank,
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            port,
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "carotid.train",
            "--root-dir",
            str(root),
            "--label-excel",
            str(label),
            "--output-dir",
            str(tmp_path),
            "--epochs",
            "1",
            *FAST,
        ]
        nodes.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env())
        )
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "processes: 2" in outputs[0]
    run_dir = only_run_dir(tmp_path)  # rank 0 chose the name; the other node used it
    for name in ("best_model.pth", "final_model.pth"):
        assert load_model(run_dir / "models" / name)["arch"] == "small_cnn"
    assert read_json(run_dir / "eval_test_best" / "metrics.json")["n_persons"] == len(
        read_json(run_dir / "splits.json")["test"]
    )
