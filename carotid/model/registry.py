"""A registry of architectures: torchvision models plus one small CNN for fast CPU runs.

Every model is built with its ImageNet shape first (so torchvision weights load strictly), then its
first convolution is adapted to `in_channels` and its last linear layer replaced by a `num_classes` head.
"""

from __future__ import annotations

import torch
from torch import nn

from carotid.core.errors import UserError
from carotid.model import ARCHITECTURES

PREFIXES = ("module.", "_orig_mod.")

# Grad-CAM's layer per architecture: the last convolutional stage, whose maps the head pools (its spatial
# detail is what a heat map can show). Every name of ARCHITECTURES has one (tests check each).
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


class SmallCNN(nn.Module):
    """Four strided conv blocks and a linear head: trains on a laptop CPU in minutes.

    GroupNorm instead of BatchNorm: statistics do not depend on the batch, which suits the small
    per-device batches of ultrasound work and makes gradient accumulation exactly equal to a big batch."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for out in (width, width * 2, width * 4, width * 8):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.GroupNorm(8, out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes from every key."""
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def _first_conv_and_last_linear(model: nn.Module) -> tuple[str, str]:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return convs[0], linears[-1]


def _adapt_first_conv(model: nn.Module, name: str, in_channels: int, pretrained: bool) -> None:
    conv: nn.Conv2d = model.get_submodule(name)
    if conv.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )
    if not pretrained:
        model.set_submodule(name, new)  # fresh default initialisation
        return
    with torch.no_grad():
        if in_channels == 1:
            # Summing the RGB filters keeps a pretrained stem's response to a gray image (R = G = B).
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            new.weight.copy_(conv.weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def _replace_head(model: nn.Module, name: str, num_classes: int) -> None:
    head: nn.Linear = model.get_submodule(name)
    model.set_submodule(name, nn.Linear(head.in_features, num_classes))


def check_fits(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """A UserError naming the first difference when `state_dict` does not have `model`'s keys and shapes."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        raise UserError(
            f"{source} does not fit architecture '{arch}': {len(missing)} weight(s) missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})",
            "pass the --model the weights were trained with",
        )
    wrong = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in own.items() if state_dict[k].shape != v.shape]
    if wrong:
        key, theirs, ours = wrong[0]
        raise UserError(
            f"{source} does not fit this model: '{key}' has shape {theirs} in the file but {ours} here "
            f"({len(wrong)} tensor(s) differ: class count or input channels)",
            "match --in-channels and the label classes of the run that made the file",
        )


def load_matching(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """load_state_dict(strict) with an error that says what differs."""
    check_fits(model, state_dict, source, arch)
    model.load_state_dict(state_dict)


def target_layer(model: nn.Module, arch: str) -> nn.Module:
    """The module whose activations and gradients Grad-CAM weighs, for a model built by `build_model` (or a
    person model, whose frame encoder is `model.encoder`)."""
    if arch not in TARGET_LAYERS:
        raise UserError(f"no Grad-CAM layer is known for '{arch}'", f"use one of {', '.join(TARGET_LAYERS)}")
    prefix = "encoder." if hasattr(model, "encoder") else ""
    return model.get_submodule(prefix + TARGET_LAYERS[arch])


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 1,
    pretrained: bool = False,
    pretrained_state: dict[str, torch.Tensor] | None = None,
    source: str = "pretrained weights",
) -> nn.Module:
    """A fresh model; ImageNet weights from a state dict (read from a local file) or (only when asked) a download."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown model '{arch}'", f"choose one of {', '.join(ARCHITECTURES)}")
    if arch == "small_cnn":
        return SmallCNN(num_classes=num_classes, in_channels=in_channels)
    import torchvision  # ~2 s to import (it loads torch._dynamo): only for the architectures that need it

    if pretrained:
        try:
            model = torchvision.models.get_model(arch, weights="DEFAULT")
        except Exception as err:  # noqa: BLE001 - URLError, OSError, hash mismatch…
            raise UserError(
                f"could not download ImageNet weights for {arch} ({type(err).__name__}: {err})",
                "offline? download the torchvision .pth elsewhere and pass --pretrained-weights FILE",
            ) from None
    else:
        model = torchvision.models.get_model(arch, weights=None)
    if pretrained_state is not None:
        load_matching(model, pretrained_state, source, arch)
    conv, head = _first_conv_and_last_linear(model)
    _adapt_first_conv(model, conv, in_channels, pretrained=pretrained or pretrained_state is not None)
    _replace_head(model, head, num_classes)
    return model


def build_encoder(
    arch: str,
    in_channels: int = 1,
    pretrained: bool = False,
    pretrained_state: dict[str, torch.Tensor] | None = None,
    source: str = "pretrained weights",
) -> tuple[nn.Module, int]:
    """(the architecture without its classifier head, its embedding size): one embedding per frame.

    Built as `build_model` builds it (pretrained weights and stem adaptation included), then the last linear
    layer becomes an identity, so the module returns what that layer read: `(N, D)` for `(N, C, S, S)`."""
    model = build_model(arch, 2, in_channels, pretrained, pretrained_state, source)
    head = _first_conv_and_last_linear(model)[1]
    dim = model.get_submodule(head).in_features
    model.set_submodule(head, nn.Identity())
    return model, dim
