"""A site's local round over its own processes (GPUs): DDP/Accelerate inside one hospital.

Flower's ClientApp and FLARE's client talk to one process. With `processes` > 1 they hand the round to
`accelerate launch --multi_gpu --num_processes N -m carotid.federated.site_round EXCHANGE` through files in the
site's own run folder (`exchange/`, it never leaves the site): the global weights and the round's settings in,
the new weights, counts and aggregate numbers (or the site's `error:`) out, each file written whole or not at all.
The launched processes run the same `local_round` / `evaluate_global` as one process does, as a DDP group
(NCCL on GPUs, gloo on the CPU). With `processes` = 1 the round runs in the calling process, as before.

No Flower or FLARE import here: both adapters call `site_round`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from carotid.core.errors import UserError, run_cli
from carotid.core.files import atomic_torch_save, atomic_write_json, safe_torch_load
from carotid.core.run_dir import RunDir
from carotid.training.config import TrainConfig
from carotid.training.local_round import RoundResult, Weights, evaluate_global, local_round
from carotid.training.site import open_site, site_accelerator, site_run_dir

EXCHANGE = "exchange"  # in the site's run folder: the files between the adapter and the launched processes
REQUEST, WEIGHTS, RESULT, ERROR = "request.json", "global.pth", "result.pth", "error.json"
Answer = tuple[dict | None, RoundResult | None]  # (the global weights' validation numbers, the local round's result)


@dataclasses.dataclass(frozen=True)
class RoundTask:
    """What one call does: score the global weights on the validation persons and/or train them."""

    evaluate: bool = False
    train: bool = False
    epochs: int = 1
    round_number: int = 1
    proximal_mu: float = 0.0
    keep_local: str | None = None


def site_round(cfg: TrainConfig, run_name: str, weights: Weights, task: RoundTask, processes: int = 1) -> Answer:
    """(the global weights' validation numbers if task.evaluate, the local round's result if task.train), run in
    this process (`processes` 1) or over `processes` launched processes."""
    if processes < 1:
        raise UserError(f"a site's processes must be ≥ 1, not {processes}", "set processes=N with N ≥ 1")
    if processes == 1:
        return run_task(cfg, run_name, weights, task)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < processes:
        raise UserError(f"the site has {gpus} GPU(s), its processes={processes}", f"set processes={gpus} or fewer")
    run_dir = site_run_dir(cfg, run_name)
    if not RunDir(run_dir).is_run():  # the split is made once, in one process, before the group starts
        open_site(site_accelerator(cfg), cfg, run_name)
    exchange = run_dir / EXCHANGE
    exchange.mkdir(exist_ok=True)
    for name in (RESULT, ERROR):
        (exchange / name).unlink(missing_ok=True)
    plain = {k: torch.as_tensor(v).detach().cpu() for k, v in weights.items()}
    atomic_torch_save(plain, exchange / WEIGHTS)
    request = {"options": dataclasses.asdict(cfg), "run_name": run_name, "task": dataclasses.asdict(task)}
    atomic_write_json(exchange / REQUEST, request)
    status = _launch(launch_command(processes, exchange, cfg.mixed_precision))
    (exchange / WEIGHTS).unlink(missing_ok=True)
    if (exchange / ERROR).is_file():
        error = _read_json(exchange / ERROR)
        raise UserError(error["what"], error.get("fix"))
    if status != 0 or not (exchange / RESULT).is_file():
        raise RuntimeError(
            f"the site's round over {processes} processes failed (exit status {status}); "
            "the site's console has the processes' output"
        )
    out = safe_torch_load(exchange / RESULT, "the site's round result")
    (exchange / RESULT).unlink()
    result = RoundResult(**out["round"]) if out.get("round") is not None else None
    return out.get("scores"), result


def launch_command(processes: int, exchange: Path, mixed_precision: str | None) -> list[str]:
    """`accelerate launch` of this module over `processes` processes on this machine (GPUs when there are,
    else CPU processes over gloo), on a free port of 127.0.0.1."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
        "--num_machines", "1", "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
        "--mixed_precision", mixed_precision or "no", "--dynamo_backend", "no",
        "-m", __name__, str(exchange),
    ]  # fmt: skip


def run_task(cfg: TrainConfig, run_name: str, weights: Weights, task: RoundTask) -> Answer:
    """The task in this process (or in each process of a launched group: collective)."""
    scores = result = None
    if task.evaluate:
        scores = evaluate_global(site_accelerator(cfg), cfg, run_name, weights, keep_local=task.keep_local)
    if task.train:
        result = local_round(
            site_accelerator(cfg), cfg, run_name, weights, epochs=task.epochs, round_number=task.round_number,
            proximal_mu=task.proximal_mu, keep_local=task.keep_local,
        )  # fmt: skip
    return scores, result


def _launch(command: list[str]) -> int:
    """Run the launcher to its end; stopped (Ctrl-C, the site stopped), it stops the round's processes too."""
    process = subprocess.Popen(command)
    try:
        return process.wait()
    except BaseException:
        process.terminate()  # torchrun passes SIGTERM on to the processes it started
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        raise


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _plain(value):
    """A value that loads with weights_only=True: numpy and torch scalars as Python numbers, containers walked."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value
    return value.item() if hasattr(value, "item") else value


# ---------------------------------------------------------------------------------------------
# The launched processes
# ---------------------------------------------------------------------------------------------


def _main(argv: Sequence[str] | None) -> int:
    exchange = Path((sys.argv[1:] if argv is None else argv)[0])
    request = _read_json(exchange / REQUEST)
    cfg = TrainConfig(**request["options"])
    main_process = os.environ.get("RANK", "0") == "0"
    try:
        weights = safe_torch_load(exchange / WEIGHTS, "the global weights")
        scores, result = run_task(cfg, request["run_name"], weights, RoundTask(**request["task"]))
    except UserError as err:
        if main_process:  # the adapter raises it again, under the site's name
            atomic_write_json(exchange / ERROR, {"what": err.what, "fix": err.fix})
        raise
    if main_process:
        round_out = dataclasses.asdict(result) if result is not None else None
        atomic_torch_save(_plain({"scores": scores, "round": round_out}), exchange / RESULT)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
