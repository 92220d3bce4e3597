"""Small-cohort fine-tuning: a frozen backbone first (or a linear probe), layer-wise LR decay, the weights' EMA.

With a few hundred persons the starting weights matter most, and these are the usual ways to spend them well:
- `--freeze-backbone-epochs N`: the head trains alone for N epochs (the backbone's LR is 0 and its BatchNorm
  layers use their running statistics, so its tensors do not move at all), then everything trains. N ≥ --epochs
  is a linear probe: the backbone's parameters do not even take gradients.
- `--layer-decay D`: each of a timm model's layer groups (`group_matcher`) gets D times the LR of the group
  above it, the head the full LR.
- `--ema`: timm's ModelEmaV3 follows the weights after every optimizer step; validation scores the EMA, and
  best_model.pth/final_model.pth hold it (checkpoints keep both, so a resumed run continues both).
The Trainer calls `FineTuning` at five points: parameter groups, after prepare, each epoch's start, each
optimizer step, and for the module that validation and the model files use.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn

from carotid.core.errors import UserError
from carotid.core.runtime import RunLog
from carotid.model import split_arch
from carotid.model.person import PersonModel
from carotid.model.registry import parts
from carotid.training.config import TrainConfig


def head_names(model: nn.Module, arch: str) -> set[str]:
    """Names of the parameters that are not the pretrained backbone: the classifier head (a person model's
    attention pooling and head)."""
    if isinstance(model, PersonModel):
        return {n for n, _ in model.named_parameters() if not n.startswith("encoder.")}
    where = parts(model, arch)
    return {n for n, _ in model.named_parameters() if where.is_head(n)}


def layer_ids(model: nn.Module, arch: str, head: set[str]) -> dict[str, int]:
    """Parameter name → layer group (0 = stem), from timm's group_matcher; the head is in the top group."""
    from timm.models import group_parameters

    backbone = model.encoder if isinstance(model, PersonModel) else model
    prefix = "encoder." if isinstance(model, PersonModel) else ""
    if not hasattr(backbone, "group_matcher"):
        raise UserError(
            f"--layer-decay needs layer groups, which timm models define; {arch} ({split_arch(arch)[0]}) has none",
            f"use timm's model (--model timm/{split_arch(arch)[1]}) or drop --layer-decay",
        )
    ids = {
        prefix + n: i for n, i in group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True).items()
    }
    top = max(ids.values()) + 1
    return {n: (top if n in head else ids.get(n, top)) for n, _ in model.named_parameters()}


class _FrozenNorm:
    """A forward pre-hook that keeps a BatchNorm layer in eval mode (running statistics, no updates) while set."""

    def __init__(self):
        self.active = False

    def __call__(self, module: nn.Module, args) -> None:
        if self.active and module.training:
            module.eval()


