#!/usr/bin/env python
"""Measure carotid's input pipeline against the compute ceiling, in one run.

    python scripts/benchmark.py                                   # this CPU, small defaults
    python scripts/benchmark.py --discovery-files 100000 --json bench.json
    python scripts/benchmark.py --device cuda --model resnet50 --mixed-precision bf16 --batch-size 256 \
        --persons 40 --frames 500 --num-workers 16 --compile-gain --json bench_h100_resnet50.json
    python scripts/benchmark.py --quick --json quick.json         # the test suite's smoke run

Figures: (a) compute ceiling: the trainer's step (device-side augmentation, model, loss, backward,
AdamW) on synthetic uint8 batches already on the device; (b) end-to-end training on the JPEG files,
no cache; (c) the same from the decoded-frame cache; both through carotid.engine.train_one_epoch with
carotid.data.make_loader; (a)-(c) report the fastest epoch after the first (warm-up, worker start);
(d) the loader alone, uncached and cached; (e) carotid.data.discover_frames against
`find ROOT -type f` on the same tree; (f) decode rates per file kind and (g) start-up against the
number of frames (scripts/bench_formats.py). See docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Options
# ---------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add = parser.add_argument
    add("--device", choices=("cpu", "cuda"), default="cpu", help="Where the model trains (default: cpu).")
    add("--model", default="small_cnn", help="Architecture from carotid.models (default: small_cnn).")
    add("--image-size", type=int, default=224, help="Training resolution in pixels (default: 224).")
    add("--batch-size", type=int, default=32, help="Frames per batch (default: 32).")
    add("--mixed-precision", choices=("no", "fp16", "bf16"), default="no", help="Autocast precision (default: no).")
    add(
        "--compile",
        action="store_true",
        help="torch.compile the model for every figure (off by default, as in training).",
    )
    add("--compile-gain", action="store_true", help="Also measure the ceiling with torch.compile (figure a').")
    add(
        "--num-workers",
        type=int,
        default=min(os.cpu_count() or 1, 8),
        help="DataLoader workers (default: all cores, at most 8).",
    )
    add(
        "--epochs",
        type=int,
        default=3,
        help="Epochs per training figure; the fastest after the first is reported (default: 3).",
    )
    add("--persons", type=int, default=8, help="Persons in the generated dataset (default: 8).")
    add("--frames", type=int, default=40, help="800x600 JPEG frames per generated person (default: 40).")
    add("--root-dir", help="Use this dataset instead of generating one (needs --label-excel).")
    add("--label-excel", help="Label file of --root-dir.")
    add("--max-imgs-per-person", type=int, help="Cap frames per person of --root-dir.")
    add("--cache-dir", help="Frame cache folder (default: a fresh one in the work dir, so the build is timed).")
    add(
        "--discovery-files",
        type=int,
        default=0,
        help="Time discovery on a generated tree of this many empty files (e.g. 100000) instead of the dataset tree.",
    )
    add(
        "--min-seconds",
        type=float,
        default=2.0,
        help="Loader-only figures repeat passes for at least this long (default: 2).",
    )
    add(
        "--decode-frames",
        type=int,
        default=40,
        help="(f): frames per file kind for the decode rates, 0 = skip (default: 40, 800x600).",
    )
    add(
        "--startup-files",
        default="",
        help="(g): comma-separated tree sizes, e.g. 1000,200000: start-up to the first batch on each (default: skip).",
    )
    add("--work-dir", help="Where generated data and caches go (default: a temporary folder, deleted at the end).")
    add("--json", metavar="FILE", help="Write every figure as JSON.")
    add("--quick", action="store_true", help="Tiny sizes for the test suite (seconds on a laptop CPU).")
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.persons, args.frames = 32, 8, 4, 6
        args.num_workers, args.min_seconds, args.epochs = 0, 0.2, 2
        args.decode_frames = min(args.decode_frames, 3)
    if bool(args.root_dir) != bool(args.label_excel):
        parser.error("--root-dir and --label-excel go together")
    return args


# Data
# ---------------------------------------------------------------------------------------------


def write_person(folder: Path, person: dict, frames: int, seed: int) -> None:
    """800x600 grayscale JPEG frames of one synthetic person: two B-mode images (carotid.demo), shifted
    and with fresh noise per frame so every file differs and decodes at a realistic cost."""
    import numpy as np
    from PIL import Image

    from carotid.demo import synth_frame

    rng = np.random.default_rng(seed)
    bases = [synth_frame(rng, person, t, 800, 600).astype(np.int16) for t in (0.0, 0.5)]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        frame = np.roll(bases[k % 2], int(rng.integers(-6, 7)), axis=1) + rng.integers(
            -8, 9, (600, 800), dtype=np.int16
        )
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="L").save(
            folder / f"frame_{k:04d}.jpg", quality=90
        )


def make_jpeg_dataset(root: Path, persons: int, frames: int) -> Path:
    """Per-person folders of JPEG frames plus label.xlsx, written by all cores; returns the label file."""
    import numpy as np

    from carotid.demo import CLASSES, make_persons, write_label_excel

    people = make_persons(persons, np.random.default_rng(0))
    with ProcessPoolExecutor(min(os.cpu_count() or 1, persons)) as pool:
        list(
            pool.map(
                write_person,
                [root / str(p["id"]) for p in people],
                [p for p in people],
                [frames] * persons,
                range(persons),
            )
        )
    write_label_excel(root / "label.xlsx", [(p["id"], CLASSES[int(p["plaque"])]) for p in people])
    return root / "label.xlsx"


def make_file_tree(root: Path, files: int, per_person: int = 200) -> Path:
    """`files` empty .png files, `per_person` to a folder, every other person in a nested seq1/ folder."""
    for p in range(-(-files // per_person)):
        folder = root / f"{100000 + p}" / ("seq1" if p % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(min(per_person, files - p * per_person)):
            (folder / f"frame_{k:04d}.png").touch()
    return root


# Measurements
# ---------------------------------------------------------------------------------------------


def best_seconds(fn, repeats: int = 5) -> float:
    """Fastest of `repeats` timed calls after one untimed warm-up (both sides then see a warm dentry cache)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure_discovery(root: Path) -> dict:
    """(e): discover_frames against `find ROOT -type f`, which does the least work any discovery can."""
    from carotid.data.discovery import discover_frames

    files = sum(len(v) for v in discover_frames(root).values())
    seconds = best_seconds(lambda: discover_frames(root))
    find = shutil.which("find")
    find_seconds = (
        best_seconds(lambda: subprocess.run([find, str(root), "-type", "f"], stdout=subprocess.DEVNULL, check=True))
        if find
        else None
    )
    return {"discovery_files": files, "discovery_seconds": seconds, "find_seconds": find_seconds}


