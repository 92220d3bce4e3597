"""python -m benchmarks [NAME ...]: run the comparisons (all by default) and write the table."""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, Options, Row, compile_checkout, csv_text, machine, markdown

# In the order they run: the targets first, so that a run cut short still has them in its table.
COMPARISONS = (
    "first_step", "whole_run", "startup", "bag_step", "help", "predict", "cache", "decode", "strategies",
    "federated_round",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(":")[1].strip())
    add = parser.add_argument
    add("names", nargs="*", metavar="NAME", help=f"Comparisons to run (default: all): {', '.join(COMPARISONS)}.")
    add("--quick", action="store_true", help="Tiny sizes, one pair each (the test suite's run).")
    add("--pairs", type=int, help="Interleaved pairs per comparison (default: 5; 1 with --quick).")
    add("--out", default=str(REPO / "docs" / "benchmark-results"), help="Writes OUT.md and OUT.csv.")
    add("--work-dir", help="Generated data and runs (default: a temporary folder, deleted at the end).")
    add("--frames", type=int, help="800x600 JPEG frames per person of the training data (default: 40; 8 persons).")
    add("--predict-frames", type=int, help="Frames the predict comparison reads (default: 10000).")
    add("--timm-train", help="A copy of timm's train.py, for the whole-run row against it.")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in COMPARISONS]
    if unknown:
        parser.error(f"unknown comparison {unknown[0]!r} — choose from {', '.join(COMPARISONS)}")
    return args


def run_all(names: list[str], opts: Options, write) -> tuple[list[Row], int]:
    """Each comparison in turn; the table is rewritten after each (`write(rows)`)."""
    rows, failed = [], 0
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"{name}: {module.TITLE} …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            rows += module.run(opts)
        except Exception as error:  # noqa: BLE001 — a failed comparison is a row; the others still run
            failed += 1
            rows.append(Row(name, "", "", "", note=f"failed: {type(error).__name__}: {str(error)[-300:]}"))
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        write(rows)
    return rows, failed


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch loads: these are the CPU rows (GPU: benchmarks.gpu)
    compile_checkout()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="carotid-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = Options.quick_options(work) if args.quick else Options(work)
    if args.pairs:
        opts.pairs = args.pairs
    opts.frames = args.frames or opts.frames
    opts.predict_frames = args.predict_frames or opts.predict_frames
    opts.extra["timm_train"] = args.timm_train
    facts = machine()
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(rows: list[Row]) -> str:
        table = markdown(rows, facts, os.getloadavg(), command.strip())
        out.with_name(out.name + ".md").write_text(table, encoding="utf-8")
        out.with_name(out.name + ".csv").write_text(csv_text(rows, facts), encoding="utf-8")
        return table

    try:
        rows, failed = run_all(args.names or list(COMPARISONS), opts, write)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(write(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
