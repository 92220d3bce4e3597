#!/usr/bin/env python
"""Measure carotid's input pipeline against the compute ceiling, in one run.

    python scripts/benchmark.py                                   # this CPU, small defaults
    python scripts/benchmark.py --discovery-files 100000 --json bench.json
    python scripts/benchmark.py --device cuda --model resnet50 --mixed-precision bf16 --batch-size 256 \
        --persons 40 --frames 500 --num-workers 16 --compile-gain --json bench_h100_resnet50.json
    python scripts/benchmark.py --quick --json quick.json         # the test suite's smoke run

Figures: (a) compute ceiling: the trainer's step (device-side augmentation, model, loss, backward,
AdamW) on synthetic uint8 batches already on the device; (b) end-to-end training on the JPEG files,
no cache; (c) the same from the decoded-frame cache; both through carotid.training.engine.train_one_epoch with
carotid.data.loaders.make_loader; (a)-(c) report the fastest epoch after the first (warm-up, worker start);
(d) the loader alone, uncached and cached; (e) carotid.data.discovery.discover_frames against
`find ROOT -type f` on the same tree; (f) start-up: `--help` and a bad flag of carotid.train against
`--help` of a hand-written Accelerate script (`handwritten_main` below), plus the other CLIs' `--help`
and `import carotid.train`; (g) whole processes of carotid.train (--no-test) and of that hand-written
loop on the same frames, model, batch, optimizer and validation persons: seconds to the first optimizer
step and for the whole run; (h) what ends every epoch besides validation: the checkpoint with its fsyncs
against Accelerate's save_state alone, and best_model.pth. (f) and (g) run interleaved pairs (the order
flips every pair) and report medians: on a shared machine single runs move by 2x. (i) decode rates per
file kind and (j) start-up against the number of frames (scripts/bench_formats.py). (k) a person model's bag
step against a frame step on the same frames (scripts/bench_bags.py). See docs/PERFORMANCE.md.

    python scripts/benchmark.py --compare-only --startup-pairs 5 --run-pairs 3 --json compare.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
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
    add(
        "--model",
        default="small_cnn",
        help="Any carotid-train --model: small_cnn, a torchvision or a timm name (default: small_cnn).",
    )
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
        "--startup-pairs",
        type=int,
        default=5,
        help="Interleaved pairs of --help processes for figure (f); medians are reported (default: 5).",
    )
    add(
        "--run-pairs",
        type=int,
        default=3,
        help="Interleaved pairs of whole training processes for figure (g); medians are reported (default: 3).",
    )
    add("--seed", type=int, default=42, help="Seed of the split and the runs in figure (g) (default: 42).")
    add(
        "--augment",
        choices=("ultrasound", "none"),
        default="ultrasound",
        help="Augmentation of both sides in figure (g) (default: ultrasound, carotid.train's default).",
    )
    add(
        "--compare-only",
        action="store_true",
        help="Only the comparisons with the hand-written loop, (f) and (g): skip (a)-(e).",
    )
    add(
        "--decode-frames",
        type=int,
        default=40,
        help="(i): frames per file kind for the decode rates, 0 = skip (default: 40, 800x600).",
    )
    add(
        "--startup-files",
        default="",
        help="(j): comma-separated tree sizes, e.g. 1000,200000: start-up to the first batch on each (default: skip).",
    )
    add("--work-dir", help="Where generated data and caches go (default: a temporary folder, deleted at the end).")
    add("--json", metavar="FILE", help="Write every figure as JSON.")
    add("--quick", action="store_true", help="Tiny sizes for the test suite (seconds on a laptop CPU).")
    add(
        "--ceiling-only",
        action="store_true",
        help="Only figure (a), the training step on synthetic batches, and this process's peak memory: one row "
        "per --model for comparing architectures (docs/PERFORMANCE.md).",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.persons, args.frames = 32, 8, 6, 4  # 3 persons a class: both in train
        args.num_workers, args.min_seconds, args.epochs = 0, 0.2, 2
        args.startup_pairs, args.run_pairs = 1, 1
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

    from carotid.data.demo import synth_frame

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

    from carotid.data.demo import CLASSES, make_persons, write_label_excel

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
    """Epochs of the real training step (carotid.training.engine.train_one_epoch); one reduce_progress row each."""
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


def make_trainer(args, compile_model: bool, person_model: str | None = None) -> dict:
    """Model, AdamW and the training preset, prepared as carotid.train prepares them; `person_model` (attention,
    mean): a PersonModel around the architecture instead of the frame classifier."""
    import torch

    from carotid.data.transforms import train_preset
    from carotid.model.person import PersonModel
    from carotid.model.registry import build_model
    from carotid.training.optim import make_optimizer

    accelerator = args.accelerator
    model = (
        PersonModel(args.model, 2, 1, pooling=person_model, image_size=args.image_size)
        if person_model
        else build_model(args.model, 2, 1, image_size=args.image_size)
    )
    model = model.to(memory_format=torch.channels_last)  # as Trainer
    if compile_model:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, 1e-4, 1e-4))
    preset = train_preset("ultrasound", 1).to(accelerator.device)
    return {
        "model": model,
        "optimizer": optimizer,
        "accelerator": accelerator,
        "preset": preset,
        "channels_last": True,
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


def measure_epoch_end(args, work: Path, repeats: int = 3) -> dict:
    """(h): the fixed cost at the end of every epoch besides validation: carotid's resumable checkpoint
    (Accelerate's save_state, then progress.json, an fsync of every file, the rename and pruning), against
    Accelerate's save_state alone, and best_model.pth (torch.save, fsync, rename); medians of `repeats`."""
    from carotid.core.files import atomic_torch_save
    from carotid.training.checkpoints import save_training_state

    trainer = make_trainer(args, False)
    accelerator, run_dir = args.accelerator, work / "epoch-end"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "models").mkdir(exist_ok=True)

    def timed(fn) -> float:
        times = []
        for step in range(repeats):
            start = time.perf_counter()
            fn(step)
            times.append(time.perf_counter() - start)
        return median(times)

    ours = timed(
        lambda step: save_training_state(
            accelerator, run_dir, {"epoch": step}, global_step=step, epoch_end=True, keep=2
        )
    )
    plain = timed(lambda step: accelerator.save_state(str(work / "epoch-end-plain" / str(step))))
    best = timed(
        lambda step: atomic_torch_save(accelerator.get_state_dict(trainer["model"]), run_dir / "models" / "best.pth")
    )
    size = sum(f.stat().st_size for f in (work / "epoch-end-plain" / "0").rglob("*") if f.is_file())
    return {
        "checkpoint_seconds": ours,
        "save_state_seconds": plain,
        "best_model_seconds": best,
        "checkpoint_megabytes": size / 2**20,
    }