def measure_loader(loader, min_seconds: float) -> float:
    """(d): images/s of whole passes over a loader, after a first pass that starts its workers and warms caches."""
    for _ in loader:
        pass
    images, start = 0, time.perf_counter()
    while images == 0 or time.perf_counter() - start < min_seconds:
        for frames, *_ in loader:
            images += len(frames)
    return images / (time.perf_counter() - start)


def train_epochs(trainer: dict, loader, epochs: int) -> list[dict]:
    """Epochs of the real training step (carotid.engine.train_one_epoch); one reduce_progress row each."""
    from carotid.training.engine import EpochProgress, reduce_progress, train_one_epoch

    rows = []
    for epoch in range(epochs):
        progress = EpochProgress()
        train_one_epoch(
            trainer["model"],
            loader,
            trainer["optimizer"],
            trainer["accelerator"],
            trainer["preset"],
            epoch=epoch,
            epochs=epochs,
            progress=progress,
            channels_last=trainer["channels_last"],
        )
        rows.append(reduce_progress(trainer["accelerator"], progress))
    return rows


def make_trainer(args, compile_model: bool) -> dict:
    """Model, AdamW and the training preset, prepared as carotid.train prepares them."""
    import torch

    from carotid.data.transforms import train_preset
    from carotid.model.registry import build_model
    from carotid.training.optim import make_optimizer

    accelerator = args.accelerator
    channels_last = accelerator.device.type == "cuda"
    model = build_model(args.model, 2, 1)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, 1e-4, 1e-4))
    preset = train_preset("ultrasound", 1).to(accelerator.device)
    return {
        "model": model,
        "optimizer": optimizer,
        "accelerator": accelerator,
        "preset": preset,
        "channels_last": channels_last,
    }


