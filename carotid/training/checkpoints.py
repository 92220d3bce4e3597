"""Resumable training state: `checkpoints/checkpoint-<step>[-epoch-end]/` folders of a run directory.

Each is an Accelerate `save_state` folder (model, optimizer, scheduler, RNG states; pickled, so trusted
own-run data only) plus our `progress.json`. A folder gets its final name only once it is complete,
so `list_checkpoints` never returns half a checkpoint; the last `--keep-checkpoints` are kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from carotid.core import run_dir as run_folder
from carotid.core.errors import UserError
from carotid.core.files import atomic_write_json, file_sha256, fsync_dir
from carotid.core.run_dir import RunDir, remove_leftovers
from carotid.data.manifest import DataManifest

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})(-epoch-end)?$")
PROGRESS_FILE = "progress.json"


def checkpoint_name(global_step: int, epoch_end: bool) -> str:
    return f"checkpoint-{global_step:08d}{'-epoch-end' if epoch_end else ''}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. A folder only gets its final name once it is complete."""
    folder = RunDir(run_dir).checkpoints
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and (p / PROGRESS_FILE).is_file()]
    return sorted(found, key=lambda p: (int(CHECKPOINT_RE.match(p.name).group(1)), p.name.endswith("-epoch-end")))


def read_progress(checkpoint: Path, num_processes: int | None = None, run_dir: Path | None = None) -> dict[str, Any]:
    """The run's progress saved beside Accelerate's state. Given this launch's `num_processes`, a UserError when
    another number of processes wrote it (the loaders' sharding and the RNG states are per rank)."""
    saved = json.loads((checkpoint / PROGRESS_FILE).read_text(encoding="utf-8"))
    if num_processes is not None and saved["world_size"] != num_processes:
        best = RunDir(run_dir or checkpoint.parent.parent).best_model
        raise UserError(
            f"{checkpoint} was written by {saved['world_size']} process(es), this launch has {num_processes}",
            f"resume with --num_processes {saved['world_size']}, or start a new run with --load-model {best}",
        )
    return saved


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Keep the last `keep` checkpoints; drop what killed saves left behind (temp folders and files)."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in RunDir(run_dir).checkpoints.glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_leftovers(run_dir)