# Against a hand-written Accelerate loop
# ---------------------------------------------------------------------------------------------

# Run first in both compared processes: it notes the wall-clock time and the process's CPU seconds at
# its first optimizer step in the file named by CAROTID_BENCH_FIRST_STEP. It imports torch before
# anything else, on both sides alike.
FIRST_STEP_HOOK = """
import os, time
import torch.optim.optimizer as _optimizer

def _first_step(optimizer, args, kwargs):
    _hook.remove()
    with open(os.environ["CAROTID_BENCH_FIRST_STEP"], "w") as out:
        out.write(f"{time.time()!r} {time.process_time()!r}")

_hook = _optimizer.register_optimizer_step_post_hook(_first_step)
"""


def handwritten_main(argv=None) -> int:
    """The reference: a plain Accelerate training loop as a researcher writes it in one script (imports
    first, then argparse), on the same frames, model, batch size, optimizer, augmentation and validation
    split as carotid.train. Frames are decoded with Pillow in the loader workers; the augmentation is
    carotid's kornia preset on the device (a script doing the same would write the same kornia calls).
    Per epoch: train, validate (loss, accuracy), keep the best weights; at the end the final weights.
    No checkpoints, metrics files or plots."""
    import numpy as np
    import openpyxl
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from PIL import Image

    from carotid.data.transforms import NORMALIZATION, eval_preset, train_preset

    parser = argparse.ArgumentParser(description="A hand-written Accelerate loop (scripts/benchmark.py reference).")
    add = parser.add_argument
    add("--root-dir", required=True, help="One folder of frames per person.")
    add("--label-excel", required=True, help="Column A: person ID, column B: label; one header row.")
    add("--splits", required=True, help="JSON with the 'train' and 'val' person IDs.")
    add("--output-dir", required=True, help="Where best.pth and final.pth go.")
    add("--model", default="small_cnn", help="Architecture (default: small_cnn).")
    add("--image-size", type=int, default=224, help="Training resolution (default: 224).")
    add("--batch-size", type=int, default=32, help="Frames per batch (default: 32).")
    add("--epochs", type=int, default=3, help="Epochs (default: 3).")
    add("--lr", type=float, default=1e-4, help="AdamW learning rate (default: 1e-4).")
    add("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default: 1e-4).")
    add("--num-workers", type=int, default=2, help="DataLoader workers (default: 2).")
    add("--mixed-precision", default="no", help="no, fp16 or bf16 (default: no).")
    add("--augment", default="ultrasound", help="carotid's augmentation preset (default: ultrasound).")
    add("--seed", type=int, default=42, help="Seed (default: 42).")
    args = parser.parse_args(argv)

    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    sheet = openpyxl.load_workbook(args.label_excel, read_only=True).active
    labels = {str(row[0]).strip(): str(row[1]).strip() for row in sheet.iter_rows(min_row=2, values_only=True)}
    classes = sorted(set(labels.values()))
    splits = json.loads(Path(args.splits).read_text(encoding="utf-8"))

    def frames_of(persons):
        return [
            (str(path), classes.index(labels[person]))
            for person in persons
            for path in sorted(Path(args.root_dir, person).rglob("*"))
            if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
        ]

    class Frames(torch.utils.data.Dataset):
        def __init__(self, items):
            self.items = items

        def __len__(self):
            return len(self.items)

        def __getitem__(self, index):
            path, label = self.items[index]
            with Image.open(path) as image:
                image = image.convert("L").resize((args.image_size, args.image_size), Image.BILINEAR)
            return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())[None], label

    def loader(persons, batch_size, train):
        workers = args.num_workers
        return torch.utils.data.DataLoader(
            Frames(frames_of(persons)),
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=accelerator.device.type == "cuda",
        )

    model = handwritten_model(args.model, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    train_loader = loader(splits["train"], args.batch_size, True)
    val_loader = loader(splits["val"], 2 * args.batch_size, False)
    model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)

    augment = train_preset(args.augment, 1).to(accelerator.device)
    normalise = eval_preset(**NORMALIZATION[1]).to(accelerator.device)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    best = float("inf")
    for epoch in range(args.epochs):
        model.train()
        for frames, targets in train_loader:
            loss = F.cross_entropy(model(augment(frames)), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        total, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for frames, targets in val_loader:
                logits = model(normalise(frames))
                logits, targets = accelerator.gather_for_metrics((logits, targets))
                total += F.cross_entropy(logits, targets, reduction="sum").item()
                correct += (logits.argmax(1) == targets).sum().item()
                count += len(targets)
        val_loss = total / max(count, 1)
        accelerator.print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}, val_acc {correct / max(count, 1):.3f}")
        if val_loss < best:
            best = val_loss
            accelerator.save(accelerator.unwrap_model(model).state_dict(), out / "best.pth")
    accelerator.save(accelerator.unwrap_model(model).state_dict(), out / "final.pth")
    return 0


