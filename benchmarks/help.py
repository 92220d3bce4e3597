"""`--help` of every command against a bare interpreter (`python -c pass`): whole processes, interleaved.
The target is absolute (< 0.5 s); the bare interpreter beside it shows how much of it is Python's own start."""

from __future__ import annotations

import sys

from benchmarks.common import Options, child_env, interleaved, pair_row, timed_process

TITLE = "--help of every command"
COMMANDS = ("train", "evaluate", "predict", "compare", "export", "demo")


def run(opts: Options) -> list:
    env = child_env()
    rows = []
    for name in COMMANDS[:2] if opts.quick else COMMANDS:
        bare, helped = interleaved(
            opts.pairs,
            lambda: timed_process([sys.executable, "-c", "pass"], env),
            lambda name=name: timed_process([sys.executable, "-m", f"carotid.{name}", "--help"], env),
        )
        row = pair_row(
            f"carotid.{name} --help, wall", "python -c pass", f"carotid.{name} --help", "s",
            [r["seconds"] for r in bare], [r["seconds"] for r in helped], "B < 0.5 s",
        )  # fmt: skip
        row.met = row.b_value < 0.5
        rows.append(row)
    return rows
