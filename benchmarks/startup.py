"""Start-up against the number of frames: a fresh process that imports, reads the labels, finds and checks
the frames (`collect_persons`, the shared-files check included), splits the persons and loads the first
batch, on a tree of the smallest and of the largest size (valid 64x48 PNG files, hard links of one file per
person: seconds to make). The sizes run interleaved; the ratio is largest / smallest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.common import Options, child_env, interleaved, pair_row

TITLE = "start-up to the first batch, 200k frames against 1k"

STARTUP = r"""
import json, sys, time
START = time.perf_counter()
from carotid.data.sheet.labels import read_labels
from carotid.data.manifest import collect_persons
from carotid.data.split import split_persons
from carotid.data.loaders import frame_dataset, make_loader
imported = time.perf_counter()
table = read_labels(sys.argv[2])
manifest = collect_persons(sys.argv[1], table, None)
checked = time.perf_counter()
splits, _ = split_persons(manifest.person_labels, 0.7, 0.15, 0.15, 0)
manifest.splits = splits
loader = make_loader(frame_dataset(manifest.frames_of("train"), 224, 1), 32, train=True, num_workers=0, seed=0)
next(iter(loader))
done = time.perf_counter()
print(json.dumps({"imports_s": imported - START, "collect_s": checked - imported, "first_batch_s": done - START,
                  "first_batch_cpu_s": time.process_time(), "frames": manifest.report["images_used"]}))
"""


def make_png_tree(root: Path, files: int, persons: int = 200) -> Path:
    """`files` valid 64x48 PNG files over `persons` person folders (hard links of one distinct file per
    person: a file system allows ~65,000 links to one file), and label.xlsx."""
    import numpy as np
    from PIL import Image

    from carotid.data.demo import write_label_excel

    root.mkdir(parents=True, exist_ok=True)
    per_person = -(-files // persons)
    for p in range(persons):
        folder = root / f"{100000 + p}"
        folder.mkdir(exist_ok=True)
        first = folder / "frame_0000.png"
        if not first.exists():
            pixels = np.random.default_rng(p).integers(0, 256, (48, 64), dtype=np.uint8)
            Image.fromarray(pixels).save(first)
        for k in range(1, min(per_person, files - p * per_person)):
            target = folder / f"frame_{k:04d}.png"
            if not target.exists():
                os.link(first, target)
    write_label_excel(root / "label.xlsx", [(str(100000 + p), "ab"[p % 2]) for p in range(persons)])
    return root


def startup_run(root: Path, env: dict) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", STARTUP, str(root), str(root / "label.xlsx")],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(opts: Options) -> list:
    small, large = min(opts.startup_files), max(opts.startup_files)
    trees = {n: make_png_tree(opts.work / f"tree_{n}", n, persons=min(200, n // 2)) for n in (small, large)}
    env = child_env(PYTHONWARNINGS="ignore", XDG_CACHE_HOME=str(opts.work / "xdg-cache"))
    for tree in trees.values() if not opts.quick else ():  # --quick checks that it runs, not the figure
        startup_run(tree, env)  # warm: the page cache, and the shared-files check's digests
    a, b = interleaved(opts.pairs, lambda: startup_run(trees[small], env), lambda: startup_run(trees[large], env))
    return [
        pair_row(
            f"start-up to the first batch, {large:,} vs {small:,} frames", f"{small:,} frames", f"{large:,} frames",
            "s", [r["first_batch_s"] for r in a], [r["first_batch_s"] for r in b], "≤ 1.3", le=1.3,
        ),
        pair_row(
            "start-up to the first batch, CPU s of the process", f"{small:,} frames", f"{large:,} frames", "CPU s",
            [r["first_batch_cpu_s"] for r in a], [r["first_batch_cpu_s"] for r in b],
        ),
        pair_row(
            "collect_persons (discovery, counts, checks)", f"{small:,} frames", f"{large:,} frames", "s",
            [r["collect_s"] for r in a], [r["collect_s"] for r in b],
        ),
    ]  # fmt: skip
