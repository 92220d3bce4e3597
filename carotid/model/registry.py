"""A registry of architectures: carotid's small CNN, torchvision's models and every timm model.

Which library a `--model` name means is `carotid.model.split_arch`. A torchvision model is built with its
ImageNet shape first, then its first convolution is adapted to `in_channels` and its last linear layer
replaced by a `num_classes` head (or removed, for an encoder); timm builds `in_chans` and `num_classes` itself.
Weights from a local file are loaded afterwards by `carotid.model.weights`.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

import torch
from torch import nn

from carotid.core.errors import UserError
from carotid.model import ARCHITECTURES, TORCHVISION, canonical_arch, split_arch

PREFIXES = ("module.", "_orig_mod.")


class SmallCNN(nn.Module):
    """Four strided conv blocks and a linear head: trains on a laptop CPU in minutes.

    GroupNorm instead of BatchNorm: statistics do not depend on the batch, which suits the small
    per-device batches of ultrasound work and makes gradient accumulation exactly equal to a big batch."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, width: int = 32, global_pool: str = "avg"):
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
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes) if num_classes else nn.Identity()
        self.num_features = channels

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


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def _timm():
    # timm takes ~2-5 s to import: only runs that use one of its models (or check a name) pay for it.
    import timm

    return timm


def timm_has(name: str) -> bool:
    return bool(_timm().is_model(name))


def check_arch(name: str) -> str:
    """The canonical name of a --model name, or a UserError with the closest known names."""
    library, bare = split_arch(name)
    if library == "torchvision" and bare not in TORCHVISION:
        known = list(TORCHVISION)
    elif library == "timm" and not _timm().is_model(bare):
        known = [*ARCHITECTURES, *_timm().list_models()]
    else:
        return canonical_arch(name)
    close = difflib.get_close_matches(bare, known, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see --help for how to list the names"
    raise UserError(f"unknown model '{name}'", hint)


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 1,
    pretrained: bool = False,
    *,
    image_size: int | None = None,
    drop_path: float | None = None,
    global_pool: str = "avg",
) -> nn.Module:
    """A fresh classifier; ImageNet weights only when `pretrained` (a download). Local weights: carotid.model.weights.

    `image_size` matters to timm models of a fixed input size (ViTs, Swin), `drop_path` to those with DropPath;
    `global_pool` (GLOBAL_POOLS) is how the last feature map becomes one vector."""
    check_arch(arch)
    library, bare = split_arch(arch)
    if library == "carotid":
        return SmallCNN(num_classes=num_classes, in_channels=in_channels, global_pool=global_pool)
    if library == "timm":
        return _timm_model(bare, num_classes, in_channels, pretrained, image_size, drop_path, global_pool)
    _refuse_drop_path(arch, drop_path)
    model = _torchvision_model(bare, pretrained, global_pool)
    conv, head = _first_conv_and_last_linear(model)
    _adapt_first_conv(model, conv, in_channels, pretrained=pretrained)
    head_module: nn.Linear = model.get_submodule(head)
    model.set_submodule(head, nn.Linear(head_module.in_features, num_classes))
    return model


def build_encoder(
    arch: str,
    in_channels: int = 1,
    pretrained: bool = False,
    *,
    image_size: int | None = None,
    drop_path: float | None = None,
    global_pool: str = "avg",
) -> tuple[nn.Module, int]:
    """(a frame encoder: (N, C, S, S) → (N, dim) pooled features, dim): the classifier without its last linear layer.

    Its parameter names are the classifier's, less the head's, so `carotid.model.weights` loads the same files."""
    check_arch(arch)
    library, bare = split_arch(arch)
    if library == "carotid":
        model = SmallCNN(num_classes=0, in_channels=in_channels, global_pool=global_pool)
        return model, model.num_features
    if library == "timm":
        model = _timm_model(bare, 0, in_channels, pretrained, image_size, drop_path, global_pool)
        return model, int(getattr(model, "head_hidden_size", None) or model.num_features)
    _refuse_drop_path(arch, drop_path)
    model = _torchvision_model(bare, pretrained, global_pool)
    conv, head = _first_conv_and_last_linear(model)
    _adapt_first_conv(model, conv, in_channels, pretrained=pretrained)
    dim = model.get_submodule(head).in_features
    model.set_submodule(head, nn.Identity())
    return model, dim


