"""What every comparison shares: the options, the generated data, whole processes timed, pairs run
interleaved, the ratio with its spread, and the table (Markdown and CSV) with the machine in its header.

A comparison module (benchmarks/<name>.py) holds `TITLE` and `run(ctx) -> list[Row]`; it imports this module
and never another comparison (benchmarks/__main__.py imports them all)."""

from __future__ import annotations

import csv
import io
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Options:
    """What a run measures on; --quick shrinks every size for the test suite."""

    work: Path
    quick: bool = False
    pairs: int = 5  # interleaved pairs per comparison
    model: str = "small_cnn"
    image_size: int = 224
    batch_size: int = 32
    epochs: int = 3
    num_workers: int = 2
    persons: int = 8
    frames: int = 40  # 800x600 JPEG frames per person
    startup_files: tuple[int, ...] = (1000, 200000)
    predict_frames: int = 10000
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick_options(cls, work: Path) -> Options:
        # 3 persons a class, so that both classes are in the training split
        return cls(
            work, True, pairs=1, image_size=32, batch_size=8, epochs=1, num_workers=0, persons=6, frames=4,
            startup_files=(200, 400), predict_frames=64,
        )  # fmt: skip


@dataclass
class Row:
    """One comparison: B against A (ratio = B / A, so < 1 means B is faster when the unit is seconds)."""

    comparison: str
    a: str
    b: str
    unit: str
    a_value: float | None = None
    b_value: float | None = None
    ratio: float | None = None
    low: float | None = None  # the smallest and largest ratio of a pair
    high: float | None = None
    pairs: int = 0
    target: str = ""
    met: bool | None = None
    note: str = ""


def pair_row(comparison: str, a: str, b: str, unit: str, a_values, b_values, target: str = "", le=None) -> Row:
    """The row of interleaved pairs: medians of each side, the median of the pairs' ratios (B/A) and their
    range; `le`: the target as a bound the median ratio must not exceed."""
    ratios = [y / x for x, y in zip(a_values, b_values) if x]
    ratio = statistics.median(ratios) if ratios else None
    return Row(
        comparison, a, b, unit, statistics.median(a_values), statistics.median(b_values), ratio,
        min(ratios, default=None), max(ratios, default=None), len(ratios), target,
        None if le is None or ratio is None else ratio <= le,
    )  # fmt: skip


def interleaved(pairs: int, a, b) -> tuple[list, list]:
    """`a()` and `b()` once per pair, the order flipping every pair: on a shared machine, load that comes and
    goes over minutes then falls on both sides of a ratio alike."""
    out_a, out_b = [], []
    for i in range(pairs):
        if i % 2 == 0:
            out_a.append(a())
            out_b.append(b())
        else:
            out_b.append(b())
            out_a.append(a())
    return out_a, out_b


# ---------------------------------------------------------------------------------------------
# Whole processes
# ---------------------------------------------------------------------------------------------

# Run first in a timed training process: it notes the wall-clock time and the process's CPU seconds at its
# first optimizer step in the file named by CAROTID_BENCH_FIRST_STEP (and exits there if
# CAROTID_BENCH_EXIT_AT_FIRST_STEP is set). It imports torch before anything else, on both sides alike.
FIRST_STEP_HOOK = """
import os, time
import torch.optim.optimizer as _optimizer

def _first_step(optimizer, args, kwargs):
    _hook.remove()
    with open(os.environ["CAROTID_BENCH_FIRST_STEP"], "w") as out:
        out.write(f"{time.time()!r} {time.process_time()!r}")
    if os.environ.get("CAROTID_BENCH_EXIT_AT_FIRST_STEP"):
        os._exit(0)

_hook = _optimizer.register_optimizer_step_post_hook(_first_step)
"""


def compile_checkout() -> None:
    """Byte-compiles this checkout's carotid and benchmarks, as installing a package does: every timed process
    then loads them as an installed carotid loads, even where PYTHONDONTWRITEBYTECODE is set (compiling 110
    modules from source put ~0.3 s on carotid's side of the first step, and on both sides of the start-up)."""
    import compileall

    for package in ("carotid", "benchmarks"):
        compileall.compile_dir(REPO / package, quiet=1)


def child_env(**extra: str) -> dict:
    """This environment with this checkout first on the path, no progress bars and no GPU."""
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def module_command(module: str, argv: list[str], first_step_hook: bool = False) -> list[str]:
    """`python -c ...` running `module` as __main__ (after the first-step hook when asked)."""
    run = f"import runpy; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-c", (FIRST_STEP_HOOK if first_step_hook else "") + "\n" + run, *argv]


