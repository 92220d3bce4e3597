"""--report-to: experiment trackers through Accelerate's own (TensorBoard, MLflow, Weights & Biases, Aim, …).

carotid checks the tracker's package before anything runs, points the trackers that write locally at the run
directory (TensorBoard's event files, MLflow's file store unless MLFLOW_TRACKING_URI names a server), and logs the
scalar options and every epoch's metrics. The others (wandb, comet_ml, clearml, …) use their own login and server.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from carotid.core.errors import UserError

if TYPE_CHECKING:  # the training options import this module: --help stays free of Accelerate's import
    from accelerate import Accelerator

# --report-to value → the package it needs (Accelerate's tracker names).
TRACKERS = {
    "tensorboard": "tensorboard",
    "mlflow": "mlflow",
    "wandb": "wandb",
    "aim": "aim",
    "comet_ml": "comet_ml",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "swanlab": "swanlab",
    "trackio": "trackio",
}
CHOICES = (*TRACKERS, "none")
EXTRAS = {"mlflow": "carotid[mlflow]"}  # TensorBoard, the default, is a dependency of carotid itself
PROJECT = "carotid"  # MLflow's experiment, Aim's repository, … ; TensorBoard's folder keeps its name


def tracker_of(report_to: str | None) -> str | None:
    """The tracker to use, None for none; a UserError when its package is missing."""
    if report_to in (None, "none"):
        return None
    package = TRACKERS[report_to]
    if importlib.util.find_spec(package) is None:
        install = EXTRAS.get(report_to, package)
        raise UserError(f"--report-to {report_to} needs the {package} package", f"pip install '{install}'")
    return report_to


def prepare_tracker(accelerator: Accelerator, cfg, run_dir: Path) -> tuple[str, Callable[[], None]]:
    """(where the tracker's records go, in words; the call that starts it with the scalar options as its
    hyperparameters). Training starts it after its first optimizer step: the first batch does not wait for
    the tracker's import and files (TensorBoard: ~0.1 s, PERFORMANCE.md, the first step)."""
    tracker = tracker_of(cfg.report_to)
    accelerator.project_configuration.logging_dir = str(run_dir)
    where = f"{tracker}: its own settings (login, server)"
    init_kwargs: dict = {}
    project = PROJECT
    if tracker == "tensorboard":
        project = "tensorboard"
        where = f"tensorboard: event files in {run_dir / project} (tensorboard --logdir {run_dir})"
    elif tracker == "mlflow":
        where = _mlflow_store(run_dir)
        init_kwargs = {"mlflow": {"run_name": run_dir.name}}
    options = {k: v for k, v in dataclasses.asdict(cfg).items() if isinstance(v, (int, float, str, bool))}
    return where, lambda: accelerator.init_trackers(project, config=options, init_kwargs=init_kwargs)


def end_tracker(accelerator: Accelerator) -> None:
    """Close the run's trackers (event files flushed, the MLflow run FINISHED) and forget them.

    Not `accelerator.end_training()`: that also destroys the process group, which the test evaluation after
    training and the next fold of a cross-validation still use; and Accelerate appends the trackers of each
    `init_trackers`, so a fold would log into the closed trackers of the folds before it."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []


def _mlflow_store(run_dir: Path) -> str:
    """MLflow writes into RUN/mlruns (a local file store, no server) unless MLFLOW_TRACKING_URI says otherwise."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return f"mlflow: {os.environ['MLFLOW_TRACKING_URI']} (MLFLOW_TRACKING_URI)"
    import mlflow

    # MLflow 3 keeps its file store working but asks to be told (a server or a database is its default now);
    # a run folder of its own is what a user of a cluster without an MLflow server has.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    store = run_dir / "mlruns"
    mlflow.set_tracking_uri(store.as_uri())
    return f"mlflow: local file store {store} (mlflow ui --backend-store-uri {store.as_uri()})"