def _timm_model(
    name: str,
    num_classes: int,
    in_channels: int,
    pretrained: bool,
    image_size: int | None,
    drop_path: float | None,
    global_pool: str = "avg",
) -> nn.Module:
    timm = _timm()
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_channels}
    if global_pool != "avg":  # timm's own global_pool argument (its CNNs and ViTs take "max")
        kwargs["global_pool"] = global_pool
    if image_size and timm.get_pretrained_cfg(name) is not None and timm.get_pretrained_cfg(name).fixed_input_size:
        kwargs["img_size"] = image_size  # position embeddings and windows are sized for the run's frames
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as err:  # the architecture takes no drop_path_rate / img_size
        raise UserError(
            f"timm's {name} cannot be built with {', '.join(k for k in kwargs if k in str(err)) or kwargs} ({err})",
            "drop --drop-path (this architecture has no stochastic depth)" if drop_path else "pick another --model",
        ) from None
    except (AssertionError, ValueError, NotImplementedError) as err:
        if global_pool == "avg":
            raise
        raise UserError(
            f"timm's {name} has no global pooling '{global_pool}' ({type(err).__name__}: {err})",
            "use --global-pool avg or pick another --model",
        ) from None
    except Exception as err:
        if not pretrained:
            raise
        raise UserError(
            f"could not download ImageNet weights for timm/{name} ({type(err).__name__}: {err})",
            "offline? save the weights elsewhere and pass --pretrained-weights FILE (README: offline hospital)",
        ) from None
    if drop_path and not any(type(m).__name__ == "DropPath" for m in model.modules()):
        raise UserError(f"timm/{name} has no drop-path layers", "drop --drop-path for this architecture")
    return model


def _refuse_drop_path(arch: str, drop_path: float | None) -> None:
    if drop_path:
        raise UserError(
            f"--drop-path is for timm architectures; '{arch}' is built by {split_arch(arch)[0]}",
            f"use timm's model (--model timm/{split_arch(arch)[1]}) or drop --drop-path",
        )


def _torchvision_model(name: str, pretrained: bool, global_pool: str = "avg") -> nn.Module:
    import torchvision  # ~2 s to import (it loads torch._dynamo): only for the architectures that need it

    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except Exception as err:  # URLError, OSError, a hash mismatch…
        if not pretrained:
            raise
        raise UserError(
            f"could not download ImageNet weights for {name} ({type(err).__name__}: {err})",
            "offline? download the torchvision .pth elsewhere and pass --pretrained-weights FILE",
        ) from None
    if global_pool == "max":
        # Only an `avgpool` layer can be swapped; densenet and mobilenet_v2 pool inside their forward code.
        if not isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d):
            raise UserError(
                f"--global-pool max: torchvision's {name} pools its features inside its own code, not in a layer",
                f"use timm's model (--model timm/{name}) or --global-pool avg",
            )
        model.avgpool = nn.AdaptiveMaxPool2d(model.avgpool.output_size)
    return model


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
    if pretrained:
        with torch.no_grad():
            # Summing the RGB filters keeps a pretrained stem's response to a gray image (R = G = B), as timm's
            # adapt_input_conv does.
            new.weight.copy_(adapt_stem(conv.weight, in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    model.set_submodule(name, new)


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A first convolution's weight for `in_channels` inputs, as timm adapts `in_chans` (summed to one channel)."""
    from timm.models import adapt_input_conv

    return adapt_input_conv(in_channels, weight)


# ---------------------------------------------------------------------------------------------
# Parts: stem, head, Grad-CAM layer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Parts:
    """Parameter-name prefixes of a model's first convolution(s) and classifier head(s)."""

    stem: tuple[str, ...]
    head: tuple[str, ...]

    def is_head(self, key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in self.head)

    def is_stem(self, key: str) -> bool:
        return any(key == f"{s}.weight" for s in self.stem)


def parts(model: nn.Module, arch: str) -> Parts:
    """The stem and head of a model (or encoder) that `build_model` (`build_encoder`) made for `arch`."""
    library, bare = split_arch(arch)
    if library == "carotid":
        return Parts(("features.0",), ("classifier",))
    if library == "timm":
        cfg = getattr(model, "pretrained_cfg", None) or _timm().get_pretrained_cfg(bare).to_dict()
        as_tuple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else ((v,) if v else ())  # noqa: E731
        return Parts(as_tuple(cfg.get("first_conv")), as_tuple(cfg.get("classifier")))
    return Parts(*((name,) for name in _torchvision_parts(bare)))


@functools.cache
def _torchvision_parts(name: str) -> tuple[str, str]:
    with torch.device("meta"):
        return _first_conv_and_last_linear(_torchvision_model(name, False))


# ---------------------------------------------------------------------------------------------
# Checking a state dict against a model
# ---------------------------------------------------------------------------------------------


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
