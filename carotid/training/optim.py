"""AdamW and the learning-rate schedules; schedules count optimizer steps, not micro-batches."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau


def make_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, groups: list[dict] | None = None
) -> torch.optim.AdamW:
    """AdamW; biases and normalisation weights (1-D tensors) get no weight decay. `groups` (from
    carotid.training.finetune) replace the default two, each with its own LR."""
    if groups is not None:
        return torch.optim.AdamW(groups, lr=lr)
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_factor(
    step: int, *, kind: str, warmup_steps: int, total_steps: int, steps_per_epoch: int, step_epochs: int, gamma: float
) -> float:
    """Multiplier of the peak LR after `step` optimizer steps: linear warm-up, then the schedule."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "cosine":
        span = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, span) / span))
    if kind == "step":
        return gamma ** (step // (step_epochs * steps_per_epoch))
    return 1.0


def make_scheduler(optimizer, cfg, steps_per_epoch: int, monitor: str, frozen_steps: list[int] | None = None):
    """LambdaLR for cosine/step/none (stepped per optimizer step); ReduceLROnPlateau per epoch.

    `optimizer` is the torch optimizer (not Accelerate's wrapper): schedulers check its type. `frozen_steps`
    (one per parameter group) holds a group's LR at 0 for that many first steps (a frozen backbone)."""
    if cfg.scheduler == "plateau":
        mode = "min" if monitor.endswith("loss") else "max"
        return ReduceLROnPlateau(optimizer, mode=mode, factor=cfg.lr_gamma, patience=2)
    total = steps_per_epoch * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), max(total - 1, 0))
    frozen = frozen_steps or [0] * len(optimizer.param_groups)
    return LambdaLR(
        optimizer,
        [_Factor(cfg.scheduler, warmup, total, steps_per_epoch, cfg.lr_step_epochs, cfg.lr_gamma, f) for f in frozen],
    )


class _Factor:
    """A picklable lr_lambda (LambdaLR saves callable objects' __dict__ in its state)."""

    def __init__(
        self, kind: str, warmup: int, total: int, steps_per_epoch: int, step_epochs: int, gamma: float, frozen: int = 0
    ):
        self.kind, self.warmup, self.total = kind, warmup, total
        self.steps_per_epoch, self.step_epochs, self.gamma = steps_per_epoch, step_epochs, gamma
        self.frozen = frozen

    def __call__(self, step: int) -> float:
        if step < getattr(self, "frozen", 0):  # getattr: a checkpoint of an older version restores no 'frozen'
            return 0.0
        return lr_factor(
            step,
            kind=self.kind,
            warmup_steps=self.warmup,
            total_steps=self.total,
            steps_per_epoch=self.steps_per_epoch,
            step_epochs=self.step_epochs,
            gamma=self.gamma,
        )


def stretch_schedule(scheduler, total_steps: int) -> int | None:
    """Give a restored schedule a new length (a resumed run with more or fewer --epochs).

    LambdaLR restores its lr_lambda's attributes from the checkpoint, so without this a run resumed
    with more epochs would continue at the end of the old cosine, i.e. at LR ~0. Returns the old length."""
    factors = getattr(scheduler, "lr_lambdas", [])
    if not factors or not isinstance(factors[0], _Factor) or factors[0].total == total_steps:
        return None
    old = factors[0].total
    for factor in factors:
        factor.total = total_steps
    return old
