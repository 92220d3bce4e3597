"""One federated local round at one site, framework-neutral (no Flower or FLARE import here).

Global weights in → this site's training for `epochs` epochs on its own training persons, with the run's
`TrainConfig` (backbone, person model, image size, augmentation, precision, cache, batch size, Accelerate over
the site's own processes) and carotid's own `Trainer` → `RoundResult` out: the new weights, the number of
training persons and frames, and aggregate metrics. Nothing else leaves: no person ID, path or per-person row.
The site's own files (split, data report, train.log, each round's metrics.csv) stay in its run folder
(`carotid.training.site`).

BatchNorm running statistics are weights like any other here: they go out with the parameters and come back
averaged (FedAvg), unless `keep_local="norm"` (FedBN) keeps every norm layer's parameters and statistics at
the site, in its run folder, and puts them back over the global weights at the next round.

A framework adapter is a few lines. Under NVIDIA FLARE's Client API, for example::

    flare.init()
    while flare.is_running():
        incoming = flare.receive()
        result = local_round(accelerator, cfg, run_name, incoming.params, epochs=2)
        flare.send(FLModel(params=result.weights, metrics=result.metrics,
                           meta={"NUM_STEPS_CURRENT_ROUND": result.train_persons}))

`evaluate_global` scores the aggregated weights on the site's validation persons (what picks the best round).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from carotid.core.files import atomic_torch_save, safe_torch_load
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog, StopSignal
from carotid.data.manifest import DataManifest
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model
from carotid.training.fit import DISTRIBUTION, choose_monitor, run_datasets
from carotid.training.site import open_site
from carotid.training.trainer import Trainer

KEEP_LOCAL = (None, "norm")  # what may stay at a site: nothing (FedAvg, FedProx) or the norm layers (FedBN)
LOCAL_STATE = "local_norm.pth"  # FedBN: this site's norm layers, kept between rounds
# Norm layers whose parameters and running statistics FedBN keeps local (timm's BatchNormAct2d and LayerNorm2d
# subclass these).
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
Weights = Mapping[str, "torch.Tensor | np.ndarray"]


@dataclass
class RoundResult:
    """What one local round sends back to the coordinator."""

    weights: dict[str, torch.Tensor]  # the full state dict (fp32, CPU), less the layers kept local
    train_persons: int  # FedAvg's weight
    train_frames: int
    metrics: dict[str, float | int | None]  # train_loss, val_person_auc, val_loss of the locally trained weights
    class_persons: list[int] = field(default_factory=list)  # training persons per class, in class_names order


def norm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every norm layer's parameters and buffers (running mean/var, batches tracked)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            prefix = f"{name}." if name else ""
            keys |= {prefix + k for k in module.state_dict()}
    return keys


def local_keys(model: nn.Module, keep_local: str | None) -> set[str]:
    if keep_local not in KEEP_LOCAL:
        raise ValueError(f"keep_local must be one of {KEEP_LOCAL}, not {keep_local!r}")
    return norm_keys(model) if keep_local == "norm" else set()


def load_global(model: nn.Module, weights: Weights, kept: Mapping[str, torch.Tensor]) -> None:
    """The global weights, with this site's kept layers over them; every key of the model must be given by one
    of the two (a missing key is an error, never a silently untrained layer)."""
    own = model.state_dict()
    merged = dict(weights) | dict(kept)
    missing = sorted(set(own) - set(merged))
    unexpected = sorted(set(merged) - set(own))
    if missing or unexpected:
        raise ValueError(f"the global weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # Averaged integer buffers (num_batches_tracked) arrive as floats: round them back to the model's type.
    model.load_state_dict(
        {
            k: _as_tensor(merged[k]).round().to(v.dtype)
            if not v.is_floating_point()
            else _as_tensor(merged[k]).to(v.dtype)
            for k, v in own.items()
        }
    )


def _as_tensor(value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))


def plain_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU fp32-or-integer contiguous tensors under the plain module's names (no DDP or compile prefix)."""
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.").replace("_orig_mod.", "")
        out[key] = value.detach().to("cpu").contiguous().clone()
    return out


# ---------------------------------------------------------------------------------------------
# The round
# ---------------------------------------------------------------------------------------------


