"""A FedAvg job of NVIDIA FLARE 2.9 around carotid's local round (its recipe API), and its run in FLARE's simulator.

`build_recipe` makes the job: FLARE's PyTorch `FedAvgRecipe` (`FedProxRecipe` with a FedProx mu) whose client
script is `carotid.federated.flare_client`, one `train_args` per site (its own folders and sheet settings), the
coordinator's options shipped in the job as `carotid_flare.json`, and the starting model built by
`initial_model` on the server. FedBN (`keep_local="norm"`) sets the recipe's `exclude_vars` to every norm layer's
keys, so the server never averages them, and the sites keep their own (the local round's `keep_local`).

`simulate` runs the job in FLARE's simulator (`SimEnv`, one process per site); `export` writes the job folder a
real FLARE deployment submits (`nvflare job submit -j JOB_DIR`). `global_weights` reads the server's last global
model from a finished simulation, `site_norm_layers` a FedBN site's own norm layers.

Resume: FLARE's server saves its global model after every round (`FL_global_model.pt`, with the round in its
`meta_props`); `last_global_model` finds the latest one of a run, and `build_recipe(initial_ckpt=…, start_round=…)`
makes the job that continues from it: FLARE's persistor starts from that checkpoint and its FedAvg controller
counts rounds from `start_round` (which the recipes do not expose: `_StartRound` passes it on).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.app_opt.pt.recipes.fedprox import FedProxRecipe
from nvflare.recipe import SimEnv
from nvflare.recipe.utils import set_per_site_config
from torch import nn

from carotid.core.errors import UserError
from carotid.core.files import safe_torch_load
from carotid.data.classes import choose_positive, positive_index
from carotid.federated.flare_client import JOB_OPTIONS
from carotid.model.file import ModelFile
from carotid.training.config import TrainConfig
from carotid.training.epoch import build_run_model, model_contract
from carotid.training.local_round import LOCAL_STATE, local_keys
from carotid.training.site import SITE_OPTIONS, check_site_settings, site_run_dir

LAUNCHER = "carotid_site.py"  # the job's client script: runs carotid.federated.flare_client from the installed package
LAUNCHER_CODE = (
    f"# The FLARE job's client script, written by {__name__}: each site runs carotid as installed there.\n"
    "import sys\nfrom pathlib import Path\n\nfrom carotid.federated.flare_client import main\n\n"
    "sys.exit(main(job_folder=Path(__file__).resolve().parent))\n"
)
GLOBAL_MODEL = Path("server", "simulate_job", "app_server", "FL_global_model.pt")  # in a simulation's folder


class _StartRound:
    """FLARE's FedAvg controller counts rounds from `start_round` (a resumed run); its recipes do not expose it."""

    def __init__(self, *, start_round: int = 0, **kwargs):
        self._carotid_start_round = start_round  # set first: the recipe builds its controller in __init__
        super().__init__(**kwargs)

    def _get_controller_kwargs(self) -> dict:
        return {**super()._get_controller_kwargs(), "start_round": self._carotid_start_round}


class FedAvgJob(_StartRound, FedAvgRecipe):
    """FLARE's PyTorch FedAvgRecipe that may start at a later round."""


class FedProxJob(_StartRound, FedProxRecipe):
    """FLARE's PyTorch FedProxRecipe that may start at a later round."""


def initial_model(options: dict, class_names: list[str], seed: int) -> nn.Module:
    """The run's model with the coordinator's starting weights (FLARE's persistor calls this, by its path)."""
    cfg = TrainConfig(**options)
    torch.manual_seed(seed)
    return build_run_model(cfg, class_names)[0]


def exclude_pattern(model: nn.Module, keep_local: str | None) -> str | None:
    """FLARE's `exclude_vars`: a regex matching exactly the state-dict keys that stay at the sites."""
    keys = sorted(local_keys(model, keep_local))
    return "^(?:" + "|".join(re.escape(k) for k in keys) + ")$" if keys else None


