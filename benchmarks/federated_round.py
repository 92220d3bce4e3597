"""A federated round on loopback against the sites' own work in it: carotid's FLARE job (python -m carotid.flare) in
FLARE's simulator, 2 demo sites, each round timed by the server and by each site.

Per round: A = the slowest site's own work (scoring the global weights on its validation persons + its local
epochs, from the site's flare_rounds.csv); B = the server's whole round, from its "Round r started." to the next
banner (sending the global weights, the sites' work, receiving and aggregating their weights, persisting the global
model; from FLARE's server log). B / A − 1 is the round's overhead (serialising, loopback transport, the task
protocol, aggregation) as a share of the local work; target ≤ 10%. Round 1 also starts each site's client process
and reads its data, so it is left out. The pairs are the rounds of one run (not interleaved runs).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from datetime import datetime
from pathlib import Path

from benchmarks.common import Options, Row, child_env, pair_row, timed_process

TITLE = "a federated round's overhead (FLARE, loopback)"
TIMINGS = "flare_rounds.csv"  # carotid.federated.flare_client.TIMINGS (not imported: nvflare may be absent)
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
BANNER = re.compile(r"^\s+(Round \d+ started\.|Finished FedAvg\.)\s*$")


def round_walls(server_log: Path) -> dict[int, float]:
    """Round number (1-based) → seconds from its banner to the next one, from FLARE's server log."""
    starts: list[datetime] = []
    last = None
    for line in server_log.read_text(encoding="utf-8", errors="replace").splitlines():
        stamp = STAMP.match(line)
        if stamp:
            last = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f")
        elif BANNER.match(line) and last is not None:
            starts.append(last)
    return {r + 1: (starts[r + 1] - starts[r]).total_seconds() for r in range(len(starts) - 1)}


def site_work(timing_files: list[Path]) -> dict[int, float]:
    """Round → the slowest site's scoring + training seconds."""
    import csv

    work: dict[int, float] = {}
    for path in timing_files:
        with path.open(encoding="utf-8") as rows:
            for row in csv.DictReader(rows):
                seconds = float(row["evaluate_s"]) + float(row["train_s"])
                work[int(row["round"])] = max(work.get(int(row["round"]), 0.0), seconds)
    return work


def rounds_of(server_log: Path, timing_files: list[Path]) -> list[tuple[int, float, float]]:
    """(round, the slowest site's work, the server's round) for rounds ≥ 2."""
    walls, work = round_walls(server_log), site_work(timing_files)
    return [(r, work[r], walls[r]) for r in sorted(walls) if r in work and r > 1]


def cli_run_rounds(output_dir: Path) -> list[tuple[int, float, float]]:
    """The rounds of the one `python -m carotid.flare` run in output_dir."""
    (run_dir,) = output_dir.glob("flare_*")
    server_log = run_dir / "simulation" / run_dir.name / "server" / "log.txt"
    return rounds_of(server_log, sorted(output_dir.glob(f"sites/*/{run_dir.name}/{TIMINGS}")))


def run(opts: Options) -> list:
    comparison = "federated round (FLARE simulator, 2 sites, loopback): the round against its local work"
    if importlib.util.find_spec("nvflare") is None:
        return [Row(comparison, "local work", "round", "s", note="not measured: pip install 'carotid[flare]'")]
    from carotid.data.demo_sites import make_demo_sites

    persons, frames, rounds = (30, 2, 2) if opts.quick else (60, 12, 6)  # round 1 is left out: ≥ 2 rounds
    data = opts.work / "federated_sites"
    if not (data / "sites.csv").is_file():
        make_demo_sites(data, 2, persons, "noniid", 8, frames, 64, seed=0)
    argv = ["--rounds", str(rounds), "--local-epochs", "1", "--model", opts.model, "--image-size", "32"]
    argv += ["--person-model", "frames"]  # the frame model the overhead row was first measured with
    argv += ["--batch-size", "8", "--num-workers", "0", "--output-dir", str(opts.work / "federated_run")]
    for name in ("site_1", "site_2"):
        argv += ["--site", name, str(data / name), str(data / name / "label.xlsx")]
    timed_process([sys.executable, "-m", "carotid.flare", *argv], child_env(OMP_NUM_THREADS="1"))
    measured = cli_run_rounds(opts.work / "federated_run")
    row = pair_row(
        comparison, "the slowest site's work (score + train)", "the server's round", "s",
        [work for _, work, _ in measured], [wall for _, _, wall in measured], "B/A ≤ 1.10 (overhead ≤ 10%)", le=1.10,
    )  # fmt: skip
    row.note = f"{opts.model}, 32 px, {frames} frames x {persons // 2} persons a site, rounds 2-{rounds}"
    return [row]
