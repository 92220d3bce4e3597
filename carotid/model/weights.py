"""Weights from a file: the usual checkpoint shapes read safely, and loaded into a fresh model with a report.

`--pretrained-weights FILE` (offline starting weights) accepts a timm or torchvision state dict (.safetensors,
.pth, .bin), a Lightning/DeepSpeed-style checkpoint (the dict under 'state_dict', 'model' or 'module'), or a
carotid model file. Keys match after the wrappers' prefixes are stripped; a stem of another channel count is
adapted as timm adapts `in_chans`; a head of another class count is skipped. A file of which less than half of
the backbone fits is refused. `--load-model FILE` (continue from a carotid model) needs an exact fit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from carotid.core.errors import UserError
from carotid.core.files import read_safetensors, safe_torch_load
from carotid.core.text import plural
from carotid.model import canonical_arch, split_arch
from carotid.model.file import ModelFile, is_model_file
from carotid.model.person import PersonModel
from carotid.model.registry import adapt_stem, load_matching, parts, strip_prefixes, timm_has

# Where checkpoints of other tools keep their state dict: Lightning and timm 'state_dict', many 'model',
# DeepSpeed 'module'.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Prefixes a training wrapper puts before every key; stripped only when every key has it and the model has none.
OPTIONAL_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "encoder.")


def read_weights(path: str | Path, what: str) -> tuple[ModelFile | None, dict[str, torch.Tensor], str]:
    """(the ModelFile if `path` is one, its state dict, what the file is in words)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}", "check the path")
    if path.suffix == ".safetensors":
        data, kind = read_safetensors(path, what), "a .safetensors state dict"
    else:
        data, kind = safe_torch_load(path, what), "a state dict"
    if is_model_file(data):
        model_file = ModelFile.from_dict(data, path)
        return model_file, model_file.state_dict, f"a carotid model file ({model_file.arch}, epoch {model_file.epoch})"
    if isinstance(data, dict):
        for key in WRAPPER_KEYS:
            if isinstance(data.get(key), dict) and data[key]:
                data, kind = data[key], f"a checkpoint's '{key}'"
                break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise UserError(
            f"{what} {path} holds no state dict of tensors",
            "pass a file saved with torch.save(model.state_dict()) or safetensors' save_file",
        )
    return None, strip_prefixes(data), kind


def strip_wrapper_prefixes(state: dict[str, torch.Tensor], own: dict) -> dict[str, torch.Tensor]:
    """Drop a prefix that every key of `state` has and no key of the model (`own`) has, repeatedly."""
    changed = True
    while changed:
        changed = False
        for prefix in OPTIONAL_PREFIXES:
            if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
                state, changed = {k[len(prefix) :]: v for k, v in state.items()}, True
    return state