def site_args(settings: Mapping[str, object]) -> str:
    """A site's own options as the client script's arguments."""
    check_site_settings(settings)
    words = []
    for name, value in settings.items():
        flag = name.replace("_", "-")
        if isinstance(value, bool):  # --cache / --no-cache, --strict-matching / --no-strict-matching
            words.append(f"--{flag}" if value else f"--no-{flag}")
        elif value is not None:
            words += [f"--{flag}", str(value)]
    return shlex.join(words)


def build_recipe(
    cfg: TrainConfig,
    class_names: list[str],
    sites: Mapping[str, Mapping[str, object]],
    job_dir: Path,
    *,
    run_name: str,
    rounds: int,
    local_epochs: int,
    keep_local: str | None = None,
    fedprox_mu: float = 0.0,
    initial_ckpt: Path | None = None,
    start_round: int = 0,
) -> FedAvgRecipe:
    """The FLARE job: `sites` maps each FLARE client name to its own options (root_dir, label_excel, output_dir,
    sheet settings); `cfg` holds the coordinator's options; job_dir receives the job's carotid_flare.json.
    A resumed run: `rounds` more rounds from the global model `initial_ckpt` (an absolute path where the server
    runs), numbered from `start_round` + 1."""
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / LAUNCHER).write_text(LAUNCHER_CODE, encoding="utf-8")
    options = {k: v for k, v in vars(cfg).items() if k not in SITE_OPTIONS}
    job = {"run_name": run_name, "class_names": class_names, "local_epochs": local_epochs, "keep_local": keep_local}
    (job_dir / JOB_OPTIONS).write_text(json.dumps(job | {"options": options}), encoding="utf-8")
    model = {
        "path": f"{__name__}.initial_model",
        "args": {"options": options, "class_names": class_names, "seed": cfg.seed},
    }
    common = {
        "name": run_name,
        "model": model,
        "min_clients": len(sites),
        "num_rounds": rounds,
        # Relative, and built from inside job_dir (`_in_job_dir`): FLARE copies an absolute script that lies on
        # sys.path to custom/<its package path> but runs custom/<its file name>.
        "train_script": LAUNCHER,
        # Each site in a process of its own (as at a hospital), with this Python.
        "launch_external_process": True,
        "command": f"{shlex.quote(sys.executable)} -u",
        "exclude_vars": exclude_pattern(initial_model(options, class_names, cfg.seed), keep_local),
        "key_metric": "global_val_person_auc",
        "key_metric_mode": "max",
        "initial_ckpt": str(initial_ckpt) if initial_ckpt else None,
        "start_round": start_round,
    }
    with _in_job_dir(job_dir):
        recipe = FedProxJob(**common, fedprox_mu=fedprox_mu) if fedprox_mu > 0 else FedAvgJob(**common)
        set_per_site_config(recipe, {name: {"train_args": site_args(settings)} for name, settings in sites.items()})
        recipe.add_client_file(JOB_OPTIONS)
    # carotid is installed at each site (pip install 'carotid[flare]'), not copied into the job's custom/ folder;
    # FedJob.set_app_packages has no recipe-level setter in FLARE 2.9.
    recipe._job.set_app_packages(["carotid"])
    return recipe


@contextlib.contextmanager
def _in_job_dir(job_dir: Path):
    before = Path.cwd()
    os.chdir(job_dir)
    try:
        yield
    finally:
        os.chdir(before)


def simulate(
    recipe: FedAvgRecipe, job_dir: Path, site_folders: Mapping[str, Path], workspace: Path, rounds: int
) -> Path:
    """Run the job in FLARE's simulator, one process per site; returns the simulation's folder. A site that
    fails stops the run: a UserError with that site's `error:` line under its name. Each site's part of the
    workspace then goes to its `site_folders` entry (`keep_at_sites`), finished or not."""
    workspace = workspace.resolve()
    simulation = workspace / recipe.name
    with _in_job_dir(job_dir):
        try:
            recipe.run(SimEnv(clients=list(site_folders), workspace_root=str(workspace))).get_result(clean_up=False)
        except RuntimeError:  # "Simulation failed with return code N": the sites' own lines say why
            pass
    try:
        check_finished(simulation, list(site_folders), rounds)
    finally:
        keep_at_sites(simulation, site_folders)
    return simulation


