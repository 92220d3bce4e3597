"""Grad-CAM's layer per architecture: which module's activations and gradients a heat map weighs.

A CNN's last feature stage (its spatial detail is what a heat map can show): by name for the built-in
architectures, from timm's `feature_info` for timm's. A vision transformer's last block's first norm, with its
patch tokens reshaped to a (N, C, H, W) grid. The layer's name is recorded in every montage's title.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from carotid.core.errors import UserError
from carotid.model import canonical_arch, split_arch

# Grad-CAM's layer per built-in architecture: the last convolutional stage, whose maps the head pools (its
# spatial detail is what a heat map can show). A timm model's is found from its feature_info (`cam_layer`).
TARGET_LAYERS = {
    "small_cnn": "features",
    "resnet18": "layer4",
    "resnet34": "layer4",
    "resnet50": "layer4",
    "densenet121": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
    "mobilenet_v3_small": "features",
}


def target_layer(model: nn.Module, arch: str) -> tuple[str, nn.Module, Callable | None]:
    """(name, module, reshape_transform) that Grad-CAM hooks in a model built by `build_model` (or a person
    model, whose frame encoder is `model.encoder`).

    A CNN's last feature stage; a vision transformer's last block's first norm (its patch tokens still carry the
    gradient of the class token there), with a reshape of the token grid to (N, C, H, W)."""
    if type(model).__name__ == "PersonModel":  # carotid.model.person imports this module: no isinstance here
        name, module, reshape = target_layer(model.encoder, arch)
        return f"encoder.{name}", module, reshape
    library, _ = split_arch(arch)
    if library != "timm":
        name = TARGET_LAYERS.get(canonical_arch(arch))
        if name is None:
            raise UserError(f"no Grad-CAM layer is known for '{arch}'", f"use one of {', '.join(TARGET_LAYERS)}")
        return name, model.get_submodule(name), None
    blocks = getattr(model, "blocks", None)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if blocks is not None and grid is not None and hasattr(blocks[-1], "norm1"):
        name = f"blocks.{len(blocks) - 1}.norm1"
        return name, model.get_submodule(name), TokenGrid(int(getattr(model, "num_prefix_tokens", 1)), tuple(grid))
    info = getattr(model, "feature_info", None)
    if not info:
        raise UserError(
            f"no Grad-CAM layer is known for '{arch}' (it has no feature_info)", "evaluate without heat maps"
        )
    name = info[-1]["module"]
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    return name, model.get_submodule(name), (lambda x: x.permute(0, 3, 1, 2)) if nhwc else None


class TokenGrid:
    """Grad-CAM's reshape of a ViT's tokens (N, prefix + H*W, C) to maps (N, C, H, W), the prefix tokens dropped."""

    def __init__(self, prefix_tokens: int, grid: tuple[int, int]):
        self.prefix_tokens, self.grid = prefix_tokens, grid

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix_tokens :, :]
        return patches.reshape(patches.shape[0], *self.grid, patches.shape[-1]).permute(0, 3, 1, 2)