def measure_ceiling(args, steps: int, compile_model: bool) -> float:
    """(a): images/s of the training step on one synthetic uint8 batch already on the device, no loader."""
    import torch

    device = args.accelerator.device
    frames = torch.randint(
        0, 256, (args.batch_size, 1, args.image_size, args.image_size), dtype=torch.uint8, device=device
    )
    labels = torch.arange(args.batch_size, device=device) % 2
    batch = (
        frames,
        labels,
        torch.arange(args.batch_size, device=device),
        torch.ones(args.batch_size, dtype=torch.bool, device=device),
    )
    trainer = make_trainer(args, compile_model)
    train_epochs(trainer, [batch] * min(steps, 5), 1)  # warm-up: cuDNN autotuning, compilation, allocator
    return best_epoch(train_epochs(trainer, [batch] * steps, max(args.epochs - 1, 1)))["images_per_second"]


def best_epoch(rows: list[dict]) -> dict:
    """The fastest epoch after the first: on a shared machine it is the one least disturbed by others."""
    return max(rows[1:] or rows, key=lambda r: r["images_per_second"])


def measure_training(args, dataset, trainer: dict) -> dict:
    """(b)/(c): the trainer's loader and step on real files; figures of the last epoch."""
    from carotid.data.loaders import make_loader

    on_cuda = args.accelerator.device.type == "cuda"
    loader = make_loader(
        dataset, args.batch_size, train=True, num_workers=args.num_workers, seed=0, drop_last=True, pin_memory=on_cuda
    )
    rows = train_epochs(trainer, args.accelerator.prepare(loader), args.epochs)
    best = best_epoch(rows)
    return {
        "images_per_second": best["images_per_second"],
        "data_wait_fraction": best["data_wait_fraction"],
        "epochs": [{k: r[k] for k in ("images_per_second", "data_wait_fraction", "epoch_seconds")} for r in rows],
    }


# Report
# ---------------------------------------------------------------------------------------------


def ratio(a, b):
    return None if a is None or not b else a / b


def ratios(f: dict) -> dict:
    return {
        "uncached_train_vs_ceiling": ratio(
            f["uncached_train_images_per_second"], f["compute_ceiling_images_per_second"]
        ),
        "cached_train_vs_ceiling": ratio(f["cached_train_images_per_second"], f["compute_ceiling_images_per_second"]),
        "cached_vs_uncached_train": ratio(f["cached_train_images_per_second"], f["uncached_train_images_per_second"]),
        "loader_cached_vs_uncached": ratio(
            f["loader_cached_images_per_second"], f["loader_uncached_images_per_second"]
        ),
        "discovery_vs_find": ratio(f["discovery_seconds"], f["find_seconds"]),
        "compile_gain": ratio(
            f.get("compute_ceiling_compiled_images_per_second"), f["compute_ceiling_images_per_second"]
        ),
    }


def table(f: dict, r: dict, workers: int) -> str:
    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    lines = [
        ("(a) compute ceiling, img/s", num(f["compute_ceiling_images_per_second"], ".1f")),
        ("(a') ceiling with torch.compile, img/s", num(f.get("compute_ceiling_compiled_images_per_second"), ".1f")),
        (
            "(b) train, no cache, img/s (data wait)",
            f"{f['uncached_train_images_per_second']:.1f} ({f['uncached_train_data_wait_fraction']:.3f})",
        ),
        (
            "(c) train, cache, img/s (data wait)",
            f"{f['cached_train_images_per_second']:.1f} ({f['cached_train_data_wait_fraction']:.3f})",
        ),
        ("    cache build, s (frames/s)", f"{f['cache_build_seconds']:.2f} ({f['cache_build_frames_per_second']:.0f})"),
        (f"(d) loader, no cache, {workers} workers, img/s", f"{f['loader_uncached_images_per_second']:.1f}"),
        ("(d) loader, cache (sliced in the training process), img/s", f"{f['loader_cached_images_per_second']:.1f}"),
        (f"(e) discover_frames, {f['discovery_files']} files, s", f"{f['discovery_seconds']:.4f}"),
        ("(e) find ROOT -type f, s", num(f["find_seconds"], ".4f")),
        ("b/a", num(r["uncached_train_vs_ceiling"], ".3f")),
        ("c/a", num(r["cached_train_vs_ceiling"], ".3f")),
        ("c/b", num(r["cached_vs_uncached_train"], ".2f")),
        ("loader cached/uncached", num(r["loader_cached_vs_uncached"], ".1f")),
        ("discovery/find", num(r["discovery_vs_find"], ".2f")),
        ("compile gain (a'/a)", num(r["compile_gain"], ".3f")),
    ]
    for kind, rate in (f.get("decode_frames_per_core_second") or {}).items():
        lines.append((f"(f) decode {kind}, frames/s per core", f"{rate:.1f}"))
    for files, run in (f.get("startup") or {}).items():
        lines.append(
            (
                f"(g) start-up to first batch, {files} files, s (vs smallest)",
                f"{run['to_first_batch_s']:.2f} ({run['startup_vs_smallest']:.2f}x)",
            )
        )
        lines.append(
            (
                f"(g) collect_persons, {files} files, s (vs smallest)",
                f"{run['collect_s']:.3f} ({run['collect_vs_smallest']:.2f}x)",
            )
        )
        lines.append(
            (f"(g) collect_persons peak memory, {files} files, B/frame", f"{run['collect_peak_bytes_per_frame']:.0f}")
        )
    width = max(len(k) for k, _ in lines)
    return "\n".join(f"{k:<{width}}  {v:>16}" for k, v in lines)