def handwritten_model(arch: str, num_classes: int):
    """carotid's architecture, built without importing carotid (whose import cost is what is compared).

    small_cnn is written out again (the parent checks that every weight's name and shape match
    carotid.model.registry's); the torchvision architectures come from carotid's registry, since both
    sides import torchvision for them anyway."""
    import torch
    from torch import nn

    if arch != "small_cnn":
        from carotid.model.registry import build_model

        return build_model(arch, num_classes, 1)

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            layers, channels = [], 1
            for out in (32, 64, 128, 256):
                layers += [nn.Conv2d(channels, out, 3, 2, 1, bias=False), nn.GroupNorm(8, out), nn.ReLU(inplace=True)]
                channels = out
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(channels, num_classes)

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    return SmallCNN()


def child_env() -> dict:
    """The parent's environment, with this carotid first on the path and no progress bars."""
    import carotid

    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(carotid.__file__).resolve().parent.parent), env.get("PYTHONPATH")) if p
    )
    return env


def python_command(code: str, argv: list[str], first_step_hook: bool = False) -> list[str]:
    """`python -c CODE ARGV...`, this script's folder importable (for handwritten_main)."""
    scripts = str(Path(__file__).resolve().parent)
    prelude = (FIRST_STEP_HOOK if first_step_hook else "") + f"\nimport sys; sys.path.insert(0, {scripts!r})\n"
    return [sys.executable, "-c", prelude + code, *argv]


