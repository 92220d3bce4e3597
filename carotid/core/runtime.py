"""The process side of a run: the Accelerator, precision fallbacks, rank-0 work, signals and the run log."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import DistributedType, broadcast_object_list

from carotid.core.errors import UserError, interrupt_pending
from carotid.core.text import ESCAPE
from carotid.core.trackers import tracker_of

T = TypeVar("T")


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str | None, on_cuda: bool) -> tuple[str, str | None]:
    """(mixed precision to use, warning or None). The flag wins over `accelerate launch`'s setting."""
    precision = requested or os.environ.get("ACCELERATE_MIXED_PRECISION", "no") or "no"
    if precision == "bf16" and on_cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        return "fp16", "warning: this GPU has no native bf16 (pre-Ampere); training in fp16 with loss scaling instead"
    if precision == "bf16" and not on_cuda and not cpu_has_native_bf16():
        return "no", (
            "warning: bf16 was asked for, but this CPU has no native bf16 and would run about 10x slower; "
            "training in fp32 instead"
        )
    if precision == "fp16" and not on_cuda:
        return "no", "warning: fp16 needs a GPU; training in fp32 instead"
    return precision, None


def build_accelerator(
    *,
    mixed_precision: str | None = None,
    gradient_accumulation_steps: int = 1,
    report_to: str | None = None,
    dist_timeout_minutes: int = 60,
    output_dir: str | None = None,
) -> tuple[Accelerator, str | None]:
    """An Accelerator on CUDA when there is one, else on the CPU (where several processes use gloo).

    `mixed_precision` None takes what `accelerate launch` says; evaluation and prediction use the defaults."""
    on_cuda = torch.cuda.is_available()
    precision, note = resolve_precision(mixed_precision, on_cuda)
    report_to = tracker_of(report_to)  # None for none; a missing package fails here, before any work
    accelerator = Accelerator(
        cpu=not on_cuda,
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=report_to,
        project_dir=output_dir if report_to else None,  # trackers need a folder now; the run dir is set later
        step_scheduler_with_optimizer=False,  # our schedule counts optimizer steps itself
        dataloader_config=DataLoaderConfiguration(non_blocking=on_cuda),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(minutes=dist_timeout_minutes))],
    )
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return accelerator, note


# What `accelerate launch` sets when a launch config asks for a sharding strategy, and what the run then is.
ASKED_STRATEGIES = {
    "ACCELERATE_USE_DEEPSPEED": ("DeepSpeed", DistributedType.DEEPSPEED),
    "ACCELERATE_USE_FSDP": ("FSDP", DistributedType.FSDP),
}


def strategy_warning(accelerator: Accelerator) -> str | None:
    """A warning when the launch config asked for DeepSpeed or FSDP and the run came out as something else.

    Accelerate promotes a launch to DeepSpeed/FSDP only on GPUs: without one the same config silently
    trains as plain DDP (MULTI_CPU), so the start-up block must say so."""
    for variable, (name, kind) in ASKED_STRATEGIES.items():
        if os.environ.get(variable, "false").lower() == "true" and accelerator.distributed_type != kind:
            got = accelerator.distributed_type.value
            plain = "plain DDP" if accelerator.num_processes > 1 else "a single process"
            return (
                f"warning: the launch config asks for {name}, but this run is {got} ({plain}): Accelerate uses "
                f"{name} only on GPUs; it trains, checkpoints and saves as {got}"
            )
    return None


def match_deepspeed_clipping(accelerator: Accelerator, clip_grad_norm: float | None) -> None:
    """Under DeepSpeed, make its gradient clipping what --clip-grad-norm says (see set_deepspeed_clipping)."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        set_deepspeed_clipping(accelerator.state.deepspeed_plugin.deepspeed_config, clip_grad_norm)


def set_deepspeed_clipping(config: dict[str, Any], clip_grad_norm: float | None) -> None:
    """Fill a DeepSpeed config's gradient_clipping from --clip-grad-norm.

    DeepSpeed clips inside its own step, from this value (accelerator.clip_grad_norm_ only reports the
    norm there), and Accelerate fills an 'auto' one with 1.0: left alone, a DeepSpeed run would clip where
    the same command under DDP does not. An explicit value that disagrees with the flag is an error."""
    wanted = float(clip_grad_norm or 0.0)  # 0.0: DeepSpeed does not clip
    given = config.get("gradient_clipping", "auto")
    if given in (None, "auto"):
        config["gradient_clipping"] = wanted
    elif float(given) != wanted:
        flag = f"--clip-grad-norm {clip_grad_norm}" if clip_grad_norm else "no --clip-grad-norm"
        raise UserError(
            f"the DeepSpeed config clips gradients at {given}, but this run has {flag}",
            f"set 'gradient_clipping: auto' in the launch config's deepspeed_config (carotid then passes "
            f"--clip-grad-norm on), or pass --clip-grad-norm {given}",
        )


def on_main(accelerator: Accelerator, fn: Callable[[], T]) -> T:
    """Run `fn` on the main process only and hand its result (or its UserError) to every rank."""
    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box = [("ok", fn())]
        except UserError as err:
            box = [("user", (err.what, err.fix))]
        except BaseException as err:
            box = [("crash", repr(err))]
            if accelerator.num_processes > 1:
                broadcast_object_list(box, from_process=0)
            raise
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    status, value = box[0]
    if status == "user":
        raise UserError(*value)
    if status == "crash":
        raise RuntimeError(f"the main process failed: {value}")
    return value


class StopSignal:
    """Remembers a SIGTERM/SIGINT (what Slurm and Ctrl-C send) so training stops at a step boundary.

    A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        if interrupt_pending():  # a Ctrl-C during start-up that a finaliser swallowed: stop before the first step
            self.signum = signal.SIGINT
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "signal"


class RunLog:
    """Lines for the console (main process) and RUN/train.log."""

    def __init__(self, accelerator: Accelerator, path: Path | None = None):
        self.accelerator = accelerator
        self.path = path
        self.warnings: list[str] = []  # every `warning:` line said, without the prefix (data_report.json)

    def __call__(self, message: str) -> None:
        self.accelerator.print(message, flush=True)
        self.warnings += [line[len("warning: ") :] for line in message.splitlines() if line.startswith("warning: ")]
        if self.path is not None and self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8", errors=ESCAPE) as handle:
                for line in message.splitlines():
                    handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