def machine(accelerator) -> dict:
    import torch

    on_cuda = accelerator.device.type == "cuda"
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(accelerator.device),
        "gpu": torch.cuda.get_device_name() if on_cuda else None,
        "mixed_precision": accelerator.mixed_precision,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# Main
# ---------------------------------------------------------------------------------------------


def run(args, work: Path) -> dict:
    from carotid.data.labels import read_labels
    from carotid.data.loaders import frame_dataset, make_loader
    from carotid.data.manifest import collect_persons
    from carotid.training.runtime import build_accelerator

    root, label = (Path(args.root_dir), Path(args.label_excel)) if args.root_dir else (work / "frames", None)
    if label is None:
        label = make_jpeg_dataset(root, args.persons, args.frames)
    items = collect_persons(str(root), read_labels(str(label)), args.max_imgs_per_person).frames_of()
    args.accelerator, note = build_accelerator(mixed_precision=args.mixed_precision)
    if note:
        print(note, file=sys.stderr)
    figures: dict = {"frames": len(items)}
    steps = max(len(items) // args.batch_size, 1)
    figures["compute_ceiling_images_per_second"] = measure_ceiling(args, steps, args.compile)
    if args.compile_gain:
        figures["compute_ceiling_compiled_images_per_second"] = measure_ceiling(args, steps, True)
    trainer = make_trainer(args, args.compile)
    uncached = frame_dataset(items, args.image_size, 1)
    b = measure_training(args, uncached, trainer)
    start = time.perf_counter()
    cached = frame_dataset(
        items,
        args.image_size,
        1,
        cache=True,
        cache_dir=args.cache_dir or str(work / "cache"),
        accelerator=args.accelerator,
    )
    build_seconds = time.perf_counter() - start
    c = measure_training(args, cached, trainer)
    loaders = {
        name: make_loader(ds, args.batch_size, train=True, num_workers=args.num_workers, seed=0, drop_last=True)
        for name, ds in (("uncached", uncached), ("cached", cached))
    }
    figures |= {
        "uncached_train_images_per_second": b["images_per_second"],
        "uncached_train_data_wait_fraction": b["data_wait_fraction"],
        "cached_train_images_per_second": c["images_per_second"],
        "cached_train_data_wait_fraction": c["data_wait_fraction"],
        "cache_build_seconds": build_seconds,
        "cache_build_frames_per_second": len(items) / build_seconds,
        "loader_uncached_images_per_second": measure_loader(loaders["uncached"], args.min_seconds),
        "loader_cached_images_per_second": measure_loader(loaders["cached"], args.min_seconds),
        "epochs": {"uncached": b["epochs"], "cached": c["epochs"]},
    }
    tree = make_file_tree(work / "tree", args.discovery_files) if args.discovery_files else root
    figures |= measure_discovery(tree)
    if args.decode_frames:
        from bench_formats import decode_rates

        width = 160 if args.quick else 800
        figures["decode_frames_per_core_second"] = decode_rates(
            work / "formats", args.decode_frames, args.image_size, width, repeats=1 if args.quick else 3
        )
    if args.startup_files:
        from bench_formats import startup_scaling

        figures["startup"] = startup_scaling(work, [int(n) for n in args.startup_files.split(",")])
    options = {k: v for k, v in vars(args).items() if k != "accelerator"}
    return {"machine": machine(args.accelerator), "options": options, "figures": figures, "ratios": ratios(figures)}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the CPU figures must not touch a GPU
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="carotid-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(result["figures"], result["ratios"], args.num_workers))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