def keep_at_sites(simulation: Path, site_folders: Mapping[str, Path]) -> None:
    """Move each site's part of the simulator's workspace (its FLARE logs, which carry its start-up lines, and its
    app's config, which names its folder and sheet) out of the coordinator's folder into the site's own: in a real
    deployment they never leave the site, and the simulator only runs every site on one machine."""
    for site, folder in site_folders.items():
        if (simulation / site).is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(simulation / site), str(folder))


def export(recipe: FedAvgRecipe, job_dir: Path, out: Path) -> Path:
    """Write the job folder that a FLARE deployment submits (`nvflare job submit -j OUT/<run name>`)."""
    out = out.resolve()
    with _in_job_dir(job_dir):
        recipe.export(str(out))
    return out


def check_finished(simulation: Path, sites: list[str], rounds: int) -> None:
    """A UserError naming each failed site's `error:` line unless the server finished every round (FLARE's
    simulator returns 0 when a site's client failed to start)."""
    log = simulation / "server" / "log.txt"
    server_log = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    started = len(re.findall(r"Round \d+ started\.", server_log))
    if (simulation / GLOBAL_MODEL).is_file() and "Finished FedAvg." in server_log and started == rounds:
        return
    failures = []
    for site in sites:
        log = simulation / site / "log.txt"
        text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
        failures += [f"{site}: {line}" for line in re.findall(r"(?m)\berror: .*$", text)[:1]]
    raise UserError(
        f"the FLARE job stopped after {started} of {rounds} rounds" + (": " + "; ".join(failures) if failures else ""),
        f"fix the site's data or options, then continue after the last finished round with --resume; FLARE's "
        f"server log is in {simulation / 'server'}, each site's in its own folder (OUT/sites/NAME/…/flare_*)",
    )


def global_weights(simulation: Path) -> dict[str, torch.Tensor]:
    """The server's last global weights of a finished simulation (a FedBN run's norm layers: the starting ones)."""
    saved = safe_torch_load(simulation / GLOBAL_MODEL, "FLARE's global model")
    return dict(saved["model"])


def last_global_model(run_dir: Path) -> tuple[int, Path] | None:
    """(the last round FLARE's server finished, its global model file) over every simulation of a run (a resumed
    run has one per start); None before the first round finished."""
    found = []
    for path in Path(run_dir).glob(f"simulation*/*/{GLOBAL_MODEL.as_posix()}"):
        meta = safe_torch_load(path, "FLARE's global model").get("meta_props") or {}
        if isinstance(meta.get("current_round"), int):
            found.append((meta["current_round"] + 1, path))  # FLARE counts rounds from 0
    return max(found, key=lambda item: item[0]) if found else None


def site_norm_layers(site_cfg: TrainConfig, run_name: str) -> dict[str, torch.Tensor]:
    """A FedBN site's own norm layers, as the local round keeps them between rounds (at the site)."""
    return dict(safe_torch_load(site_run_dir(site_cfg, run_name) / LOCAL_STATE, "the site's norm layers"))


def save_model(
    path: Path, cfg: TrainConfig, class_names: list[str], weights: Mapping[str, torch.Tensor], rounds: int
) -> Path:
    """An ordinary carotid model file of federated weights (evaluate, predict, compare and export take it).

    No threshold is chosen on validation persons here (they stay at the sites): 0.5, said so in the file."""
    positive, _, _ = choose_positive(class_names, cfg.positive_class)
    path.parent.mkdir(parents=True, exist_ok=True)
    ModelFile(
        state_dict={k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
        **model_contract(cfg, class_names, "global_val_person_auc", positive_index(class_names, positive)),
        epoch=rounds,
        threshold=0.5 if len(class_names) == 2 else None,
        threshold_source="0.5 by default: a FLARE run chooses none on the sites' validation persons",
    ).save(path)
    return path