class FineTuning:
    def __init__(self, cfg: TrainConfig, model: nn.Module, log: RunLog):
        """Before the model is compiled or prepared: its parameters, groups and norm hooks are set here."""
        self.cfg, self.model, self.log = cfg, model, log
        self.head = head_names(model, cfg.model)
        self.linear_probe = cfg.freeze_backbone_epochs >= cfg.epochs
        self.freeze = _FrozenNorm()
        self.ema = None
        if cfg.freeze_backbone_epochs:
            if not self.head:
                raise UserError(f"no classifier head found in {cfg.model}", "drop --freeze-backbone-epochs")
            for name, module in model.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not self._in_head(name):
                    module.register_forward_pre_hook(self.freeze)
            if self.linear_probe:
                for name, param in model.named_parameters():
                    param.requires_grad_(name in self.head)
        self.layers = layer_ids(model, cfg.model, self.head) if cfg.layer_decay else None

    def _in_head(self, module_name: str) -> bool:
        return any(n.startswith(module_name + ".") for n in self.head)

    def param_groups(self) -> list[dict] | None:
        """AdamW groups: decay / no decay (1-D tensors), × backbone / head, × layer (with its LR scale); None
        (make_optimizer's two groups) when neither a frozen backbone nor layer decay needs them."""
        if not (self.cfg.freeze_backbone_epochs or self.layers):
            return None
        groups: dict[tuple, dict] = {}
        top = max(self.layers.values()) if self.layers else 0
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            layer = self.layers[name] if self.layers else 0
            decay = param.ndim > 1
            key = (layer, decay, name in self.head)
            scale = self.cfg.layer_decay ** (top - layer) if self.layers else 1.0
            group = groups.setdefault(
                key,
                {
                    "params": [],
                    "weight_decay": self.cfg.weight_decay if decay else 0.0,
                    "lr": self.cfg.lr * scale,
                    "backbone": name not in self.head,
                },
            )
            group["params"].append(param)
        return list(groups.values())

    def frozen_steps(self, groups: list[dict], steps_per_epoch: int) -> list[int]:
        """Per group: optimizer steps during which its LR is 0 (the backbone's, while it is frozen)."""
        steps = 0 if self.linear_probe else self.cfg.freeze_backbone_epochs * steps_per_epoch
        return [steps if g.get("backbone") else 0 for g in groups]

    def prepared(self, accelerator: Accelerator) -> None:
        """After accelerator.prepare: the EMA copy, on the device (its weights are a checkpointed state)."""
        if not self.cfg.ema:
            return
        if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            raise UserError(
                f"--ema is not supported under {accelerator.distributed_type.value} (sharded weights)",
                "use DDP (plain `accelerate launch`) or drop --ema",
            )
        from timm.utils import ModelEmaV3

        self.ema = ModelEmaV3(self.model, decay=self.cfg.ema_decay, use_warmup=True, device=accelerator.device)
        self.ema.requires_grad_(False)
        accelerator.register_for_checkpointing(self.ema)

    def describe(self) -> list[str]:
        cfg, lines = self.cfg, []
        if self.linear_probe:
            lines.append(
                f"fine-tuning: linear probe: only the head trains ({len(self.head)} tensors); the backbone's weights "
                "and BatchNorm statistics stay as loaded"
            )
        elif cfg.freeze_backbone_epochs:
            lines.append(
                f"fine-tuning: the head trains alone for {cfg.freeze_backbone_epochs} epoch(s) (backbone LR 0, its "
                "BatchNorm statistics frozen), then every layer"
            )
        if self.layers:
            top = max(self.layers.values())
            lines.append(
                f"fine-tuning: layer-wise LR decay {cfg.layer_decay} over {top + 1} layer groups "
                f"(stem LR x {cfg.layer_decay**top:.3g}, head x 1)"
            )
        if cfg.ema:
            lines.append(
                f"fine-tuning: EMA of the weights (decay {cfg.ema_decay}, warmed up): validation scores it and the "
                "model files hold it"
            )
        if cfg.drop_path:
            lines.append(f"fine-tuning: drop-path rate {cfg.drop_path}")
        return lines

    def start_epoch(self, epoch: int) -> None:
        self.freeze.active = epoch < self.cfg.freeze_backbone_epochs

    def stepped(self, step: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=step)

    def evaluated(self, model: nn.Module) -> nn.Module:
        """The module validation scores and the model files hold: the EMA if kept, else the trained model."""
        return self.ema.module if self.ema is not None else model

    def state_dict(self, accelerator: Accelerator, model: nn.Module) -> dict[str, torch.Tensor]:
        """Collective: the weights a model file holds (consolidated from every rank when sharded)."""
        if self.ema is not None:
            return self.ema.module.state_dict()
        if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            return accelerator.get_state_dict(model)  # gathers the shards
        # Accelerate's unwrap imports DeepSpeed whenever it is installed (2-3 s at the first epoch's end on a
        # CPU, docs/PERFORMANCE.md); a plain or DDP model only needs its wrappers taken off.
        return plain_module(model).state_dict()


def plain_module(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel and torch.compile wrappers (what Accelerate's unwrap_model returns
    for a model that is neither DeepSpeed's nor FSDP's)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
