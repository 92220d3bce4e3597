"""One training step (forward, backward, AdamW) with contiguous and with channels_last weights and inputs.

    python scripts/bench_channels_last.py [ARCH ...]        (default: small_cnn resnet18)

Batch 32 of 1x224x224 on the current device's default (the CPU here), both layouts interleaved (the order
flips every repetition) so that a shared machine's load falls on both; the median of 10 steps after 2
warm-up steps. The Trainer trains channels_last except under DeepSpeed and FSDP (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
import torch.nn.functional as F

from carotid.model.registry import build_model


def step_seconds(arch: str, repeats: int = 12, warm_up: int = 2) -> dict[bool, float]:
    torch.manual_seed(0)
    frames, labels = torch.randn(32, 1, 224, 224), torch.randint(0, 2, (32,))
    runs = {}
    for channels_last in (False, True):
        model = build_model(arch, 2, 1)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        runs[channels_last] = (model, torch.optim.AdamW(model.parameters(), 1e-4))
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(repeats):
        for channels_last in (False, True) if rep % 2 else (True, False):
            model, optimizer = runs[channels_last]
            batch = frames.to(memory_format=torch.channels_last) if channels_last else frames
            start = time.perf_counter()
            F.cross_entropy(model(batch), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
            if rep >= warm_up:
                times[channels_last].append(time.perf_counter() - start)
    return {layout: statistics.median(values) for layout, values in times.items()}


if __name__ == "__main__":
    for arch in sys.argv[1:] or ["small_cnn", "resnet18"]:
        seconds = step_seconds(arch)
        print(
            f"{arch}: contiguous {seconds[False]:.3f} s, channels_last {seconds[True]:.3f} s per step, "
            f"ratio {seconds[True] / seconds[False]:.2f}"
        )
