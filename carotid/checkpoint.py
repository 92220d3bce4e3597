"""The run directory, the model file format, atomic writes and resumable state.

Two kinds of saved state, kept apart:
- `models/*.pth` are deployable model files: a dict of tensors and plain values that loads with
  `torch.load(..., weights_only=True)` and is enough to evaluate or predict anywhere.
- `checkpoints/checkpoint-<step>/` are Accelerate `save_state` folders (model, optimizer, RNG...) plus
  our `progress.json`; they hold pickled non-tensor state and are trusted, own-run data.
Every file is written to a temporary name, flushed to disk and renamed, so a crash or a kill leaves
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from carotid.errors import UserError

MODEL_FORMAT = "carotid-model"
MODEL_FORMAT_VERSION = 1
MODEL_KEYS = ("state_dict", "arch", "num_classes", "class_names", "in_channels", "image_size", "normalization")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d{8})(-epoch-end)?$")
PROGRESS_FILE = "progress.json"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, rename over `path`; the old file survives any fault."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_csv(path: str | Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """Rewrite a small CSV whole (atomically), so a kill never leaves half a row."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in columns})
    atomic_write_text(path, out.getvalue())


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_csv(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------


def stage_run_dir(output_dir: str | Path) -> Path:
    """Make a hidden staging folder in output_dir; `publish_run_dir` renames it to train_YYYYMMDD_HHMMSS.

    The run's first files (config.yaml, splits.json, data_report.json) are written into the staging
    folder, so a run directory never exists without them."""
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = out / f".train_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}.partial"
        staging.mkdir()
    except OSError as err:
        raise UserError(f"cannot write to output dir {out} ({err.strerror})", "pass a writable --output-dir") from None
    return staging


def publish_run_dir(staging: Path) -> Path:
    stamp = time.strftime("%Y%m%d_%H%M%S")
    for k in range(1000):
        final = staging.parent / (f"train_{stamp}" if k == 0 else f"train_{stamp}_{k}")
        if final.exists():
            continue
        try:
            os.rename(staging, final)
        except OSError:
            continue  # another run took the name first
        _fsync_dir(staging.parent)
        return final
    raise RuntimeError(f"could not name a run directory in {staging.parent}")


def check_writable(output_dir: str | Path) -> None:
    """Fail early (before any work) when output_dir cannot be created or written."""
    out = Path(output_dir)
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"output dir {out} is not writable", "pass a --output-dir you can write to")


def software_versions() -> dict[str, str]:
    import accelerate
    import sklearn
    import torchvision

    import carotid

    versions = {"carotid": carotid.__version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
                "accelerate": str(accelerate.__version__), "scikit-learn": str(sklearn.__version__)}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        versions["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        versions["git_commit"] = "unknown"
    return versions


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_run_config(path: Path, options: dict[str, Any], extra: dict[str, Any]) -> None:
    text = "# Resolved options of this run (carotid-train --config accepts the 'options' section).\n"
    text += yaml.safe_dump({"options": options, **extra}, allow_unicode=True, sort_keys=False)
    atomic_write_text(path, text)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a carotid run directory (no config.yaml)", "pass a folder made by carotid-train")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise UserError(f"{path} is not a carotid run config", "pass a folder made by carotid-train")
    return data


def read_splits(run_dir: str | Path) -> dict[str, list[str]]:
    path = Path(run_dir) / "splits.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no splits.json", "pass a run directory made by carotid-train")
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# Model files
# ---------------------------------------------------------------------------------------------


def save_model_file(path: str | Path, state_dict: dict[str, torch.Tensor], **meta: Any) -> None:
    """A deployable model file: the consolidated state dict plus everything needed to use it."""
    payload = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
               "state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, **meta}
    atomic_torch_save(payload, path)


def load_model_file(path: str | Path) -> dict[str, Any]:
    """Load a carotid model file with weights_only=True; anything else is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}", "check the path (models are in RUN/models/)")
    if not path.is_file():
        raise UserError(f"model path is not a file: {path}", "pass a .pth file such as RUN/models/best_model.pth")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - refused pickles and corrupt archives alike
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise UserError(f"{path} is not a safe carotid model file ({reason})",
                        "only model files written by carotid (or plain tensors) can be loaded; never load untrusted pickles") from None
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a carotid model file (no '{MODEL_FORMAT}' header)",
                        "pass RUN/models/best_model.pth or final_model.pth from carotid-train")
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise UserError(f"{path} is an incomplete carotid model file (missing {', '.join(missing)})", "re-export it with carotid-train")
    if data.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer carotid (format {data['format_version']})", "upgrade carotid")
    return data


# ---------------------------------------------------------------------------------------------
# Resumable checkpoints
# ---------------------------------------------------------------------------------------------


def checkpoint_name(global_step: int, epoch_end: bool) -> str:
    return f"checkpoint-{global_step:08d}{'-epoch-end' if epoch_end else ''}"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first. A folder only gets its final name once it is complete."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_RE.match(p.name) and (p / PROGRESS_FILE).is_file()]
    return sorted(found, key=lambda p: (int(CHECKPOINT_RE.match(p.name).group(1)), p.name.endswith("-epoch-end")))


def read_progress(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / PROGRESS_FILE).read_text(encoding="utf-8"))


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (Path(run_dir) / "checkpoints").glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def resolve_resume(path: str | Path) -> tuple[Path, Path | None]:
    """(run dir, checkpoint folder or None) for `--resume` given a run dir or a checkpoint inside it."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"--resume path not found: {path}", "pass a run directory (output/train_…) or a checkpoint in it")
    if (path / PROGRESS_FILE).is_file() and path.parent.name == "checkpoints":
        return path.parent.parent, path
    if not (path / "config.yaml").is_file():
        raise UserError(f"--resume {path} is neither a run directory nor a checkpoint folder",
                        "pass output/train_YYYYMMDD_HHMMSS or one of its checkpoints/checkpoint-* folders")
    checkpoints = list_checkpoints(path)
    return path, (checkpoints[-1] if checkpoints else None)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_training_state(accelerator, run_dir: str | Path, progress: dict[str, Any], *, global_step: int,
                        epoch_end: bool, keep: int) -> Path:
    """Collective: every rank calls it. Accelerate writes the state into a hidden folder, the main
    process adds progress.json and renames the folder into place, then prunes to the last `keep`."""
    folder = Path(run_dir) / "checkpoints"
    name = checkpoint_name(global_step, epoch_end)
    tmp, final = folder / f".{name}.tmp", folder / name
    if accelerator.is_main_process:
        folder.mkdir(exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / PROGRESS_FILE, progress)
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(folder)
        prune_checkpoints(run_dir, keep)
    accelerator.wait_for_everyone()
    return final
