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
import socket
import subprocess
import time
import warnings
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
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and hasattr(err, "add_note"):
            err.add_note(f"carotid: {path} was not replaced; the version written before (if any) is intact")
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
        staging = out / f".train_{time.strftime('%Y%m%d_%H%M%S')}_{_HOST}_{os.getpid()}.partial"
        staging.mkdir()
    except OSError as err:
        raise UserError(f"cannot write to output dir {out} ({err.strerror})", "pass a writable --output-dir") from None
    for stale in out.glob(".train_*.partial"):  # a run killed before it was published
        if _left_by_dead_process(stale.name):
            shutil.rmtree(stale, ignore_errors=True)
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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})",
                        "restore the run's config.yaml (carotid writes it; hand edits must keep it valid YAML)") from None
    if not isinstance(data, dict) or not isinstance(data.get("options"), dict):
        raise UserError(f"{path} is not a carotid run config", "pass a folder made by carotid-train")
    return data


def read_splits(run_dir: str | Path) -> dict[str, list[str]]:
    path = Path(run_dir) / "splits.json"
    if not path.is_file():
        raise UserError(f"{run_dir} has no splits.json", "pass a run directory made by carotid-train")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid JSON ({err})", "restore the run's splits.json") from None
    if not isinstance(splits, dict) or not all(isinstance(splits.get(s), list) for s in ("train", "val", "test")):
        raise UserError(f"{path} does not hold the train, val and test lists of person IDs", "restore the run's splits.json")
    return splits


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
    return check_model_file(safe_torch_load(path, "model file"), path)


def check_model_file(data: Any, path: str | Path) -> dict[str, Any]:
    """`data` (what a weights_only load of `path` gave) if it is a sound carotid model file, else a UserError."""
    if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
        raise UserError(f"{path} is not a carotid model file (no '{MODEL_FORMAT}' header)",
                        "pass RUN/models/best_model.pth or final_model.pth from carotid-train")
    missing = [k for k in MODEL_KEYS if k not in data]
    if missing:
        raise UserError(f"{path} is an incomplete carotid model file (missing {', '.join(missing)})", "re-export it with carotid-train")
    version = data.get("format_version", 0)
    if not isinstance(version, int) or version > MODEL_FORMAT_VERSION:
        raise UserError(f"{path} was written by a newer carotid (format {version})", "upgrade carotid")
    problem = _model_file_problem(data)
    if problem:
        raise UserError(f"{path} is a damaged carotid model file ({problem})", "re-export it with carotid-train")
    return data


def _model_file_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a model file's fields (a file written by carotid has none of these)."""
    state, names = data["state_dict"], data["class_names"]
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                           for k, v in state.items()):
        return "'state_dict' is not a dict of tensors"
    if not isinstance(data["arch"], str):
        return f"'arch' is {data['arch']!r}"
    if (not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names)
            or len(set(names)) != len(names)):
        return f"'class_names' is {names!r}"
    if data["num_classes"] != len(names):
        return f"'num_classes' is {data['num_classes']!r} but there are {len(names)} class names"
    if data["in_channels"] not in (1, 3) or isinstance(data["in_channels"], bool):
        return f"'in_channels' is {data['in_channels']!r}"
    if not isinstance(data["image_size"], int) or isinstance(data["image_size"], bool) or data["image_size"] < 1:
        return f"'image_size' is {data['image_size']!r}"
    norm = data["normalization"]
    if not isinstance(norm, dict) or not all(isinstance(norm.get(k), (list, tuple)) and len(norm[k]) == data["in_channels"]
                                             for k in ("mean", "std")):
        return f"'normalization' is {norm!r}"
    return None


def safe_torch_load(path: str | Path, what: str) -> Any:
    """torch.load with weights_only=True: tensors and plain values only, never a pickled callable."""
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - refused pickles and corrupt archives alike
        raise UserError(f"{what} {path} {_refusal_reason(err)}",
                        "only model files written by carotid (or plain state dicts of tensors) can be loaded; "
                        "never unpickle a file you do not trust") from None


def _refusal_reason(err: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours its message
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip()
        called = re.search(r"GLOBAL (\S+)", detail)
        if called:
            return (f"was refused: loading it would call '{called.group(1)}', which a file of weights never needs "
                    f"(a pickle like this can run any code)")
        first = (detail.splitlines() or ["unsupported content"])[0].strip()
        return f"was refused: it holds more than tensors and plain values ({first[:120]})"
    first = (text.strip().splitlines() or [""])[0].strip()
    return f"cannot be read as a PyTorch file: damaged or not a .pth ({type(err).__name__}{': ' + first[:120] if first else ''})"


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
    """Keep the last `keep` checkpoints; drop what killed saves left behind (temp folders and files)."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    for old in checkpoints[: max(len(checkpoints) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in (run_dir / "checkpoints").glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    remove_leftovers(run_dir)


def remove_leftovers(run_dir: str | Path) -> None:
    """Delete the temp files of atomic writes whose process was killed (the real files are intact)."""
    for folder in (Path(run_dir), Path(run_dir) / "models"):
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
    remove_leftovers(path)  # a killed run may have left half-written temp files; its real files are whole
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
            _fsync_dir(folder)
            prune_checkpoints(run_dir, keep)
    except Exception as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if hasattr(err, "add_note"):  # Python 3.11+: printed under the traceback
            err.add_note(f"carotid: writing checkpoint {final} failed (a full disk?); the earlier checkpoints in {folder} "
                         f"are intact: free some space and continue with --resume {run_dir}")
        raise
    accelerator.wait_for_everyone()
    return final