HANDWRITTEN = "import benchmark; sys.exit(benchmark.handwritten_main(sys.argv[1:]))"
CAROTID_TRAIN = "import runpy; runpy.run_module('carotid.train', run_name='__main__', alter_sys=True)"


def timed_process(command: list[str], env: dict, first_step_file: Path | None = None) -> dict:
    """Wall and CPU seconds of a whole process (CPU: user + system, with the worker processes it reaped)
    and, when it trains, both from its start to its first optimizer step (CPU: the main process alone).

    On a shared machine wall seconds stretch with everyone else's load; CPU seconds much less."""
    if first_step_file is not None:
        first_step_file.unlink(missing_ok=True)
        env = dict(env, CAROTID_BENCH_FIRST_STEP=str(first_step_file))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if first_step_file is not None and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} … failed ({result.returncode}):\n{result.stderr[-3000:]}")
    out = {
        "seconds": seconds,
        "cpu_seconds": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime,
        "returncode": result.returncode,
    }
    if first_step_file is not None:
        wall, cpu = map(float, first_step_file.read_text().split())
        out |= {"first_step_seconds": wall - started, "first_step_cpu_seconds": cpu}
    return out


def interleaved(pairs: int, runs: dict) -> dict[str, list[dict]]:
    """Each of `runs` once per pair, the order reversed every other pair (the machine is shared: drift
    and bursts of load then fall on both sides alike)."""
    names, results = list(runs), {name: [] for name in runs}
    for i in range(pairs):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(runs[name]())
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def measure_startup(args, env: dict) -> dict:
    """(f): `--help` and a bad flag of carotid.train and `--help` of the hand-written script (plus the other
    CLIs' `--help`, `import carotid.train` and a bare interpreter unless --quick), as whole processes."""
    python = sys.executable
    commands = {
        "hand-written --help": python_command(HANDWRITTEN, ["--help"]),
        "carotid.train --help": [python, "-m", "carotid.train", "--help"],
        "carotid.train --no-such-flag": [python, "-m", "carotid.train", "--no-such-flag"],
    }
    if not args.quick:
        commands |= {
            f"carotid.{cli} --help": [python, "-m", f"carotid.{cli}", "--help"]
            for cli in ("evaluate", "predict", "demo")
        }
        commands |= {
            "import carotid.train": [python, "-c", "import carotid.train"],
            "python -c pass": [python, "-c", "pass"],
        }
    runs = interleaved(args.startup_pairs, {k: (lambda c=c: timed_process(c, env)) for k, c in commands.items()})
    failed = {name: rows[-1]["returncode"] for name, rows in runs.items() if rows[-1]["returncode"] not in (0, 2)}
    return {name: median([r["seconds"] for r in rows]) for name, rows in runs.items()} | {
        "_cpu": {name: median([r["cpu_seconds"] for r in rows]) for name, rows in runs.items()},
        "_runs": runs,
        "_failed": failed,
    }


def measure_whole_runs(args, root: Path, label: Path, manifest, work: Path, env: dict) -> dict:
    """(g): carotid.train (--no-test) against handwritten_main, whole processes on the same frames:
    seconds to the first optimizer step and for the whole run."""
    from carotid.data.split import split_persons
    from carotid.model.registry import build_model

    reference = handwritten_model(args.model, 2).state_dict()
    ours = build_model(args.model, 2, 1).state_dict()
    assert {k: v.shape for k, v in reference.items()} == {k: v.shape for k, v in ours.items()}, "not the same model"
    splits, _ = split_persons(manifest.person_labels, 0.7, 0.15, 0.15, args.seed)  # carotid.train's defaults
    splits_file = work / "splits.json"
    splits_file.write_text(json.dumps(splits), encoding="utf-8")
    common = [
        "--root-dir", str(root), "--label-excel", str(label), "--model", args.model,
        "--image-size", str(args.image_size), "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
        "--num-workers", str(args.num_workers), "--mixed-precision", args.mixed_precision, "--seed", str(args.seed),
        "--augment", args.augment,
    ]  # fmt: skip
    commands = {
        "handwritten": python_command(
            HANDWRITTEN, common + ["--splits", str(splits_file), "--output-dir", str(work / "handwritten")], True
        ),
        "carotid": python_command(CAROTID_TRAIN, common + ["--no-test", "--output-dir", str(work / "runs")], True),
    }
    runs = interleaved(
        args.run_pairs,
        {k: (lambda k=k, c=c: timed_process(c, env, work / f"first_step_{k}")) for k, c in commands.items()},
    )
    return {
        name: {
            "first_step_seconds": median([r["first_step_seconds"] for r in rows]),
            "whole_run_seconds": median([r["seconds"] for r in rows]),
            "first_step_cpu_seconds": median([r["first_step_cpu_seconds"] for r in rows]),
            "whole_run_cpu_seconds": median([r["cpu_seconds"] for r in rows]),
        }
        for name, rows in runs.items()
    } | {"_runs": runs}


