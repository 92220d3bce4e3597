"""carotid.train (start-up, epochs, no test evaluation) against the hand-written Accelerate loop
(benchmarks/handwritten.py) on the same frames: whole processes, wall and CPU seconds, interleaved pairs.

timm's train.py is the other peer of the issue's target; it ships in timm's repository, not in its wheel, so
it runs only where `--timm-train PATH` names a copy (a row says so otherwise). It reads an ImageFolder (a
folder per split and class), so the same frames and the same train and validation persons are linked into
one, and both sides train timm's resnet18 at 64 px (timm's script builds no small_cnn)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from benchmarks.common import (
    Options,
    Row,
    child_env,
    interleaved,
    module_command,
    pair_row,
    timed_process,
    training_commands,
    training_dataset,
)

TITLE = "whole run: carotid.train vs a hand-written Accelerate loop (and timm's train.py)"
TIMM_MODEL, TIMM_SIZE = "resnet18", 64


def run(opts: Options) -> list[Row]:
    commands = training_commands(opts)
    env = child_env()
    hand, ours = interleaved(
        opts.pairs,
        lambda: timed_process(commands["hand-written"], env, opts.work / "first_step_hand"),
        lambda: timed_process(commands["carotid.train"], env, opts.work / "first_step_ours"),
    )
    what = f"{opts.model}, {opts.image_size} px, {opts.epochs} epochs, {opts.persons * opts.frames} frames"
    rows = pair_rows(what, "hand-written loop", hand, ours, 0.95, "whole run, CPU s (workers included)")
    timm = opts.extra.get("timm_train")
    if not timm:
        rows.append(
            Row(
                "whole run vs timm's train.py", "timm train.py", "carotid.train", "s",
                note="not run: timm's train.py is not installed (pass --timm-train PATH)",
            )
        )  # fmt: skip
        return rows
    theirs_command, ours_command = timm_command(opts, Path(timm)), carotid_timm_command(opts)  # links made once
    timm_side, ours = interleaved(
        opts.pairs, lambda: timed_process(theirs_command, env), lambda: timed_process(ours_command, env)
    )
    what = f"timm's {TIMM_MODEL}, {TIMM_SIZE} px, {opts.epochs} epochs, {opts.persons * opts.frames} frames"
    return rows + pair_rows(what, "timm train.py", timm_side, ours, 1.0, "whole run vs timm, CPU s (workers included)")


def pair_rows(what: str, peer: str, theirs: list[dict], ours: list[dict], bound: float, cpu: str) -> list[Row]:
    """The wall row (target: carotid.train / peer below `bound`) and the CPU row of interleaved whole runs."""
    return [
        pair_row(
            f"whole run ({what}), wall", peer, "carotid.train", "s",
            [r["seconds"] for r in theirs], [r["seconds"] for r in ours], f"< {bound}", le=bound,
        ),
        pair_row(
            cpu, peer, "carotid.train", "CPU s", [r["cpu_seconds"] for r in theirs], [r["cpu_seconds"] for r in ours]
        ),
    ]  # fmt: skip


def image_folder(opts: Options) -> Path:
    """WORK/timm_frames/{train,validation}/<class>/<person>_<frame>.jpg: links to the training data's frames,
    split by the persons carotid.train's split gives (the splits.json training_commands wrote)."""
    from carotid.data.sheet.labels import read_labels

    root, label = training_dataset(opts)
    table = read_labels(str(label))
    splits = json.loads((opts.work / "splits.json").read_text(encoding="utf-8"))
    folder = opts.work / "timm_frames"
    for split, persons in (("train", splits["train"]), ("validation", splits["val"])):
        for person in persons:
            out = folder / split / table.labels[person]
            out.mkdir(parents=True, exist_ok=True)
            for frame in sorted((root / person).glob("*.jpg")):
                link = out / f"{person}_{frame.name}"
                if not link.exists():
                    os.symlink(frame, link)
    return folder


def timm_command(opts: Options, script: Path) -> list[str]:
    """timm's train.py on the CPU as its README runs it, with carotid.train's batch, epochs, optimizer (AdamW,
    lr and weight decay), workers and seed; grey input (one channel), no mixed precision, no pretrained
    weights; its own augmentation (random resized crop, flip, colour jitter) decoded in the loader workers."""
    return [
        sys.executable, str(script), str(image_folder(opts)), "--model", TIMM_MODEL, "--num-classes", "2",
        "--input-size", "1", str(TIMM_SIZE), str(TIMM_SIZE), "--mean", "0.5", "--std", "0.5",
        "--batch-size", str(opts.batch_size), "--epochs", str(opts.epochs), "--opt", "adamw", "--lr", "1e-4",
        "--weight-decay", "1e-4", "--warmup-epochs", "0", "--smoothing", "0", "--workers", str(opts.num_workers),
        "--device", "cpu", "--no-prefetcher", "--seed", "42", "--checkpoint-hist", "1", "--log-interval", "1000",
        "--output", str(opts.work / "timm_runs"),
    ]  # fmt: skip


def carotid_timm_command(opts: Options) -> list[str]:
    """carotid.train on the same frames, split, model and size as timm_command (no test evaluation)."""
    root, label = training_dataset(opts)
    return module_command(
        "carotid.train",
        [
            "--root-dir", str(root), "--label-excel", str(label), "--model", f"timm/{TIMM_MODEL}",
            "--no-pretrained", "--image-size", str(TIMM_SIZE), "--batch-size", str(opts.batch_size),
            "--epochs", str(opts.epochs), "--lr", "1e-4", "--num-workers", str(opts.num_workers), "--seed", "42",
            "--person-model", "frames", "--no-test", "--output-dir", str(opts.work / "runs_timm"),
        ],
    )  # fmt: skip
