"""Distributed strategies (DDP, FSDP, DeepSpeed) against one process: not measured on a CPU machine here (two
shared cores cannot run two training ranks side by side meaningfully); the row says so. On GPUs,
benchmarks.gpu measures 1 against N GPUs."""

from __future__ import annotations

from benchmarks.common import Options, Row

TITLE = "distributed strategies"


def run(opts: Options) -> list:
    return [Row("strategies: DDP / FSDP / DeepSpeed step vs one process", "1 process", "N ranks", "",
                note="not measured on CPU; see benchmarks.gpu (1 vs N GPUs)")]  # fmt: skip