def _timm_filter(model: nn.Module, arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own conversion of a checkpoint for this model (original-format keys, position embeddings of
    another image size, patch size), where the architecture defines one."""
    if split_arch(arch)[0] != "timm":
        return state
    convert = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if convert is None:
        return state
    try:
        return convert(dict(state), model)
    except Exception:  # noqa: BLE001 - a file in another layout: matched key by key below instead
        return state


def _weights_fix(arch: str) -> str:
    """A bare name timm also has means torchvision's: weights saved from timm's model need timm/NAME."""
    library, bare = split_arch(arch)
    fix = "pass weights of the same architecture as --model, or the --model they were saved from"
    if library == "torchvision" and timm_has(bare):
        fix += f" (weights saved from timm's {bare}: --model timm/{bare}; a bare {bare} means torchvision's)"
    return fix


def load_pretrained(model: nn.Module, arch: str, path: str | Path) -> list[str]:
    """Load `path` into `model` (a classifier, encoder or PersonModel of `arch`) as starting weights; the report.

    Tensors of the same name and shape load; the stem of another channel count is adapted; a head of another
    class count is skipped. Refused (UserError) when less than half of the backbone's tensors would load."""
    _, state, kind = read_weights(path, "--pretrained-weights file")
    if isinstance(model, PersonModel):  # the file's backbone is the frame encoder's; pooling and head start fresh
        model = model.encoder
    own = model.state_dict()
    state = _timm_filter(model, arch, strip_wrapper_prefixes(state, own))
    where = parts(model, arch)
    take: dict[str, torch.Tensor] = {}
    adapted, head, unused, mismatched = [], [], [], []
    for key, value in state.items():
        target = own.get(key)
        if target is None:
            (head if where.is_head(key) else unused).append(key)
        elif value.shape == target.shape:
            take[key] = value
        elif where.is_stem(key) and value.ndim == 4 and value.shape[0] == target.shape[0]:
            take[key] = adapt_stem(value.float(), target.shape[1]).to(target.dtype)
            adapted.append(f"{key} {value.shape[1]} → {target.shape[1]} input channel(s)")
        elif where.is_head(key):
            head.append(f"{key} {tuple(value.shape)}")
        else:
            mismatched.append(f"{key} {tuple(value.shape)} (here {tuple(target.shape)})")
    backbone = [k for k in own if not where.is_head(k)]
    missing = [k for k in backbone if k not in take]
    if len(backbone) - len(missing) < len(backbone) / 2:
        raise UserError(
            f"--pretrained-weights {path} fits only {len(backbone) - len(missing)} of the {len(backbone)} backbone "
            f"tensors of {canonical_arch(arch)} (e.g. this model has {missing[:3]}, the file "
            f"{(mismatched + [k for k in unused if state[k].ndim == 4] + unused)[:3]})",
            _weights_fix(arch),
        )
    model.load_state_dict(take, strict=False)
    lines = [
        f"pretrained weights: {plural(len(take), 'tensor')} loaded from {path} ({kind}): "
        f"{len(backbone) - len(missing)} of {len(backbone)} backbone tensors"
    ]
    if adapted:
        lines.append(f"  stem adapted as timm adapts in_chans (RGB filters summed for gray): {', '.join(adapted)}")
    if head:
        lines.append(
            f"  skipped the file's classifier head (another class count; a new head is trained): {', '.join(head)}"
        )
    if missing:
        lines.append(
            f"warning: {plural(len(missing), 'backbone tensor')} not in the file keep their random start, "
            f"e.g. {', '.join(missing[:3])}"
        )
    if unused or mismatched:
        lines.append(
            f"warning: {plural(len(unused) + len(mismatched), 'tensor')} of the file not used, "
            f"e.g. {', '.join((mismatched + unused)[:3])}"
        )
    return lines


def load_initial_weights(
    model: nn.Module, path: str | Path, arch: str, class_names: list[str], person_model: str = "frames"
) -> None:
    """--load-model: start from a carotid model file (checked against this run) or a state dict that fits exactly."""
    model_file, state, _ = read_weights(path, "--load-model file")
    if model_file is None:
        try:
            load_matching(model, state, f"--load-model {path}", arch)
        except UserError as err:
            raise UserError(
                f"--load-model {path} is a plain state dict, not a carotid model file, and it "
                f"{err.what.split(': ', 1)[-1]}",
                f"to start from another model's weights (ImageNet, a colleague's), pass --pretrained-weights {path}",
            ) from None
        return
    if model_file.person_model != person_model:
        raise UserError(
            f"--load-model {path} is a --person-model {model_file.person_model} model, this run is {person_model}",
            f"pass --person-model {model_file.person_model}",
        )
    if canonical_arch(model_file.arch) != canonical_arch(arch):
        raise UserError(
            f"--load-model {path} is a '{model_file.arch}' model, this run is '{arch}'",
            f"pass --model {model_file.arch}, or --pretrained-weights {path} to start another architecture from it",
        )
    if model_file.class_names != list(class_names):
        raise UserError(
            f"--load-model {path} has classes {model_file.class_names}, this run's labels are {class_names}",
            f"use a model trained on the same classes, or --pretrained-weights {path} (its head is then skipped)",
        )
    load_matching(model, state, f"--load-model {path}", arch)
