"""A site's NVIDIA FLARE client: FLARE's Client API around carotid's framework-neutral local round.

FLARE runs this file at each site (the job's `train_script`), with the site's own data settings as arguments:

    python flare_client.py --root-dir /data/us --label-excel /data/labels.xlsx --output-dir /data/carotid_sites
        [--sheet S --header-row N --id-column C --label-column C --group-column C --max-imgs-per-person N
         --cache ... --num-workers N --processes N]

`--processes N` (N > 1) trains and scores each round on N processes (GPUs) of the site's machine: the client
stays one process for FLARE and runs the round under `accelerate launch` (`carotid.federated.site_round`).

The coordinator's options (backbone, image size, batch size, …, the federated run's name, local epochs, FedBN)
come in the job itself, as `carotid_flare.json` beside this file (`carotid.federated.flare_job` writes it). Each
round: the global weights are scored on the site's validation persons (the numbers FLARE's FedAvg averages and
its best-model choice reads), then trained for the local epochs; the new weights go back with the number of
training persons as FedAvg's weight (`NUM_STEPS_CURRENT_ROUND`). Nothing else leaves the site: no person ID,
path or per-person row. The site's split, data report and log stay in OUTPUT_DIR/<run name>/, as with Flower.
FedProx's mu arrives in the round's metadata (FLARE's `FedProxRecipe`); FedBN keeps the norm layers at the site.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nvflare.client as flare
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.app_constant import AlgorithmConstants

from carotid.core.errors import UserError, run_cli
from carotid.core.files import read_table_rows, write_table
from carotid.core.options import opt, parse_options
from carotid.federated.site_round import RoundTask, site_round
from carotid.training.config import TRAIN_GROUPS, TrainConfig
from carotid.training.site import (
    PROCESSES,
    SITE_OPTIONS,
    open_site,
    site_accelerator,
    site_options,
    site_processes,
    site_run_dir,
)

JOB_OPTIONS = "carotid_flare.json"  # the coordinator's options, shipped in the job beside this file
# The site's rounds, at the site: seconds waiting for the global weights, scoring, training, sending, and the
# numbers it sent (what left the site, for the hospital to see)
TIMINGS = "flare_rounds.csv"
SECONDS = ["receive_s", "evaluate_s", "train_s", "send_s"]


def read_job_options(folder: Path) -> tuple[TrainConfig, dict]:
    """(the coordinator's TrainConfig, the federated settings: run_name, class_names, local_epochs, keep_local)."""
    job = json.loads((folder / JOB_OPTIONS).read_text(encoding="utf-8"))
    return TrainConfig(**job.pop("options")), job


@dataclass
class SiteArguments(TrainConfig):
    processes: int = opt(1, "Processes (GPUs) of this machine the site trains each round on.", group="site")


def site_settings(argv: Sequence[str]) -> dict:
    """The site's own options (`carotid.training.site.SITE_OPTIONS`, and its processes) from the script's
    arguments."""
    groups = TRAIN_GROUPS | {"site": "site"}
    parsed, given = parse_options(SiteArguments, argv, "flare_client.py", __doc__.split("\n\n")[0], groups)
    other = sorted(given - {*SITE_OPTIONS, PROCESSES})
    if other:
        flags = ", ".join("--" + name.replace("_", "-") for name in other)
        raise UserError(f"{flags} are the coordinator's options, not a site's", "set them in the FLARE job")
    return {name: getattr(parsed, name) for name in given}


def run_site(cfg: TrainConfig, job: dict, processes: int = 1) -> None:
    """The Client API loop: receive the global weights, score them, train them, send them back."""
    accelerator = site_accelerator(cfg)
    if accelerator.num_processes > 1:
        # FLARE's Client API talks to one process, which launches the round's processes itself.
        raise UserError(
            "a FLARE site's client is one process", "start it without accelerate launch; give it --processes N instead"
        )
    run_name, keep_local = job["run_name"], job["keep_local"]
    manifest, _ = open_site(accelerator, cfg, run_name)  # a bad sheet or no frames stop this site before round 1
    if processes > 1:
        print(f"this site trains each round on {processes} processes (accelerate launch)", flush=True)
    if list(manifest.class_names) != list(job["class_names"]):
        raise UserError(
            f"this site's classes {manifest.class_names} differ from the job's {job['class_names']}",
            "give every site the same class names in its label column",
        )
    # Per round, at the site: what the round spent where (benchmarks/federated_round.py reads it) and what it sent;
    # a resumed run keeps the rows of the rounds before it.
    timings_file = site_run_dir(cfg, run_name) / TIMINGS
    timings = read_table_rows(timings_file)[1:] if timings_file.is_file() else []
    clock = time.perf_counter()
    while flare.is_running():  # waits for the next task: the other sites, the aggregation, the transport
        incoming = flare.receive()
        received = time.perf_counter()
        scoring = RoundTask(evaluate=True, keep_local=keep_local)
        scores, _ = site_round(cfg, run_name, incoming.params, scoring, processes)
        scored = time.perf_counter()
        task = RoundTask(
            train=True,
            epochs=job["local_epochs"],
            round_number=incoming.current_round + 1,
            proximal_mu=float((incoming.meta or {}).get(AlgorithmConstants.FEDPROX_MU) or 0.0),
            keep_local=keep_local,
        )
        _, result = site_round(cfg, run_name, incoming.params, task, processes)
        trained = time.perf_counter()
        metrics = {f"global_{k}": v for k, v in scores.items() if k in ("val_person_auc", "val_loss")}
        metrics |= {f"local_{k}": v for k, v in result.metrics.items() if k != "val_persons"}
        metrics |= {"val_persons": scores["val_persons"], "train_persons": result.train_persons}
        sent = {k: float("nan") if v is None else float(v) for k, v in metrics.items()}
        flare.send(
            FLModel(
                params=result.weights,
                metrics=sent,
                meta={"NUM_STEPS_CURRENT_ROUND": result.train_persons},  # FedAvg's weight: training persons
            )
        )
        done = time.perf_counter()
        seconds = [received - clock, scored - received, trained - scored, done - trained]
        clock = done
        timings = [row for row in timings if int(row[0]) < incoming.current_round + 1]
        timings.append([incoming.current_round + 1, *(f"{x:.3f}" for x in seconds), *sent.values()])
        write_table(timings_file, ["round", *SECONDS, *sent], timings)


def _main(argv: Sequence[str] | None, job_folder: Path) -> int:
    flare.init()
    coordinator, job = read_job_options(job_folder)
    site = site_settings(sys.argv[1:] if argv is None else argv)
    run_site(site_options(coordinator, site), job, site_processes(site))
    return 0


def main(argv: Sequence[str] | None = None, job_folder: Path | None = None) -> int:
    """`job_folder`: where the job's carotid_flare.json lies (the job's custom/ folder at the site)."""
    return run_cli(lambda args: _main(args, job_folder or Path.cwd() / "custom"), argv)


if __name__ == "__main__":
    sys.exit(main())
