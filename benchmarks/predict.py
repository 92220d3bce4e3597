"""carotid.predict on a folder of person folders against a hand-written inference loop
(benchmarks/hand_predict.py) with the same model file, batch size and workers: whole processes, interleaved.
The frames are hard links of the training dataset's JPEG files (distinct paths, decoded each time)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from benchmarks.common import Options, child_env, interleaved, module_command, pair_row, timed_process, training_dataset

TITLE = "predict on 10k frames vs a hand-written inference loop"


def model_file(opts: Options, root: Path, label: Path, env: dict) -> Path:
    """A model file of carotid.train on the training dataset: the whole-run comparison's when it ran (same model
    and size; the weights do not change the speed), else one epoch trained here."""
    out = opts.work / "predict-model"
    found = sorted(out.glob("*/models/best_model.pth")) or sorted((opts.work / "runs").glob("*/models/best_model.pth"))
    if not found:
        command = [
            sys.executable, "-m", "carotid.train", "--root-dir", str(root), "--label-excel", str(label),
            "--model", opts.model, "--image-size", str(opts.image_size), "--batch-size", str(opts.batch_size),
            "--epochs", "1", "--num-workers", "0", "--no-test", "--output-dir", str(out),
        ]  # fmt: skip
        timed_process(command, env)
        found = sorted(out.glob("*/models/best_model.pth"))
    return found[-1]


def linked_frames(root: Path, target: Path, count: int, persons: int = 20) -> Path:
    """`count` frames in `persons` person folders, hard links of the dataset's JPEG files in turn."""
    sources = sorted(root.rglob("*.jpg"))
    for k in range(count):
        folder = target / f"p{k % persons:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"frame_{k:05d}.jpg"
        if not link.exists():
            os.link(sources[k % len(sources)], link)
    return target


def run(opts: Options) -> list:
    env = child_env()
    root, label = training_dataset(opts)
    model = model_file(opts, root, label, env)
    frames = linked_frames(root, opts.work / f"predict-{opts.predict_frames}", opts.predict_frames)
    batch = ["--batch-size", "64", "--num-workers", str(opts.num_workers)]
    ours = [sys.executable, "-m", "carotid.predict", "--model", str(model), "--input", str(frames), "--layout",
            "persons", "--out", str(opts.work / "predictions.csv"), *batch]  # fmt: skip
    hand = module_command(
        "benchmarks.hand_predict",
        ["--model", str(model), "--input", str(frames), "--out", str(opts.work / "hand.csv"), *batch],
    )
    a, b = interleaved(opts.pairs, lambda: timed_process(hand, env), lambda: timed_process(ours, env))
    return [
        pair_row(
            f"predict, {opts.predict_frames:,} frames, wall", "hand-written inference loop", "carotid.predict", "s",
            [r["seconds"] for r in a], [r["seconds"] for r in b], "≤ 1.0", le=1.0,
        )
    ]  # fmt: skip
