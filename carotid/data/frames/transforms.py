"""Named presets that turn uint8 frame batches into normalised model input, on the training device.

Decoding and resizing happen once per frame in data.py (or once per dataset with the cache); what is
random happens here, on whole batches with per-sample parameters, so the loader only slices arrays and
the GPU does the augmentation. kornia, not torchvision.transforms.v2: v2 draws one set of parameters
per call, which on a batch would move every frame of it the same way. The eval preset is deterministic.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

# ImageNet statistics (the gray ones are the mean over RGB), so torchvision weights see familiar input.
NORMALIZATION = {
    1: {"mean": [0.449], "std": [0.226]},
    3: {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


class EvalPreset(nn.Module):
    """uint8 (B, C, H, W) → float, scaled to [0, 1] and normalised. No randomness."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def scale(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float().div_(255.0)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return (self.scale(frames) - self.mean) / self.std


class UltrasoundTrainPreset(EvalPreset):
    """Mild, ultrasound-appropriate augmentation: small affine (probe angle and position), a left-right
    flip (scan direction differs between operators), brightness and contrast (gain). No colour jitter:
    B-mode is gray, and the speckle texture is left alone (no blur or noise)."""

    affine = True

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__(mean, std)
        moves = [K.RandomAffine(degrees=7.0, translate=(0.05, 0.05), scale=(0.9, 1.1), p=0.8)] if self.affine else []
        self.augment = K.AugmentationSequential(
            *moves,
            K.RandomHorizontalFlip(p=0.5),
            K.RandomBrightness(brightness=(0.85, 1.15), p=0.8),
            K.RandomContrast(contrast=(0.85, 1.15), p=0.8),
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return (self.augment(self.scale(frames)) - self.mean) / self.std


class FlipGainPreset(UltrasoundTrainPreset):
    """The ultrasound preset without its affine: no resampling, so a finding a few pixels wide at a small
    --image-size stays as sharp as in the frame (docs/EVALUATION.md measured the affine slowing person models
    at 32 px)."""

    affine = False


def train_preset(name: str, in_channels: int) -> EvalPreset:
    norm = NORMALIZATION[in_channels]
    if name == "ultrasound":
        return UltrasoundTrainPreset(norm["mean"], norm["std"])
    if name == "flip":
        return FlipGainPreset(norm["mean"], norm["std"])
    if name == "none":
        return EvalPreset(norm["mean"], norm["std"])
    raise ValueError(f"unknown augmentation preset {name!r}")


def eval_preset(mean: list[float], std: list[float]) -> EvalPreset:
    return EvalPreset(mean, std)