# Report
# ---------------------------------------------------------------------------------------------


def ratio(a, b):
    return None if a is None or not b else a / b


def ratios(f: dict) -> dict:
    startup, whole = f.get("startup", {}), f.get("whole_run", {})
    ours, theirs = whole.get("carotid", {}), whole.get("handwritten", {})
    return {
        "uncached_train_vs_ceiling": ratio(
            f.get("uncached_train_images_per_second"), f.get("compute_ceiling_images_per_second")
        ),
        "cached_train_vs_ceiling": ratio(
            f.get("cached_train_images_per_second"), f.get("compute_ceiling_images_per_second")
        ),
        "cached_vs_uncached_train": ratio(
            f.get("cached_train_images_per_second"), f.get("uncached_train_images_per_second")
        ),
        "loader_cached_vs_uncached": ratio(
            f.get("loader_cached_images_per_second"), f.get("loader_uncached_images_per_second")
        ),
        "discovery_vs_find": ratio(f.get("discovery_seconds"), f.get("find_seconds")),
        "compile_gain": ratio(
            f.get("compute_ceiling_compiled_images_per_second"), f.get("compute_ceiling_images_per_second")
        ),
        "help_vs_handwritten": ratio(startup.get("carotid.train --help"), startup.get("hand-written --help")),
        "bad_flag_vs_handwritten_help": ratio(
            startup.get("carotid.train --no-such-flag"), startup.get("hand-written --help")
        ),
        "first_batch_vs_handwritten": ratio(ours.get("first_step_seconds"), theirs.get("first_step_seconds")),
        "whole_run_vs_handwritten": ratio(ours.get("whole_run_seconds"), theirs.get("whole_run_seconds")),
        "help_cpu_vs_handwritten": ratio(
            startup.get("_cpu", {}).get("carotid.train --help"), startup.get("_cpu", {}).get("hand-written --help")
        ),
        "first_batch_cpu_vs_handwritten": ratio(
            ours.get("first_step_cpu_seconds"), theirs.get("first_step_cpu_seconds")
        ),
        "whole_run_cpu_vs_handwritten": ratio(ours.get("whole_run_cpu_seconds"), theirs.get("whole_run_cpu_seconds")),
        "checkpoint_vs_save_state": ratio(
            f.get("epoch_end", {}).get("checkpoint_seconds"), f.get("epoch_end", {}).get("save_state_seconds")
        ),
        "import_vs_handwritten_help": ratio(startup.get("import carotid.train"), startup.get("hand-written --help")),
        "bag_vs_frame_step": f.get("bag_vs_frame_step_rounds"),  # the median of paired rounds (bench_bags.py)
        "bag_vs_frame_step_cpu": f.get("bag_vs_frame_step_cpu_rounds"),
    }