def timed_process(command: list[str], env: dict, first_step_file: Path | None = None, ok=(0,)) -> dict:
    """Wall and CPU seconds of a whole process (CPU: user + system, with the workers it reaped) and, when
    `first_step_file` is given, both at its first optimizer step (CPU: the main process alone)."""
    if first_step_file is not None:
        first_step_file.unlink(missing_ok=True)
        env = dict(env, CAROTID_BENCH_FIRST_STEP=str(first_step_file))
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode not in ok:
        raise RuntimeError(f"{' '.join(command[:3])[:200]} … exit {result.returncode}:\n{result.stderr[-3000:]}")
    out = {"seconds": seconds, "cpu_seconds": after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime}
    if first_step_file is not None:
        wall, cpu = map(float, first_step_file.read_text().split())
        out |= {"first_step_seconds": wall - started, "first_step_cpu_seconds": cpu}
    return out


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def write_person(folder: Path, person: dict, frames: int, seed: int, width: int = 800) -> None:
    """Grey JPEG frames (800x600 by default) of one synthetic person: two B-mode images (carotid.data.demo),
    shifted and with fresh noise per frame so that every file differs and decodes at a realistic cost."""
    import numpy as np
    from PIL import Image

    from carotid.data.demo import synth_frame

    rng = np.random.default_rng(seed)
    height = width * 3 // 4
    bases = [synth_frame(rng, person, t, width, height).astype(np.int16) for t in (0.0, 0.5)]
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        noise = rng.integers(-8, 9, (height, width), dtype=np.int16)
        frame = np.roll(bases[k % 2], int(rng.integers(-6, 7)), axis=1) + noise
        Image.fromarray(np.clip(frame, 0, 255).astype(np.uint8), mode="L").save(
            folder / f"frame_{k:04d}.jpg", quality=90
        )


def jpeg_dataset(root: Path, persons: int, frames: int, width: int = 800) -> tuple[Path, Path]:
    """(root, label.xlsx): per-person folders of JPEG frames, written once by all cores (kept in the work
    folder, so every comparison of a run reads the same files)."""
    label = root / "label.xlsx"
    if label.is_file():
        return root, label
    import numpy as np

    from carotid.data.demo import CLASSES, make_persons, write_label_excel

    people = make_persons(persons, np.random.default_rng(0))
    with ProcessPoolExecutor(min(os.cpu_count() or 1, persons)) as pool:
        folders = [root / str(p["id"]) for p in people]
        list(pool.map(write_person, folders, people, [frames] * persons, range(persons), [width] * persons))
    write_label_excel(label, [(p["id"], CLASSES[int(p["plaque"])]) for p in people])
    return root, label


def training_dataset(opts: Options) -> tuple[Path, Path]:
    return jpeg_dataset(opts.work / "frames", opts.persons, opts.frames, 160 if opts.quick else 800)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------

COLUMNS = ["comparison", "a", "b", "unit", "a_value", "b_value", "ratio", "low", "high", "pairs", "target", "met"]


def machine() -> dict:
    import torch

    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _range(row: Row) -> str:
    return f"{_cell(row.low)}–{_cell(row.high)}" if row.pairs else "—"


def markdown(rows: list[Row], facts: dict, load_end: tuple, command: str) -> str:
    load = "/".join(f"{x:.1f}" for x in facts["load_average"])
    gpus = ", ".join(facts["gpus"]) or "no GPU"
    head = [
        f"Machine: {facts['usable_cores']} cores ({facts['platform']}), {gpus}; Python {facts['python']}, "
        f"torch {facts['torch']}. Load average (1/5/15 min) {load} at the start, "
        f"{'/'.join(f'{x:.1f}' for x in load_end)} at the end: on a loaded machine absolute times move with "
        "the other jobs; the ratios of interleaved pairs are the figures.",
        "",
        f"`{command}`",
        "",
        "| comparison | A | B | unit | A | B | B/A (median) | range | pairs | target | met | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    body = [
        f"| {r.comparison} | {r.a} | {r.b} | {r.unit} | {_cell(r.a_value)} | {_cell(r.b_value)} | {_cell(r.ratio)} | "
        f"{_range(r)} | {r.pairs} | {r.target} | {_cell(r.met)} | {r.note} |"
        for r in rows
    ]
    return "\n".join(head + body) + "\n"


