"""The GPU rows, on whatever GPUs nvidia-smi shows, in one command (sized for under 8 minutes on one H100 node;
not yet run on a GPU):

    python -m benchmarks.gpu                 # run, append the rows to docs/benchmark-results.md and .csv
    python -m benchmarks.gpu --dry-run       # print what would run (any machine)

- images/s of carotid's training step (bf16, channels_last, batch 256, 224 px) over the JPEG loader without
  and with the decoded-frame cache, against the synthetic-data ceiling of the same model (one uint8 batch
  already on the GPU), for resnet18 and resnet50;
- 1 against N GPUs: the ceiling of resnet50 per GPU under DDP (torchrun), as a scaling efficiency;
- the person model's bag step against the frame step on the same frames (resnet18, 224 px).

On a machine without a GPU it says so and exits 2 (the CPU rows: python -m benchmarks)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    BAG_SIZE,
    REPO,
    Options,
    Row,
    child_env,
    csv_text,
    epoch_seconds,
    interleaved,
    jpeg_dataset,
    machine,
    make_trainer,
    markdown,
    pair_row,
    step_batches,
)

MODELS = ("resnet18", "resnet50")
SIZE, BATCH, PERSONS, FRAMES = 224, 256, 40, 100  # 4,000 800x600 JPEG frames: 15 batches an epoch


def gpus() -> list[str]:
    """The GPUs nvidia-smi lists (none without the tool or a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    out = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def plan(count: int) -> list[str]:
    n = max(count, 2)
    return [
        f"data: {PERSONS} persons x {FRAMES} 800x600 JPEG frames, written by all cores",
        *(
            f"{m}: ceiling (synthetic uint8 batch on the GPU) vs loader without cache vs with --cache; "
            f"bf16, channels_last, batch {BATCH}, {SIZE} px, 3 epochs each (the best after the first)"
            for m in MODELS
        ),
        f"resnet50 ceiling on 1 GPU vs {n} GPUs (torchrun --nproc_per_node {n}, DDP): img/s per GPU",
        f"bag step vs frame step, resnet18 {SIZE} px, {BATCH} frames a step ({BAG_SIZE} a person), 3 pairs",
    ]


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


def synthetic_batch(device):
    import torch

    frames = torch.randint(0, 256, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8, device=device)
    index = torch.arange(BATCH, device=device)
    return frames, index % 2, index, torch.ones(BATCH, dtype=torch.bool, device=device)


def best_rate(trainer: dict, batches, frames: int, epochs: int = 3) -> float:
    return max(frames / epoch_seconds(trainer, batches) for _ in range(epochs)) if epochs else 0.0


def data_path_rows(opts: Options, accelerator, items) -> list[Row]:
    from carotid.data.loaders import frame_dataset, make_loader

    workers = min(len(os.sched_getaffinity(0)), 16)
    datasets = {
        "no cache": frame_dataset(items, SIZE, 1),
        "--cache": frame_dataset(
            items, SIZE, 1, cache=True, cache_dir=str(opts.work / "cache"), accelerator=accelerator
        ),
    }
    rows = []
    for model in MODELS:
        trainer = make_trainer(model, SIZE, accelerator)
        batch = synthetic_batch(accelerator.device)
        steps = len(items) // BATCH
        ceiling = best_rate(trainer, [batch] * steps, steps * BATCH)
        for name, dataset in datasets.items():
            loader = accelerator.prepare(
                make_loader(dataset, BATCH, train=True, num_workers=workers, seed=0, drop_last=True, pin_memory=True)
            )
            rate = best_rate(trainer, loader, steps * BATCH)
            rows.append(
                Row(f"GPU: {model} bf16 channels_last {SIZE} px, loader {name} vs ceiling", "synthetic ceiling",
                    f"loader, {name}", "img/s", ceiling, rate, rate / ceiling, target="≥ 0.9 with --cache",
                    met=rate / ceiling >= 0.9 if name == "--cache" else None)
            )  # fmt: skip
    return rows


def bag_row(opts: Options, accelerator) -> Row:
    frame_batch, bag_batch = step_batches(BATCH, SIZE, accelerator.device)
    frame = make_trainer("resnet18", SIZE, accelerator)
    bag = make_trainer("resnet18", SIZE, accelerator, person_model="attention")
    for trainer, batch in ((frame, frame_batch), (bag, bag_batch)):
        epoch_seconds(trainer, [batch] * 3)
    frames = 10 * BATCH
    a, b = interleaved(
        3,
        lambda: frames / epoch_seconds(frame, [frame_batch] * 10),
        lambda: frames / epoch_seconds(bag, [bag_batch] * 10),
    )
    row = pair_row(f"GPU: bag step vs frame step, resnet18 {SIZE} px bf16", "frame step", "bag step", "frames/s", a, b,
                   "≥ 0.9")  # fmt: skip
    row.met = row.ratio >= 0.9
    return row


def scaling_row(count: int) -> Row:
    def ceiling(n: int) -> float:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m", "benchmarks.gpu",
                   "--ceiling-worker", "resnet50"]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-2000:])
        return json.loads(out.stdout.strip().splitlines()[-1])["images_per_second_per_gpu"]

    one, many = ceiling(1), ceiling(count)
    return Row(f"GPU: resnet50 ceiling per GPU, 1 vs {count} GPUs (DDP)", "1 GPU", f"{count} GPUs", "img/s per GPU",
               one, many, many / one, target="≥ 0.9", met=many / one >= 0.9)  # fmt: skip


