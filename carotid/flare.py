"""Federated training with NVIDIA FLARE on one machine: carotid's FLARE job in FLARE's simulator.

    python -m carotid.flare --site hospA A/ a.xlsx --site hospB B/ b.xlsx id-column=MRN \\
        --rounds 10 --local-epochs 1 --model resnet18 --output-dir OUT [--keep-local norm | --fedprox-mu 0.01]

builds the FedAvg job (`carotid.federated.flare_job`: FedProx with --fedprox-mu, FedBN with --keep-local norm) and
runs it in FLARE's simulator, each site's client a process of its own. The options are carotid.federate's (every
carotid.train option; --site with its own sheet settings as KEY=VALUE). The coordinator's folder
OUT/flare_YYYYMMDD_HHMMSS/ holds config.yaml, models/final_model.pth (an ordinary carotid model file), the job
(job/) and FLARE's server workspace and log (simulation/); each site's own files are in OUT/sites/NAME/flare_…/
(its FLARE log and app in flare_simulation/, which the simulator writes beside the server's and carotid moves to
the site; with FedBN also the site's own model, models/site_model.pth). `--export DIR` writes the job folder
instead, for `nvflare job submit -j DIR/flare_…` on a FLARE deployment (docs/FEDERATED.md). `--resume OUT/flare_…`
(with the same --site arguments; --rounds to extend) continues after the last round FLARE's server finished, from
its global model, with the run's own options.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from carotid.core.errors import UserError, run_cli
from carotid.core.options import opt, parse_options
from carotid.federated.options import SEPARATOR, FederateConfig, parse_sites
from carotid.training.config import TRAIN_GROUPS

NOT_HERE = {  # options of carotid.train / carotid.federate that a FLARE run has no use for, and what to do instead
    "root_dir": "give each site's data with --site NAME ROOT_DIR LABEL_EXCEL",
    "label_excel": "give each site's data with --site NAME ROOT_DIR LABEL_EXCEL",
    "epochs": "use --rounds and --local-epochs",
    "test": "evaluate the model file with carotid-evaluate at a site",
    "demo": "make demo sites with python -m carotid.demo --sites 3",
    "min_sites": "a FLARE run waits for every site; use carotid.federate (Flower) to go on without one",
    "round_timeout_minutes": "use carotid.federate (Flower) for round timeouts",
}
# With --resume the run's own options apply; besides these, only a site's own settings may be given.
RESUME_TAKES = {"site", "resume", "rounds", "site_processes"}


@dataclass
class FlareConfig(FederateConfig):
    export: str | None = opt(
        None,
        "Write the FLARE job folder into DIR (for nvflare job submit) instead of running the simulator.",
        group="federated",
        metavar="DIR",
    )


def parse_flare_args(argv: Sequence[str]) -> tuple[FlareConfig, set[str]]:
    joined, words = [], list(argv)
    while words:  # each --site's words become one value, as carotid.federate reads them
        joined.append(words.pop(0))
        if joined[-1] == "--site":
            spec = []
            while words and not words[0].startswith("--"):
                spec.append(words.pop(0))
            joined.append(SEPARATOR.join(spec))
    description = __doc__.split("\n\n")[0]
    groups = TRAIN_GROUPS | {"federated": "federated"}
    return parse_options(FlareConfig, joined, "carotid-flare", description, groups, config_file=True)


def site_classes(sites: dict[str, dict]) -> list[str]:
    """The class names every site's sheet agrees on (read as carotid.train reads them), else the error."""
    from carotid.data.sheet.labels import read_labels

    found = {}
    for name, site in sites.items():
        try:
            table = read_labels(
                site["label_excel"], site.get("sheet"), site.get("id_column"), site.get("label_column"),
                header_row=site.get("header_row"), group_column=site.get("group_column"),
            )  # fmt: skip
        except UserError as err:
            raise UserError(f"site {name}: {err.what}", err.fix) from None
        found[name] = table.class_names
    first, classes = next(iter(found.items()))
    for name, other in found.items():
        if other != classes:
            raise UserError(
                f"site {name}'s classes {other} differ from site {first}'s {classes}",
                "give every site the same class names in its label column",
            )
    return classes


def run(cfg: FlareConfig, given: set[str]) -> Path:
    """Simulate (or export) the FLARE run; returns the coordinator's folder (or the exported job)."""
    import yaml

    from carotid.federated import flare_job

    for name in sorted(given & set(NOT_HERE)):
        raise UserError(f"--{name.replace('_', '-')} is not an option of carotid-flare", NOT_HERE[name])
    if cfg.resume:
        return resume(cfg, given)
    output_dir, run_name = Path(cfg.output_dir).resolve(), time.strftime("flare_%Y%m%d_%H%M%S")
    run_dir = output_dir / run_name
    if run_dir.exists():
        raise UserError(f"{run_dir} exists already", "wait a second and start again")
    sites = {
        name: {key.replace("-", "_"): value for key, value in settings.items()}
        | {"output_dir": str(output_dir / "sites" / name)}
        for name, settings in parse_sites(cfg).items()
    }
    classes = site_classes(sites)
    train_cfg = cfg.train_options()
    recipe = flare_job.build_recipe(
        train_cfg, classes, sites, run_dir / "job", run_name=run_name, rounds=cfg.rounds,
        local_epochs=cfg.local_epochs, keep_local=cfg.keep_local, fedprox_mu=cfg.fedprox_mu,
    )  # fmt: skip
    if cfg.export:
        job = flare_job.export(recipe, run_dir / "job", Path(cfg.export)) / run_name
        print(f"FLARE job written to {job}; submit it with: nvflare job submit -j {job}")
        return job
    federated = {k: getattr(cfg, k) for k in ("rounds", "local_epochs", "fedprox_mu", "keep_local")}
    options = {k: v for k, v in vars(train_cfg).items() if k not in ("root_dir", "label_excel")}
    config = {"options": options, "federated": federated, "class_names": classes, "sites": list(sites)}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    print(f"sites: {', '.join(sites)}; FLARE's server workspace and log: {run_dir / 'simulation'}", flush=True)
    folders = site_folders(sites, run_name, "simulation")
    simulation = flare_job.simulate(recipe, run_dir / "job", folders, run_dir / "simulation", cfg.rounds)
    save_models(run_dir, train_cfg, classes, sites, simulation, cfg.rounds, cfg.keep_local)
    return run_dir