def resolve_resume(path: str | Path) -> tuple[Path, Path | None]:
    """(run dir, checkpoint folder or None) for `--resume` given a run dir or a checkpoint inside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"--resume path not found: {path}", "pass a run directory (output/train_…) or a checkpoint in it"
        )
    if (path / PROGRESS_FILE).is_file() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if not RunDir(path).is_run():
        raise UserError(
            f"--resume {path} is neither a run directory nor a checkpoint folder",
            "pass output/train_YYYYMMDD_HHMMSS or one of its checkpoints/checkpoint-* folders",
        )
    checkpoints = list_checkpoints(path)
    models = sorted(RunDir(path).models.glob("*_model.pth"))
    if not checkpoints and models:  # a checkpoint is written before the first model file: these were deleted
        raise UserError(
            f"--resume {path}: its checkpoints/ folder holds no checkpoint, yet the run has trained "
            f"({', '.join('models/' + m.name for m in models)}); resuming would start again at epoch 1 and replace "
            "its models",
            f"restore its checkpoints/ folder, or start a new run from its model: --load-model {models[0]}",
        )
    remove_leftovers(path)  # a killed run may have left half-written temp files; its real files are whole
    return path, (checkpoints[-1] if checkpoints else None)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_training_state(
    accelerator, run_dir: str | Path, progress: dict[str, Any], *, global_step: int, epoch_end: bool, keep: int
) -> Path:
    """Collective: every rank calls it. Accelerate writes the state into a hidden folder, the main
    process adds progress.json and renames the folder into place, then prunes to the last `keep`."""
    folder = RunDir(run_dir).checkpoints
    name = checkpoint_name(global_step, epoch_end)
    tmp, final = folder / f".{name}.tmp", folder / name
    if accelerator.is_main_process:
        folder.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_json(tmp / PROGRESS_FILE, progress)
            _fsync_tree(tmp)
            if final.exists():  # the same step saved again (a stop right after a checkpoint): swap, never delete first
                aside = folder / f".{name}.old.tmp"
                shutil.rmtree(aside, ignore_errors=True)
                os.rename(final, aside)
                os.rename(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
            else:
                os.rename(tmp, final)
            fsync_dir(folder)
            prune_checkpoints(run_dir, keep)
    except Exception as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if hasattr(err, "add_note"):  # Python 3.11+: printed under the traceback
            err.add_note(
                f"carotid: writing checkpoint {final} failed (a full disk?); the earlier checkpoints in {folder} "
                f"are intact: free some space and continue with --resume {run_dir}"
            )
        raise
    accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------------------------------------
# The labels a resumed run goes on with
# ---------------------------------------------------------------------------------------------


def check_resumed_labels(run_dir: Path, manifest: DataManifest, label_excel: str) -> list[str]:
    """A resumed run goes on with the labels it started with. A label file whose content changed is refused
    when any of the run's persons has another label (the epochs done learned the old ones); when their labels
    are the same (rows of other persons added or edited) the run goes on, and config.yaml records the new file
    and its SHA-256 beside the old one. Returns the warnings for the start-up block."""
    config = run_folder.read_run_config(run_dir)
    started_sha, sha = config.get("label_file_sha256"), file_sha256(label_excel)
    if started_sha is None or sha == started_sha:
        return []
    started = config["options"].get("label_excel")
    before = _started_labels(run_dir)
    now = {p: manifest.class_names[k] for p, k in manifest.person_labels.items()}
    fix = (
        f"resume with the label file the run started with ({started}, SHA-256 {started_sha[:12]}…), or start a "
        f"new run on the new labels (--load-model {RunDir(run_dir).best_model} starts from its weights)"
    )
    if not isinstance(before, dict):
        raise UserError(
            f"{label_excel} is not the label file the run started with (SHA-256 {sha[:12]}…, not {started_sha[:12]}…) "
            "and the run predates the record of each person's label, so it cannot be checked",
            fix,
        )
    changed = sorted(p for p in before if now.get(p) != before[p])
    if changed:
        shown = ", ".join(f"'{p}' {before[p]!r} → {now.get(p)!r}" for p in changed[:3])
        raise UserError(
            f"{label_excel} changed since the run started: {len(changed)} of its {len(before)} persons have another "
            f"label (e.g. {shown})",
            fix,
        )
    history = config.get("label_file_history", []) + [{"label_excel": started, "label_file_sha256": started_sha}]
    extra = {k: v for k, v in config.items() if k != "options"}
    extra |= {"label_file_sha256": sha, "label_file_history": history}
    options = config["options"] | {"label_excel": str(label_excel)}
    run_folder.write_run_config(RunDir(run_dir).config, options, extra)
    return [
        f"{label_excel} is not the file the run started with ({started}), but its {len(before)} persons have the "
        "same labels in both: the run goes on, and config.yaml records the new file and its SHA-256"
    ]


def _started_labels(run_dir: Path) -> dict | None:
    """Each person's label when the run started (data_report.json's person_labels; None for older runs)."""
    try:
        return json.loads(RunDir(run_dir).data_report.read_text(encoding="utf-8")).get("person_labels")
    except (OSError, ValueError, AttributeError):
        return None


def disk_full(err: OSError, run_dir: Path) -> str:
    """The one line for a full disk (or quota) during training: which disk, and how the run continues."""
    then = (
        f"then continue with --resume {run_dir} (its checkpoints and model files are complete: each is written "
        "whole or not at all)"
        if list_checkpoints(run_dir)
        else "then start the run again (no checkpoint had been saved yet)"
    )
    return (
        f"error: the disk holding {run_dir} is full ({err.strerror}{': ' + str(err.filename) if err.filename else ''})"
        f" — free space on it (df -h {run_dir}), {then}"
    )
