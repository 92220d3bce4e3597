"""The run directory: its staging and publication, its provenance (config.yaml) and its split.

A run directory only appears under its final name (train_YYYYMMDD_HHMMSS) once config.yaml,
splits.json and data_report.json are in it; everything else is written into it atomically
(`carotid.core.files`). Temp files of killed writers are recognised by their pid and removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

import carotid
from carotid.core.errors import UserError
from carotid.core.files import atomic_write_json, atomic_write_text, file_sha256, fsync_dir


@dataclass(frozen=True)
class EvalDir:
    """Every file of an evaluation folder (RUN/eval_<split>_<model>/ or evaluate's --out), named once."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    metrics = property(lambda self: self.path / "metrics.json")
    predictions = property(lambda self: self.path / "predictions.csv")
    person_predictions = property(lambda self: self.path / "person_predictions.csv")
    subgroups = property(lambda self: self.path / "subgroups.csv")
    report = property(lambda self: self.path / "report.html")
    roc = property(lambda self: self.path / "roc_curve.png")
    confusion = property(lambda self: self.path / "confusion_matrix.png")
    reliability = property(lambda self: self.path / "reliability_diagram.png")


@dataclass(frozen=True)
class RunDir:
    """Every path of a run folder (train_YYYYMMDD_HHMMSS/, a CV folder, a fold's folder), named once."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.yaml")
    splits = property(lambda self: self.path / "splits.json")
    data_report = property(lambda self: self.path / "data_report.json")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    log = property(lambda self: self.path / "train.log")
    curves = property(lambda self: self.path / "curves.png")
    report = property(lambda self: self.path / "report.html")
    models = property(lambda self: self.path / "models")
    checkpoints = property(lambda self: self.path / "checkpoints")
    cv_metrics = property(lambda self: self.path / "cv_metrics.json")

    def model(self, which: str = "best") -> Path:
        """models/best_model.pth or models/final_model.pth."""
        return self.models / f"{which}_model.pth"

    @property
    def best_model(self) -> Path:
        return self.model("best")

    @property
    def final_model(self) -> Path:
        return self.model("final")

    def evaluation(self, split: str = "test", model: str = "best") -> EvalDir:
        """The evaluation folder of `model` (best, final or a name) on `split` (test, val, train, ensemble)."""
        return EvalDir(self.path / f"eval_{split}_{model}")

    def is_run(self) -> bool:
        return self.config.is_file()


def stage_run_dir(output_dir: str | Path) -> Path:
    """Make a hidden staging folder in output_dir; `publish_run_dir` renames it to train_YYYYMMDD_HHMMSS.

    The run's first files (config.yaml, splits.json, data_report.json) are written into the staging
    folder, so a run directory never exists without them."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".train_{time.strftime('%Y%m%d_%H%M%S')}_{_HOST}_{os.getpid()}.partial"
        staging.mkdir()
    except OSError as err:
        raise UserError(f"cannot write to output dir {out} ({err.strerror})", "pass a writable --output-dir") from None
    for stale in out.glob(".train_*.partial"):  # a run killed before it was published
        if _left_by_dead_process(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    return staging


def publish_run_dir(staging: Path, prefix: str = "train", name: str | None = None) -> Path:
    """Rename the staging folder to PREFIX_YYYYMMDD_HHMMSS (the first free name), or to exactly `name`."""
    if name is not None:
        final = staging.parent / name
        if final.exists():  # os.rename would silently replace an empty folder
            raise RuntimeError(f"{final} exists already")
        os.rename(staging, final)
        fsync_dir(staging.parent)
        return final
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for k in range(1000):
        final = staging.parent / (f"{prefix}_{stamp}" if k == 0 else f"{prefix}_{stamp}_{k}")
        if final.exists():
            continue
        try:
            os.rename(staging, final)
        except OSError:
            continue  # another run took the name first
        fsync_dir(staging.parent)
        return final
    raise RuntimeError(f"could not name a run directory in {staging.parent}")


def create_run_dir(
    output_dir: str,
    options: dict[str, Any],
    label_excel: str,
    class_names: list[str],
    splits: dict[str, list[str]],
    data_report: dict,
    *,
    prefix: str = "train",
    name: str | None = None,
    note: dict[str, Any] | None = None,
    models: bool = True,
) -> Path:
    """Write config.yaml, splits.json and data_report.json into a staging folder, then publish it as
    PREFIX_YYYYMMDD_HHMMSS (or `name`); `note` adds keys to config.yaml (e.g. a fold's place in its CV);
    `models` False leaves out models/ (a CV folder's models are in its fold_k/ run folders)."""
    staging = stage_run_dir(output_dir)
    try:
        extra = {
            "class_names": class_names,
            "initial_weights": initial_weights(options),
            "versions": software_versions(),
            "label_file_sha256": file_sha256(label_excel),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        } | (note or {})
        if options.get("pretrained_weights"):  # `pretrained: false` beside a weights file would read as "random"
            options = {k: v for k, v in options.items() if k != "pretrained"}
        write_run_config(RunDir(staging).config, options, extra)
        atomic_write_json(RunDir(staging).splits, splits)
        atomic_write_json(RunDir(staging).data_report, data_report)
        if models:
            RunDir(staging).models.mkdir()
        return publish_run_dir(staging, prefix, name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_writable(output_dir: str | Path) -> None:
    """Fail early (before any work) when output_dir cannot be created or written."""
    out = Path(output_dir)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output dir {out} is not writable", "pass a --output-dir you can write to")


# What a run folder holds that a run wrote: its own files, its models, checkpoints, evaluations and folds.
RUN_FILES = ("config.yaml", "splits.json", "data_report.json", "metrics.csv", "train.log", "curves.png",
             "report.html", "cv_metrics.json", "cv.log", "cv_progress.json", "oof_person_predictions.csv")  # fmt: skip


def run_holding(path: Path) -> Path | None:
    """The run folder that wrote `path` (an existing file), or None: a run's own file, a model file in its
    models/, anything in its checkpoints/, eval_*/ or fold_*/."""
    for folder in list(path.parents)[:6]:
        if RunDir(folder).is_run():
            inside = path.relative_to(folder).parts
            if (
                (len(inside) == 1 and inside[0] in RUN_FILES)
                or (inside[0] == "models" and path.suffix == ".pth")
                or inside[0] == "checkpoints"
                or (len(inside) > 1 and inside[0].startswith(("eval_", "fold_")))
            ):
                return folder
    return None


def check_output_file(out: Path, flag: str, inputs: dict[str, str | Path | None], suffixes: tuple[str, ...]) -> None:
    """Refuse, before anything is written, an output file that would overwrite what the user gave or a run made:
    one of `inputs` (named by their key), a run's file, or an existing file of another kind than `suffixes`."""
    target = out.resolve()
    for what, given in inputs.items():
        if given and Path(given).resolve() == target:
            raise UserError(f"{flag} {out} is {what}: writing there would overwrite it", "pass another file name")
    if not target.is_file():
        return
    run = run_holding(target)
    if run is not None:
        raise UserError(
            f"{flag} {out} is a file of the run {run}: writing there would overwrite it",
            "pass a file name outside the run folder (or a new name in it)",
        )
    if target.suffix.lower() not in suffixes:
        raise UserError(
            f"{flag} {out} exists and is not a {' or '.join(suffixes)} file: writing there would overwrite it",
            f"pass a new file name ending in {suffixes[0]}",
        )


def check_output_dir(out: Path, flag: str) -> None:
    """Refuse an output folder that is a run folder (its report.html, figures/ and tables/ would be replaced)."""
    if RunDir(out).is_run():
        raise UserError(
            f"{flag} {out} is a run folder: its report and tables would be overwritten",
            "pass a new folder (or leave the option out for the default)",
        )


def initial_weights(options: dict[str, Any]) -> dict[str, Any]:
    """Where a run's starting weights came from: a weights file (with its SHA-256 and size), the library's
    download, or random initialisation."""
    path = options.get("pretrained_weights")
    if path and Path(path).is_file():
        return {"source": "file", "file": str(path), "sha256": file_sha256(path), "bytes": Path(path).stat().st_size}
    if options.get("pretrained"):
        return {"source": "library download (ImageNet weights of torchvision or timm)"}
    return {"source": "random initialisation"}


def software_versions() -> dict[str, str]:
    # A module not loaded yet is asked through its package metadata: importing torchvision and scikit-learn
    # only to read their versions cost seconds at every start. (Loaded ones give their build tag, e.g. +cu130.)

    versions = {"carotid": carotid.__version__}
    for package, module in (
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("timm", "timm"),
        ("accelerate", "accelerate"),
        ("scikit-learn", "sklearn"),
    ):
        try:
            loaded = sys.modules.get(module)
            versions[package] = str(loaded.__version__) if loaded is not None else version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        versions["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        versions["git_commit"] = "unknown"
    return versions


def write_run_config(path: Path, options: dict[str, Any], extra: dict[str, Any]) -> None:
    text = "# Resolved options of this run (carotid-train --config accepts the 'options' section).\n"
    text += yaml.safe_dump({"options": options, **extra}, allow_unicode=True, sort_keys=False)
    atomic_write_text(path, text)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = RunDir(run_dir).config
    if not path.is_file():
        raise UserError(
            f"{run_dir} is not a carotid run directory (no config.yaml)", "pass a folder made by carotid-train"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(
            f"{path} is not valid YAML ({str(err).splitlines()[0]})",
            "restore the run's config.yaml (carotid writes it; hand edits must keep it valid YAML)",
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise UserError(f"{path} is not a carotid run config", "pass a folder made by carotid-train")
    return data


def read_splits(run_dir: str | Path) -> dict[str, list[str]]:
    path = RunDir(run_dir).splits
    if not path.is_file():
        raise UserError(f"{run_dir} has no splits.json", "pass a run directory made by carotid-train")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})", "restore the run's splits.json") from None
    if not isinstance(splits, dict) or not all(isinstance(splits.get(s), list) for s in ("train", "val", "test")):
        raise UserError(
            f"{path} does not hold the train, val and test lists of person IDs", "restore the run's splits.json"
        )
    return splits


def record_warnings(run_dir: str | Path, said: list[str]) -> None:
    """data_report.json's "warnings": every warning the start-up block said (the data's, the split's, the
    frames', the run's), in order, once each."""
    path = RunDir(run_dir).data_report
    report = json.loads(path.read_text(encoding="utf-8"))
    report["warnings"] = list(dict.fromkeys(report.get("warnings", []) + said))
    atomic_write_json(path, report)


def remove_leftovers(run_dir: str | Path) -> None:
    """Delete the temp files of atomic writes whose process was killed (the real files are intact)."""
    for folder in (Path(run_dir), RunDir(run_dir).models):
        for stale in folder.glob(".*.tmp-*"):
            if _left_by_dead_process(stale.name):
                stale.unlink(missing_ok=True)


_HOST = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "host"


def _left_by_dead_process(name: str) -> bool:
    """Whether a temp file '.NAME.tmp-<pid>' or a staging folder '.train_<stamp>_<host>_<pid>.partial' was left
    by a process of this machine that no longer runs (jobs on other nodes may share the output dir)."""
    found = re.search(r"_([^_]+)_(\d+)\.partial$", name) or re.search(r"()\.tmp-(\d+)$", name)
    if not found or found.group(1) not in ("", _HOST) or int(found.group(2)) == os.getpid():
        return False
    try:
        os.kill(int(found.group(2)), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False