def table(f: dict, r: dict, args) -> str:
    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    lines = []
    if "compute_ceiling_images_per_second" in f:
        lines += [
            ("(a) compute ceiling, img/s", num(f["compute_ceiling_images_per_second"], ".1f")),
            (
                "(a') ceiling with torch.compile, img/s",
                num(f.get("compute_ceiling_compiled_images_per_second"), ".1f"),
            ),
            (
                "(b) train, no cache, img/s (data wait)",
                f"{f['uncached_train_images_per_second']:.1f} ({f['uncached_train_data_wait_fraction']:.3f})",
            ),
            (
                "(c) train, cache, img/s (data wait)",
                f"{f['cached_train_images_per_second']:.1f} ({f['cached_train_data_wait_fraction']:.3f})",
            ),
            (
                "    cache build, s (frames/s)",
                f"{f['cache_build_seconds']:.2f} ({f['cache_build_frames_per_second']:.0f})",
            ),
            (
                f"(d) loader, no cache, {args.num_workers} workers, img/s",
                f"{f['loader_uncached_images_per_second']:.1f}",
            ),
            (
                "(d) loader, cache (sliced in the training process), img/s",
                f"{f['loader_cached_images_per_second']:.1f}",
            ),
            (f"(e) discover_frames, {f['discovery_files']} files, s", f"{f['discovery_seconds']:.4f}"),
            ("(e) find ROOT -type f, s", num(f["find_seconds"], ".4f")),
            ("(k) frame step, img/s", num(f["frame_step_images_per_second"], ".1f")),
            (f"(k) bag step ({f['bag_size']} frames a person), img/s", num(f["bag_step_images_per_second"], ".1f")),
        ]
    if "epoch_end" in f:
        end = f["epoch_end"]
        lines += [
            (
                f"(h) checkpoint ({end['checkpoint_megabytes']:.1f} MB) with fsync, s",
                f"{end['checkpoint_seconds']:.3f}",
            ),
            ("(h) Accelerate save_state alone, s", f"{end['save_state_seconds']:.3f}"),
            ("(h) best_model.pth, s", f"{end['best_model_seconds']:.3f}"),
        ]
    startup = f.get("startup", {})
    lines += [
        (
            f"(f) {name}, s (CPU s)",
            f"{seconds:.2f} ({startup['_cpu'][name]:.2f})"
            + (f" (exit {startup['_failed'][name]})" if name in startup["_failed"] else ""),
        )
        for name, seconds in startup.items()
        if not name.startswith("_")
    ]
    for name, row in f.get("whole_run", {}).items():
        if not name.startswith("_"):
            lines += [
                (
                    f"(g) {name}: first optimizer step, s (CPU s)",
                    f"{row['first_step_seconds']:.2f} ({row['first_step_cpu_seconds']:.2f})",
                ),
                (
                    f"(g) {name}: whole run ({args.epochs} epochs), s (CPU s)",
                    f"{row['whole_run_seconds']:.2f} ({row['whole_run_cpu_seconds']:.2f})",
                ),
            ]
    shown = {
        "b/a": ("uncached_train_vs_ceiling", ".3f"),
        "c/a": ("cached_train_vs_ceiling", ".3f"),
        "c/b": ("cached_vs_uncached_train", ".2f"),
        "loader cached/uncached": ("loader_cached_vs_uncached", ".1f"),
        "discovery/find": ("discovery_vs_find", ".2f"),
        "compile gain (a'/a)": ("compile_gain", ".3f"),
        "bag step/frame step (k)": ("bag_vs_frame_step", ".3f"),
        "bag step/frame step in CPU time (k)": ("bag_vs_frame_step_cpu", ".3f"),
        "checkpoint/save_state": ("checkpoint_vs_save_state", ".2f"),
        "--help: carotid.train/hand-written": ("help_vs_handwritten", ".2f"),
        "bad flag: carotid.train/hand-written --help": ("bad_flag_vs_handwritten_help", ".2f"),
        "import carotid.train/hand-written --help": ("import_vs_handwritten_help", ".2f"),
        "first batch: carotid.train/hand-written": ("first_batch_vs_handwritten", ".2f"),
        "whole run: carotid.train/hand-written": ("whole_run_vs_handwritten", ".2f"),
        "CPU s, --help: carotid.train/hand-written": ("help_cpu_vs_handwritten", ".2f"),
        "CPU s, first batch (main process): carotid.train/hand-written": ("first_batch_cpu_vs_handwritten", ".2f"),
        "CPU s, whole run: carotid.train/hand-written": ("whole_run_cpu_vs_handwritten", ".2f"),
    }
    ran_pipeline = "compute_ceiling_images_per_second" in f
    lines += [
        (label, num(r[key], fmt))
        for label, (key, fmt) in shown.items()
        if r[key] is not None or (ran_pipeline and key == "compile_gain")
    ]
    for kind, rate in (f.get("decode_frames_per_core_second") or {}).items():
        lines.append((f"(i) decode {kind}, frames/s per core", f"{rate:.1f}"))
    for files, run in (f.get("startup_scaling") or {}).items():
        lines.append(
            (
                f"(j) start-up to first batch, {files} files, s (vs smallest)",
                f"{run['to_first_batch_s']:.2f} ({run['startup_vs_smallest']:.2f}x)",
            )
        )
        lines.append(
            (
                f"(j) collect_persons, {files} files, s (vs smallest)",
                f"{run['collect_s']:.3f} ({run['collect_vs_smallest']:.2f}x)",
            )
        )
        lines.append(
            (f"(j) collect_persons peak memory, {files} files, B/frame", f"{run['collect_peak_bytes_per_frame']:.0f}")
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
    from carotid.core.runtime import build_accelerator
    from carotid.data.labels import read_labels
    from carotid.data.manifest import collect_persons

    root, label = (Path(args.root_dir), Path(args.label_excel)) if args.root_dir else (work / "frames", None)
    if label is None:
        label = make_jpeg_dataset(root, args.persons, args.frames)
    manifest = collect_persons(str(root), read_labels(str(label)), args.max_imgs_per_person)
    items = manifest.frames_of()
    args.accelerator, note = build_accelerator(mixed_precision=args.mixed_precision)
    if note:
        print(note, file=sys.stderr)
    figures: dict = {"frames": len(items)}
    if not args.compare_only:
        figures |= measure_pipeline(args, work, root, items)
    figures["epoch_end"] = measure_epoch_end(args, work)
    env = child_env()
    figures["startup"] = measure_startup(args, env)
    if args.max_imgs_per_person is None:  # the hand-written loop reads every frame
        figures["whole_run"] = measure_whole_runs(args, root, label, manifest, work, env)
    if args.decode_frames:
        from bench_formats import decode_rates

        width = 160 if args.quick else 800
        figures["decode_frames_per_core_second"] = decode_rates(
            work / "formats", args.decode_frames, args.image_size, width, repeats=1 if args.quick else 3
        )
    if args.startup_files:
        from bench_formats import startup_scaling

        figures["startup_scaling"] = startup_scaling(work, [int(n) for n in args.startup_files.split(",")])
    options = {k: v for k, v in vars(args).items() if k != "accelerator"}
    return {"machine": machine(args.accelerator), "options": options, "figures": figures, "ratios": ratios(figures)}


def measure_pipeline(args, work: Path, root: Path, items: list) -> dict:
    """(a)-(e), in this process."""
    from carotid.data.loaders import frame_dataset, make_loader

    figures: dict = {}
    steps = max(len(items) // args.batch_size, 1)
    figures["compute_ceiling_images_per_second"] = measure_ceiling(args, steps, args.compile)
    from bench_bags import bag_vs_frame_step

    figures |= bag_vs_frame_step(args, steps, make_trainer, train_epochs)
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
    return figures | measure_discovery(tree)


def ceiling_row(args) -> int:
    """--ceiling-only: figure (a) for --model and the peak resident memory of this process (model, AdamW state,
    activations of one batch, the libraries), as a docs/PERFORMANCE.md row."""
    from carotid.core.runtime import build_accelerator
    from carotid.model.registry import check_arch

    check_arch(args.model)
    args.accelerator, _ = build_accelerator(mixed_precision=args.mixed_precision)
    steps = 4 if args.quick else 8
    before = resource.getrusage(resource.RUSAGE_SELF)
    images_per_second = measure_ceiling(args, steps, args.compile)
    after = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds per image over the whole measurement (warm-up included): on a shared machine wall-clock
    # images/s moves with the other jobs, the CPU time each image costs much less.
    images = args.batch_size * (min(steps, 5) + steps * max(args.epochs - 1, 1))
    cpu_per_image = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / images
    peak_mib = after.ru_maxrss / 1024  # Linux: KiB
    row = {
        "model": args.model,
        "device": str(args.accelerator.device),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "images_per_second": images_per_second,
        "cpu_seconds_per_image": cpu_per_image,
        "peak_rss_mib": peak_mib,
        "load_average": os.getloadavg()[0],
    }
    print(
        f"| {args.model} | {args.accelerator.device} | {args.image_size} | {args.batch_size} | "
        f"{images_per_second:.1f} | {cpu_per_image:.3f} | {peak_mib:.0f} | {row['load_average']:.1f} |"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=2) + "\n", encoding="utf-8")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the CPU figures must not touch a GPU
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.ceiling_only:
        return ceiling_row(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="carotid-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(args, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(table(result["figures"], result["ratios"], args))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
