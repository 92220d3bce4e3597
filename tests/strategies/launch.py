"""Test-only: run `carotid.train` under DeepSpeed or FSDP on the CPU (2 processes over gloo).

    accelerate launch --config_file configs/accelerate/deepspeed_zero2.yaml --num_processes 2 \
        --mixed_precision no -m tests.strategies.launch [wrapper options] <carotid.train arguments>

Accelerate promotes a launch to DeepSpeed or FSDP only on an accelerator (state.py: its DeepSpeed branch
needs `not cpu`, its FSDP branch a MULTI_GPU-type state), so without a GPU these configs train as plain
MULTI_CPU DDP. `promote_on_cpu` does what those branches do on a GPU, right after Accelerate built the
state on the CPU: `distributed_type` DEEPSPEED/FSDP on AcceleratorState and PartialState, and the plugin
the Accelerator built from the launch config's environment. The device stays the CPU; DeepSpeed talks
over the gloo process group (there is no oneCCL here). Nothing of this lives in the package: carotid
itself warns that such a launch came out as plain DDP.

Wrapper options (before the carotid arguments):
  --probe-finiteness            after the run, check carotid's weights_finite on the trained model, then
                                with one weight of rank 1's part set to NaN; prints one line per rank
  --slow-rank-after-load-state S  rank 1 returns from Accelerator.load_state S seconds late
"""

from __future__ import annotations

import os
import sys
import time

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType


def _asked(variable: str) -> bool:
    return os.environ.get(variable, "false").lower() == "true"


def promote_on_cpu() -> None:
    """Patch AcceleratorState so that the state carotid's Accelerator builds comes out promoted."""
    if _asked("ACCELERATE_USE_DEEPSPEED"):
        import deepspeed.comm.torch

        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (for inference) when it first
        # communicates: minutes of g++ on a CI runner, and training does not use it.
        deepspeed.comm.torch.build_shm_op = lambda: None
    original = AcceleratorState.__init__

    def promoted(self, mixed_precision=None, cpu=False, *args, deepspeed_plugin=None, fsdp_plugin=None, **kwargs):
        fresh = not AcceleratorState._shared_state
        original(
            self, mixed_precision, cpu, *args, deepspeed_plugin=deepspeed_plugin, fsdp_plugin=fsdp_plugin, **kwargs
        )
        if not fresh or self.distributed_type != DistributedType.MULTI_CPU:
            return
        # The GPU branches of AcceleratorState.__init__ ("ACCELERATE_USE_DEEPSPEED" / "ACCELERATE_USE_FSDP").
        if deepspeed_plugin is not None:
            self.distributed_type = DistributedType.DEEPSPEED
            deepspeed_plugin.set_mixed_precision(self._mixed_precision)
            deepspeed_plugin.select(_from_accelerator_state=True)
            self.deepspeed_plugins = deepspeed_plugin
            self._mixed_precision = "no"  # DeepSpeed does mixed precision itself, from its config
        elif fsdp_plugin is not None:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
        PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = promoted


def slow_rank_after_load_state(seconds: float) -> None:
    """Rank 1 finishes loading a checkpoint late (a slower disk): what it reads next may have changed."""
    original = Accelerator.load_state

    def load_state(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if self.process_index == 1:
            time.sleep(seconds)
        return result

    Accelerator.load_state = load_state


def probe_finiteness_after_the_run() -> None:
    """Once the run has finished (models written, test split evaluated), check carotid's weights_finite on
    the trained, prepared model, then again with one weight of rank 1's part set to NaN."""
    import torch

    from carotid.training.epoch import local_part, weights_finite
    from carotid.training.trainer import Trainer

    original = Trainer.finish

    def finish(self) -> None:
        original(self)
        before = weights_finite(self.model, self.accelerator)
        if self.accelerator.process_index == 1:
            with torch.no_grad():
                part = next(t for t in map(local_part, self.model.parameters()) if t.numel())
                part.view(-1)[0] = float("nan")
        after = weights_finite(self.model, self.accelerator)
        print(
            f"finiteness probe: rank {self.accelerator.process_index} ({self.accelerator.distributed_type.value}): "
            f"finite before {before}, after NaN on rank 1 {after}",
            flush=True,
        )

    Trainer.finish = finish


def main(argv: list[str]) -> int:
    while argv and argv[0] in ("--probe-finiteness", "--slow-rank-after-load-state"):
        flag = argv.pop(0)
        if flag == "--probe-finiteness":
            probe_finiteness_after_the_run()
        else:
            slow_rank_after_load_state(float(argv.pop(0)))
    if _asked("ACCELERATE_USE_DEEPSPEED") or _asked("ACCELERATE_USE_FSDP"):
        promote_on_cpu()
    from carotid.train import main as train_main

    return train_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