def ceiling_worker(model: str) -> int:
    """One DDP rank (under torchrun): the ceiling of `model`; rank 0 prints the mean img/s per GPU as JSON."""
    import torch

    from carotid.core.runtime import build_accelerator

    accelerator, _ = build_accelerator(mixed_precision="bf16")
    trainer = make_trainer(model, SIZE, accelerator)
    batch = synthetic_batch(accelerator.device)
    epoch_seconds(trainer, [batch] * 5)
    rate = best_rate(trainer, [batch] * 20, 20 * BATCH, epochs=2)
    rates = accelerator.gather(torch.tensor([rate], device=accelerator.device))
    if accelerator.is_main_process:
        print(json.dumps({"images_per_second_per_gpu": rates.mean().item(), "ranks": len(rates)}))
    return 0


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def write_rows(out: str, rows: list[Row], facts: dict, command: str) -> None:
    """Appends the GPU section to OUT.md and the rows to OUT.csv (a previous GPU section or rows replaced)."""
    md, table = Path(out + ".md"), Path(out + ".csv")
    section = "\n## GPU rows\n\n" + markdown(rows, facts, os.getloadavg(), command)
    old = md.read_text(encoding="utf-8").split("\n## GPU rows\n")[0] if md.is_file() else ""
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(old.rstrip("\n") + "\n" + section, encoding="utf-8")
    lines = table.read_text(encoding="utf-8").splitlines(keepends=True) if table.is_file() else []
    kept = [line for line in lines if not line.startswith("GPU: ") and not line.startswith('"GPU: ')]
    new = csv_text(rows, facts).splitlines(keepends=True)
    table.write_text("".join(kept or new[:1]) + "".join(new[1:]), encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Print what would run, and the GPUs found.")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmark-results"), help="OUT.md and OUT.csv.")
    parser.add_argument("--ceiling-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ceiling_worker:
        return ceiling_worker(args.ceiling_worker)
    found = gpus()
    print(f"GPUs (nvidia-smi): {', '.join(found) if found else 'none'}")
    for line in plan(len(found)):
        print(f"  would run: {line}" if args.dry_run else f"  {line}")
    if args.dry_run:
        return 0
    if not found:
        print("error: no GPU — nvidia-smi lists none here; run this on a GPU machine (the CPU rows: "
              "python -m benchmarks)", file=sys.stderr)  # fmt: skip
        return 2
    return run_rows(args, found)


def run_rows(args, found: list[str]) -> int:
    from carotid.core.runtime import build_accelerator
    from carotid.data.manifest import collect_persons
    from carotid.data.sheet.labels import read_labels

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="carotid-gpu-bench-"))
    try:
        opts = Options(work)
        root, label = jpeg_dataset(work / "frames", PERSONS, FRAMES)
        items = collect_persons(str(root), read_labels(str(label)), None).frames_of()
        accelerator, _ = build_accelerator(mixed_precision="bf16")
        rows = data_path_rows(opts, accelerator, items) + [bag_row(opts, accelerator)]
        if len(found) > 1:
            rows.append(scaling_row(len(found)))
        else:
            rows.append(Row("GPU: 1 vs N GPUs", "1 GPU", "N GPUs", "", note="one GPU here: not measured"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_rows(args.out, rows, machine(), "python -m benchmarks.gpu")
    print(Path(args.out + ".md").read_text(encoding="utf-8").split("\n## GPU rows\n")[-1])
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
