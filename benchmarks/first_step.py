"""The first optimizer step of carotid.train against the hand-written loop's: both processes exit at their
first step (an optimizer post-hook), so a pair costs seconds, not epochs; wall and the main process's CPU
seconds from the interpreter's start."""

from __future__ import annotations

from benchmarks.common import Options, child_env, interleaved, pair_row, timed_process, training_commands

TITLE = "first optimizer step: carotid.train vs the hand-written loop"


def run(opts: Options) -> list:
    commands = training_commands(opts)
    env = child_env(CAROTID_BENCH_EXIT_AT_FIRST_STEP="1")
    hand, ours = interleaved(
        opts.pairs,
        lambda: timed_process(commands["hand-written"], env, opts.work / "first_step_hand"),
        lambda: timed_process(commands["carotid.train"], env, opts.work / "first_step_ours"),
    )
    return [
        pair_row(
            "first optimizer step, wall", "hand-written loop", "carotid.train", "s",
            [r["first_step_seconds"] for r in hand], [r["first_step_seconds"] for r in ours], "≤ 1.0", le=1.0,
        ),
        pair_row(
            "first optimizer step, CPU s of the main process", "hand-written loop", "carotid.train", "CPU s",
            [r["first_step_cpu_seconds"] for r in hand], [r["first_step_cpu_seconds"] for r in ours],
        ),
    ]  # fmt: skip
