"""The predict loop every layer shares: softmax probabilities for each frame of a loader, gathered from all
processes without duplicates, and the dtype a model's inputs must have."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the model's weights are kept in, which its inputs must have.

    fp32 under DDP and FSDP (autocast and FSDP's mixed-precision policy cast on the fly), but DeepSpeed
    bf16/fp16 converts the weights themselves and its autocast does nothing: fp32 frames would fail the
    first convolution ("Input type (torch.FloatTensor) and weight type (BFloat16) should be the same")."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


@torch.no_grad()
def predict_loader(
    model, loader, accelerator: Accelerator, preset, *, channels_last: bool = False, desc: str = "evaluate"
) -> dict[str, np.ndarray]:
    """Softmax probabilities for every frame of `loader`, gathered from all ranks without duplicates.

    Returns numpy arrays ordered by sample index: probs (N, K), logits (N, K; for temperature scaling),
    labels, index, status (the decode flags, 0 = not decodable) and loss (per frame)."""
    model.eval()
    preset.eval()
    dtype = input_dtype(model)
    parts: dict[str, list[torch.Tensor]] = {
        "probs": [],
        "logits": [],
        "labels": [],
        "index": [],
        "status": [],
        "loss": [],
    }
    for frames, labels, index, status in tqdm(
        loader, desc=desc, disable=None if accelerator.is_main_process else True, dynamic_ncols=True, leave=False
    ):
        inputs = preset(frames).to(dtype)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():  # the model may not be prepared (evaluation needs no DDP wrapper)
            logits = model(inputs).float()
        loss = F.cross_entropy(logits, labels, reduction="none")
        batch = (logits.softmax(dim=1), logits, labels, index, status, loss)
        for key, value in zip(parts, accelerator.gather_for_metrics(batch)):
            parts[key].append(value.cpu())
    out = {k: (torch.cat(v).numpy() if v else np.zeros((0,))) for k, v in parts.items()}
    order = np.argsort(out["index"], kind="stable")
    return {k: v[order] for k, v in out.items()}