def csv_text(rows: list[Row], facts: dict) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, [*COLUMNS, "note", "cores", "load_average", "torch"], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            asdict(row)
            | {
                "cores": facts["usable_cores"],
                "load_average": "/".join(f"{x:.2f}" for x in facts["load_average"]),
                "torch": facts["torch"],
            }
        )
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# carotid.train against the hand-written loop (whole_run, first_step)
# ---------------------------------------------------------------------------------------------


def training_commands(opts: Options, augment: str = "ultrasound") -> dict[str, list[str]]:
    """{"hand-written": ..., "carotid.train": ...}: the two training processes on the same frames, model,
    batch, optimizer, augmentation and validation persons (carotid.train's split, written for the loop)."""
    import json

    from benchmarks.handwritten import handwritten_model
    from carotid.data.manifest import collect_persons
    from carotid.data.sheet.labels import read_labels
    from carotid.data.split import split_persons
    from carotid.model.registry import build_model

    root, label = training_dataset(opts)
    reference = handwritten_model(opts.model, 2).state_dict()
    ours = build_model(opts.model, 2, 1).state_dict()
    if {k: v.shape for k, v in reference.items()} != {k: v.shape for k, v in ours.items()}:
        raise RuntimeError(f"the hand-written {opts.model} is not carotid's")
    manifest = collect_persons(str(root), read_labels(str(label)), None)
    splits, _ = split_persons(manifest.person_labels, 0.7, 0.15, 0.15, 42)  # carotid.train's defaults
    splits_file = opts.work / "splits.json"
    splits_file.write_text(json.dumps(splits), encoding="utf-8")
    common = [
        "--root-dir", str(root), "--label-excel", str(label), "--model", opts.model,
        "--image-size", str(opts.image_size), "--batch-size", str(opts.batch_size), "--epochs", str(opts.epochs),
        "--num-workers", str(opts.num_workers), "--seed", "42", "--augment", augment,
    ]  # fmt: skip
    hand = ["--splits", str(splits_file), "--output-dir", str(opts.work / "handwritten")]
    return {
        "hand-written": module_command("benchmarks.handwritten", common + hand, first_step_hook=True),
        "carotid.train": module_command(
            "carotid.train",
            common + ["--person-model", "frames", "--no-test", "--output-dir", str(opts.work / "runs")],  # as the loop
            first_step_hook=True,
        ),
    }


# ---------------------------------------------------------------------------------------------
# carotid's training step in this process (bag_step, gpu)
# ---------------------------------------------------------------------------------------------

BAG_SIZE = 8  # frames per person in a bag step (carotid.train's --bag-size default)


def make_trainer(model_name: str, image_size: int, accelerator, person_model: str | None = None) -> dict:
    """Model, AdamW and the training preset, prepared as carotid.training.trainer prepares them."""
    import torch

    from carotid.data.frames.transforms import train_preset
    from carotid.model.person import PersonModel
    from carotid.model.registry import build_model
    from carotid.training.optim import make_optimizer

    model = (
        PersonModel(model_name, 2, 1, pooling=person_model, image_size=image_size)
        if person_model
        else build_model(model_name, 2, 1, image_size=image_size)
    ).to(memory_format=torch.channels_last)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, 1e-4, 1e-4))
    preset = train_preset("ultrasound", 1).to(accelerator.device)
    return {"model": model, "optimizer": optimizer, "accelerator": accelerator, "preset": preset}


def epoch_seconds(trainer: dict, batches: list) -> float:
    """Seconds of one epoch of carotid's training step over `batches`."""
    from carotid.training.engine import EpochProgress, train_one_epoch

    start = time.perf_counter()
    train_one_epoch(
        trainer["model"], batches, trainer["optimizer"], trainer["accelerator"], trainer["preset"],
        epoch=0, epochs=1, progress=EpochProgress(), channels_last=True,
    )  # fmt: skip
    return time.perf_counter() - start


def step_batches(batch_size: int, image_size: int, device) -> tuple[tuple, tuple]:
    """(frame batch, bag batch) of the same uint8 frames: the frame batch labels each frame with its person's
    label; the bag batch has a label per person and `bag`, the person of each frame."""
    import torch

    persons = max(batch_size // BAG_SIZE, 1)
    n = persons * BAG_SIZE
    frames = torch.randint(0, 256, (n, 1, image_size, image_size), dtype=torch.uint8, device=device)
    bag = torch.arange(persons, device=device).repeat_interleave(BAG_SIZE)
    person_labels = torch.arange(persons, device=device) % 2
    index, status = torch.arange(n, device=device), torch.ones(n, dtype=torch.bool, device=device)
    return (frames, person_labels[bag], index, status), (frames, person_labels, index, status, bag)