def local_round(
    accelerator: Accelerator,
    cfg: TrainConfig,
    run_name: str,
    global_weights: Weights,
    *,
    epochs: int,
    round_number: int = 1,
    proximal_mu: float = 0.0,
    keep_local: str | None = None,
) -> RoundResult:
    """Train the global weights for `epochs` epochs on this site's training persons; collective under DDP.

    `cfg` is the site's TrainConfig (`carotid.training.site.site_options`): its output_dir is the site's own
    folder, `run_name` names the federated run's folder in it (made with the site's split at the first call).
    `proximal_mu` > 0 adds FedProx's proximal term mu/2·‖w − w_global‖² to the loss (as its gradient
    mu·(w − w_global), added after gradient clipping, before each optimizer step). `keep_local="norm"` is FedBN.
    """
    manifest, run_dir = open_site(accelerator, cfg, run_name)
    round_dir = RunDir(run_dir).path / "rounds" / f"round_{round_number:03d}"
    kind = accelerator.distributed_type.value
    RunLog(accelerator, RunDir(run_dir).log)(
        f"round {round_number}: {epochs} local epoch(s) on {accelerator.num_processes} process(es) "
        f"({DISTRIBUTION.get(kind, kind)}), device: {accelerator.device}"
    )
    trainer, model_keys = _trainer(
        accelerator, _round_options(cfg, epochs), manifest, run_dir, round_dir, global_weights, keep_local
    )
    if proximal_mu > 0:
        _add_proximal_term(trainer, proximal_mu)
    trainer.fit(StopSignal())  # never entered: a Ctrl-C reaches the adapter, which owns the process
    weights = plain_state(trainer.tuning.state_dict(accelerator, trainer.model))
    kept = local_keys_of(weights, model_keys)
    if accelerator.is_main_process:
        if kept:
            atomic_torch_save({k: weights[k] for k in kept}, run_dir / LOCAL_STATE)
        shutil.rmtree(round_dir / "checkpoints", ignore_errors=True)  # resumable state of a finished round
        shutil.rmtree(round_dir / "models", ignore_errors=True)  # a local model: only the coordinator's counts
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    last = trainer.state["rows"][-1]
    train = manifest.splits["train"]
    class_persons = [0] * len(manifest.class_names)
    for person in train:
        class_persons[manifest.person_labels[person]] += 1
    return RoundResult(
        weights={k: v for k, v in weights.items() if k not in kept},
        train_persons=len(train),
        train_frames=sum(len(manifest.frames[p]) for p in train),
        metrics={
            "train_loss": last.get("train_loss"),
            "val_person_auc": last.get("val_person_auc"),
            "val_loss": last.get("val_loss"),
            "val_persons": len(manifest.splits["val"]),
        },
        class_persons=class_persons,
    )


def evaluate_global(
    accelerator: Accelerator, cfg: TrainConfig, run_name: str, global_weights: Weights, *, keep_local: str | None = None
) -> dict[str, float | int | None]:
    """The global weights (with this site's kept norm layers under FedBN) scored on the site's validation
    persons: {val_persons, val_person_auc, val_loss, ...the other val_* numbers}. Collective under DDP."""
    manifest, run_dir = open_site(accelerator, cfg, run_name)
    round_dir = RunDir(run_dir).path / "rounds" / "evaluate"
    trainer, _ = _trainer(accelerator, _round_options(cfg, 1), manifest, run_dir, round_dir, global_weights, keep_local)
    row, _ = trainer.validate()
    accelerator.free_memory()
    if accelerator.is_main_process:
        shutil.rmtree(round_dir, ignore_errors=True)
    return {"val_persons": len(manifest.splits["val"])} | row


def local_keys_of(weights: Mapping[str, torch.Tensor], keys: set[str]) -> set[str]:
    return {k for k in weights if k in keys}


def _round_options(cfg: TrainConfig, epochs: int) -> TrainConfig:
    # A round is a few epochs of one long training: no tracker, no early stop, no mid-epoch checkpoint.
    return dataclasses.replace(
        cfg, epochs=epochs, report_to=None, early_stopping_patience=0, checkpoint_every_steps=0, test=False
    )


def _trainer(accelerator, cfg, manifest: DataManifest, run_dir: Path, round_dir: Path, weights, keep_local):
    """The run's Trainer on the global weights (and this site's kept layers), writing into round_dir."""
    model, _ = build_run_model(cfg, manifest.class_names)
    keys = local_keys(model, keep_local)
    kept_file = run_dir / LOCAL_STATE
    kept = safe_torch_load(kept_file, "the site's local layers") if keys and kept_file.is_file() else {}
    load_global(model, {k: v for k, v in weights.items() if k not in kept}, kept)
    if accelerator.is_main_process:
        RunDir(round_dir).models.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    monitor, _ = choose_monitor(cfg, manifest)
    positive = manifest.positive_class
    positive_index = manifest.class_names.index(positive) if positive in manifest.class_names else -1
    positive_index %= len(manifest.class_names)
    datasets = run_datasets(accelerator, cfg, manifest)
    log = RunLog(accelerator, RunDir(run_dir).log)
    return Trainer(accelerator, cfg, manifest, model, datasets, round_dir, log, monitor, positive_index), keys


def _add_proximal_term(trainer: Trainer, mu: float) -> None:
    """FedProx: before each optimizer step, add mu·(w − w_global) to every trainable weight's gradient."""
    anchors = [(p, p.detach().clone()) for p in trainer.model.parameters() if p.requires_grad]

    def pull_towards_global(optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for param, anchor in anchors:
                if param.grad is not None:
                    param.grad.add_(param.detach() - anchor, alpha=mu)

    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # Accelerate's wrapper holds the torch one
    inner.register_step_pre_hook(pull_towards_global)
