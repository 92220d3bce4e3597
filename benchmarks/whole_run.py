"""carotid.train (start-up, epochs, no test evaluation) against the hand-written Accelerate loop
(benchmarks/handwritten.py) on the same frames: whole processes, wall and CPU seconds, interleaved pairs.

timm's train.py is the other peer of the issue's target; it ships in timm's repository, not in its wheel, so
it runs only where `--timm-train PATH` names a copy (a row says so otherwise)."""

from __future__ import annotations

from benchmarks.common import Options, Row, child_env, interleaved, pair_row, timed_process, training_commands

TITLE = "whole run: carotid.train vs a hand-written Accelerate loop (and timm's train.py)"


def run(opts: Options) -> list[Row]:
    commands = training_commands(opts)
    env = child_env()
    hand, ours = interleaved(
        opts.pairs,
        lambda: timed_process(commands["hand-written"], env, opts.work / "first_step_hand"),
        lambda: timed_process(commands["carotid.train"], env, opts.work / "first_step_ours"),
    )
    what = f"{opts.model}, {opts.image_size} px, {opts.epochs} epochs, {opts.persons * opts.frames} frames"
    rows = [
        pair_row(
            f"whole run ({what}), wall", "hand-written loop", "carotid.train", "s",
            [r["seconds"] for r in hand], [r["seconds"] for r in ours], "< 0.95", le=0.95,
        ),
        pair_row(
            "whole run, CPU s (workers included)", "hand-written loop", "carotid.train", "CPU s",
            [r["cpu_seconds"] for r in hand], [r["cpu_seconds"] for r in ours],
        ),
    ]  # fmt: skip
    timm = opts.extra.get("timm_train")
    rows.append(
        Row(
            "whole run vs timm's train.py", "timm train.py", "carotid.train", "s",
            note="not run: timm's train.py is not installed (pass --timm-train PATH)" if not timm else "not run",
        )
    )  # fmt: skip
    return rows