def site_folders(sites: dict, run_name: str, workspace: str) -> dict[str, Path]:
    """Where each site's part of a simulation's workspace goes: OUT/sites/NAME/<run>/flare_<workspace>."""
    return {name: Path(site["output_dir"]) / run_name / f"flare_{workspace}" for name, site in sites.items()}


def save_models(run_dir: Path, train_cfg, classes: list[str], sites: dict, simulation: Path, rounds: int, keep_local):
    """models/final_model.pth from the server's last global model; with FedBN each site's own model at the site."""
    from carotid.federated import flare_job
    from carotid.training.site import site_options

    weights = flare_job.global_weights(simulation)
    model = flare_job.save_model(run_dir / "models" / "final_model.pth", train_cfg, classes, weights, rounds)
    print(f"the global model after {rounds} rounds: {model}")
    if keep_local == "norm":
        for name, site in sites.items():
            own = weights | flare_job.site_norm_layers(site_options(train_cfg, site), run_dir.name)
            path = Path(site["output_dir"]) / run_dir.name / "models" / "site_model.pth"
            print(f"{name}'s own model (the global weights with its norm layers): "
                  f"{flare_job.save_model(path, train_cfg, classes, own, rounds)}")  # fmt: skip


def resume(cfg: FlareConfig, given: set[str]) -> Path:
    """Continue OUT/flare_… after the last round FLARE's server finished, from its global model, with the run's
    own options (config.yaml) and `--rounds` (to extend); the sites' folders and split are the run's."""
    import yaml

    from carotid.federated import flare_job
    from carotid.training.config import TrainConfig
    from carotid.training.site import SITE_OPTIONS

    run_dir = Path(cfg.resume).resolve()
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "job").is_dir():
        raise UserError(f"{cfg.resume} is not a carotid-flare run folder", "pass OUT/flare_YYYYMMDD_HHMMSS to --resume")
    own = set(SITE_OPTIONS) - {"root_dir", "label_excel", "output_dir"}
    for name in sorted(given - RESUME_TAKES - own):
        raise UserError(
            f"--{name.replace('_', '-')} cannot change a resumed run: its own options (config.yaml) apply",
            "give only --resume, the same --site arguments, --rounds (to extend) and the sites' own settings",
        )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    fed = saved["federated"]
    rounds = cfg.rounds if "rounds" in given else int(fed["rounds"])
    sites = {
        name: {key.replace("-", "_"): value for key, value in settings.items()}
        | {"output_dir": str(run_dir.parent / "sites" / name)}
        for name, settings in parse_sites(cfg).items()
    }
    if sorted(sites) != sorted(saved["sites"]):
        raise UserError(f"the run had sites {sorted(saved['sites'])}, not {sorted(sites)}", "give the run's own --site")
    classes = site_classes(sites)
    if classes != saved["class_names"]:
        raise UserError(f"the sites' classes are {classes}, the run's {saved['class_names']}", "give its own sites")
    last = flare_job.last_global_model(run_dir)
    if last is None:
        raise UserError(f"{run_dir.name} finished no round", "start the run again without --resume")
    done, checkpoint = last
    if done >= rounds:
        raise UserError(f"{run_dir.name} has finished {done} of {rounds} rounds", f"give --rounds N with N > {done}")
    train_cfg = TrainConfig(**saved["options"])
    recipe = flare_job.build_recipe(
        train_cfg, classes, sites, run_dir / "job", run_name=run_dir.name, rounds=rounds - done,
        local_epochs=fed["local_epochs"], keep_local=fed["keep_local"], fedprox_mu=fed["fedprox_mu"],
        initial_ckpt=checkpoint, start_round=done,
    )  # fmt: skip
    saved["federated"]["rounds"] = rounds
    saved.setdefault("resumed", []).append({"after_round": done, "time": time.strftime("%Y-%m-%d %H:%M:%S")})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved, allow_unicode=True), encoding="utf-8")
    workspace = run_dir / f"simulation_from_round_{done}"
    print(f"resuming {run_dir.name} after round {done} of {rounds}; FLARE's server workspace and log: {workspace}")
    folders = site_folders(sites, run_dir.name, workspace.name)
    simulation = flare_job.simulate(recipe, run_dir / "job", folders, workspace, rounds - done)
    save_models(run_dir, train_cfg, classes, sites, simulation, rounds, fed["keep_local"])
    return run_dir


def _main(argv: Sequence[str] | None) -> int:
    cfg, given = parse_flare_args(sys.argv[1:] if argv is None else argv)
    run(cfg, given)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
