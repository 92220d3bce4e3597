"""carotid-federate's options: every carotid-train option (the coordinator's, the same at every site) and the
federated ones; `--site NAME ROOT_DIR LABEL_EXCEL [KEY=VALUE ...]` once per site, with its own sheet settings.
No Flower import here: `--help` and argument errors answer at once."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from carotid.core.errors import UserError
from carotid.core.options import opt, parse_options
from carotid.training.config import TRAIN_GROUPS, TrainConfig

# The sheet and data settings a --site may give for itself (KEY=VALUE); the same flags given once apply to all.
SITE_KEYS = ("sheet", "header-row", "id-column", "label-column", "group-column", "max-imgs-per-person", "processes")
WHOLE_NUMBERS = ("header-row", "max-imgs-per-person", "processes")
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SEPARATOR = "\x1f"  # joins a --site's words into one argparse value


@dataclass
class FederateConfig(TrainConfig):
    site: list[str] = opt(
        [],
        "A site (hospital): its name, its folder of person folders and its label sheet, then its own sheet settings "
        f"as KEY=VALUE ({', '.join(SITE_KEYS)}) where they differ from the flags. One --site per site.",
        group="federated",
        metavar="NAME ROOT_DIR LABEL_EXCEL [KEY=VALUE ...]",
    )
    rounds: int = opt(5, "Federated rounds: each site trains, the coordinator averages.", group="federated")
    local_epochs: int = opt(1, "Epochs each site trains the global weights per round.", group="federated")
    fedprox_mu: float = opt(
        0.0, "FedProx: weight mu of the proximal term mu/2·‖w − w_global‖² (0 = FedAvg).", group="federated"
    )
    keep_local: str | None = opt(
        None,
        "norm = FedBN: every norm layer (weights and running statistics) stays at its site, never sent; the site "
        "keeps its own between rounds.",
        choices=("norm",),
        group="federated",
    )
    min_sites: int | None = opt(
        None,
        "A round goes on while at least this many sites answer (default: every site); a site missing from a round "
        "is recorded in metrics.csv.",
        group="federated",
    )
    round_timeout_minutes: float = opt(30.0, "How long a round waits for the sites' answers.", group="federated")
    site_processes: int = opt(
        1,
        "Processes (GPUs) each site trains on: more than 1 runs each site's round under accelerate launch "
        "(DDP over its GPUs, or CPU processes over gloo without one). A --site may set its own as processes=N.",
        group="federated",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("rounds", "local_epochs", "round_timeout_minutes", "site_processes"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be > 0", "give a positive number")
        if self.fedprox_mu < 0:
            raise UserError(f"--fedprox-mu must be ≥ 0, got {self.fedprox_mu}", "use e.g. --fedprox-mu 0.01")
        if self.folds:
            raise UserError("--folds is not for a federated run", "drop --folds")

    def train_options(self) -> TrainConfig:
        names = {f.name for f in fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in vars(self).items() if k in names})


def parse_sites(cfg: FederateConfig) -> dict[str, dict]:
    """Site name → its node-config settings (root-dir, label-excel and its sheet settings)."""
    if not cfg.site:
        raise UserError("no site given", "add --site NAME ROOT_DIR LABEL_EXCEL once per site")
    sites: dict[str, dict] = {}
    for spec in cfg.site:
        words = spec.split(SEPARATOR)
        if len(words) < 3:
            raise UserError(
                f"--site {' '.join(words)}: needs NAME ROOT_DIR LABEL_EXCEL", "e.g. --site hospA data/ a.xlsx"
            )
        name, root, label, extra = words[0], Path(words[1]), Path(words[2]), words[3:]
        if not SITE_NAME.match(name) or name == "all":
            raise UserError(f"site name {name!r} is not a plain name", "use letters, digits, '-', '_' or '.'")
        if name in sites:
            raise UserError(f"site {name} is given twice", "give each --site its own name")
        if not root.is_dir():
            raise UserError(f"site {name}: {root} is not a folder", "pass the folder of its person folders")
        if not label.is_file():
            raise UserError(f"site {name}: {label} does not exist", "pass its label sheet (.xlsx)")
        settings = _shared_settings(cfg) | {"root-dir": str(root.resolve()), "label-excel": str(label.resolve())}
        for item in extra:
            key, _, value = item.partition("=")
            if key not in SITE_KEYS or not value:
                raise UserError(f"site {name}: {item!r} is not KEY=VALUE", f"KEY is one of {', '.join(SITE_KEYS)}")
            if key in WHOLE_NUMBERS and not (value.isdigit() and (key != "processes" or int(value) >= 1)):
                raise UserError(f"site {name}: {key}={value} is not a whole number", f"e.g. {key}=2")
            settings[key] = int(value) if key in WHOLE_NUMBERS else value
        sites[name] = settings
    return sites


def _shared_settings(cfg: FederateConfig) -> dict:
    values = {key: getattr(cfg, key.replace("-", "_"), None) for key in SITE_KEYS}
    values["processes"] = cfg.site_processes
    values |= {"cache": cfg.cache, "cache-dir": cfg.cache_dir, "num-workers": cfg.num_workers}
    values["strict-matching"] = cfg.strict_matching
    return {k: v for k, v in values.items() if v is not None}


def parse_federate_args(argv: Sequence[str]) -> tuple[FederateConfig, set[str]]:
    """(options, names given); each --site's words are joined into one value first."""
    joined: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        joined.append(word)
        if word == "--site":
            spec = []
            while words and not words[0].startswith("--"):
                spec.append(words.pop(0))
            joined.append(SEPARATOR.join(spec))
    groups = TRAIN_GROUPS | {"federated": "federated"}
    return parse_options(
        FederateConfig,
        joined,
        "carotid-federate",
        "Federated training on one machine: a Flower SuperLink and one SuperNode per --site on 127.0.0.1, each site "
        "training on its own persons; only weights, counts and aggregate metrics leave a site.",
        groups,
        config_file=True,
    )
