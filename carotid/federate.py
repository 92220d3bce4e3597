"""Federated training on one machine, with real Flower processes:

    python -m carotid.federate --site hospA A/ a.xlsx --site hospB B/ b.xlsx --site hospC C/ c.xlsx \\
        --rounds 10 --local-epochs 1 --model resnet18 --output-dir OUT

starts a `flower-superlink` and one `flower-supernode` per site on 127.0.0.1, submits carotid's Flower app
(`carotid.federated`), shows each round (round r/R, each site's loss and validation AUC) and stops every process
it started, on success, error or Ctrl-C. The coordinator's folder is OUT/fed_YYYYMMDD_HHMMSS/ (no person ID or
path of any site); each site's own files are in OUT/sites/NAME/; the Flower processes' home and logs in
OUT/flower_RUN/. `--resume OUT/fed_…` (with the same --site arguments) continues after the last completed round.
A real deployment runs the same app with Flower's own commands (docs/FEDERATED.md).
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from carotid.core.errors import UserError, run_cli
from carotid.federated.options import FederateConfig, parse_federate_args, parse_sites

PREFIX = "carotid: "  # the ServerApp's own lines in the streamed log (carotid.federated.server_app)
NOT_HERE = ("root_dir", "label_excel", "epochs", "test", "demo")


def federate(cfg: FederateConfig, given: set[str]) -> Path:
    """Run (or resume) a federated trial on loopback; returns the coordinator's folder."""
    from carotid.federated.loopback import Loopback, require_flower

    require_flower()
    for name in sorted(given & set(NOT_HERE)):
        flag = name.replace("_", "-")
        raise UserError(f"--{flag} is not an option of carotid-federate", _instead(name))
    sites = parse_sites(cfg)
    if cfg.resume:
        fed_dir = Path(cfg.resume).resolve()
        if not (fed_dir / "config.yaml").is_file():
            raise UserError(f"{cfg.resume} is not a federated run folder", "pass OUT/fed_YYYYMMDD_HHMMSS to --resume")
        output_dir, run_name = fed_dir.parent, fed_dir.name
    else:
        output_dir, run_name = Path(cfg.output_dir).resolve(), time.strftime("fed_%Y%m%d_%H%M%S")
        if (output_dir / run_name).exists():
            raise UserError(f"{output_dir / run_name} exists already", "wait a second and start again")
    work = output_dir / f"flower_{run_name}"
    for name, settings in sites.items():
        settings["output-dir"] = str(output_dir / "sites" / name)
    run_config = write_request(cfg, given, work, output_dir, run_name, len(sites))
    print(f"sites: {', '.join(sites)}; Flower processes' home and logs: {work}", flush=True)
    errors: list[str] = []

    def show(line: str) -> None:
        at = line.find(PREFIX)
        if at >= 0:
            text = line[at + len(PREFIX) :]
            print(text, flush=True)
            if text.startswith("error: "):
                errors.append(text[len("error: ") :])

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with Loopback(work / "home", sites, work / "logs") as flower:
            status = flower.submit(run_config, show)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if errors:
        raise UserError(errors[-1])
    if status != "finished:completed":
        raise UserError(f"the federated run ended with status {status}", f"see the Flower logs in {work / 'logs'}")
    return output_dir / run_name


def write_request(cfg: FederateConfig, given: set[str], work: Path, output_dir: Path, run_name: str, sites: int):
    """The ServerApp's run config (a TOML file) and the options YAML it names."""
    work.mkdir(parents=True, exist_ok=True)
    federated = {
        "rounds": cfg.rounds,
        "local_epochs": cfg.local_epochs,
        "fedprox_mu": cfg.fedprox_mu,
        "keep_local": cfg.keep_local,
        "sites": sites,
        "min_sites": cfg.min_sites or sites,
        "round_timeout_minutes": cfg.round_timeout_minutes,
    }
    options = vars(cfg.train_options()) | {"output_dir": str(output_dir), "resume": None}
    request = work / "request.yaml"
    request.write_text(yaml.safe_dump({"options": options, "federated": federated}, allow_unicode=True), "utf-8")
    toml = {
        "output-dir": str(output_dir),
        "config": str(request),
        "run-name": run_name,
        "resume": str(output_dir / run_name) if cfg.resume else "",
        "rounds": cfg.rounds if "rounds" in given else 0,
    }
    lines = [f"{key} = {_toml(value)}" for key, value in toml.items()]
    path = work / "run_config.toml"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def _toml(value) -> str:
    import json

    return str(value) if isinstance(value, int) else json.dumps(str(value), ensure_ascii=False)


def _instead(name: str) -> str:
    if name in ("root_dir", "label_excel"):
        return "give each site's data with --site NAME ROOT_DIR LABEL_EXCEL"
    if name == "epochs":
        return "use --rounds and --local-epochs"
    return "evaluate the coordinator's model with carotid-evaluate at a site"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _main(argv: Sequence[str] | None) -> int:
    cfg, given = parse_federate_args(sys.argv[1:] if argv is None else argv)
    federate(cfg, given)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
