"""The records an evaluation writes and others read: metrics.json (`MetricsRecord`), cv_metrics.json
(`CVMetricsRecord`) and what is chosen on the validation persons (`ValidationChoice`, stored in the model file).

Each file is written by one function here and read by one function here, with its schema version in it;
older files (no `schema_version`) read as version 1 with the keys added since filled with their defaults.
The records are TypedDicts: JSON as it is on disk, with the keys and their types written down once.
docs/EVALUATION.md says what each key means.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

from carotid.core.errors import UserError
from carotid.core.files import atomic_write_json

METRICS_SCHEMA = 2  # 2: schema_version itself (0.2.0); 1: every file before it
CV_METRICS_SCHEMA = 2


class Interval(TypedDict):
    low: float
    high: float


class ValidationChoice(TypedDict, total=False):
    """What the validation persons decide (evaluation.selection), stored in the model file and the run state."""

    threshold: float | None
    threshold_source: str | None
    temperature: float | None
    temperature_source: str | None
    operating_points: list[dict[str, Any]]
    notes: list[str]


class BestEpoch(TypedDict):
    """How best_model.pth's epoch was chosen (evaluation.selection.next_best): stored in the run state, the model
    file, metrics.json (`best_epoch`) and cv_metrics.json (each fold's `best_epoch`)."""

    monitor: str  # the metrics.csv column followed
    epoch: int | None  # the chosen epoch
    value: float | None  # its monitored value
    val_loss: float | None  # its val_loss: what breaks ties on the monitored value
    tie_break: str | None  # "val_loss" for a metric that can tie (AUC, accuracy, ...); None for a loss monitor
    tied_epochs: list[int]  # the epochs at the best monitored value, in order (the chosen one among them)
    saturated: bool  # the monitored value reached its ceiling (1.0): the metric no longer ranks epochs
    saturated_from: int | None  # the first epoch at the ceiling
    message: str | None  # what the run printed about the choice (ties or saturation); None without either


class MetricsRecord(TypedDict):
    """metrics.json: one evaluation of one model on one set of persons."""

    schema_version: int
    model_file: str
    arch: str
    model_epoch: int | None
    split: str
    run_dir: str | None
    data: dict[str, Any] | None
    data_notes: list[str]
    class_names: list[str]
    positive_class: str | None  # None for more than two classes
    n_images: int
    n_persons: int
    counts: dict[str, dict[str, int]]  # {"images"|"persons": {class: count}}
    person_model: str  # "frames", or a person model ("attention", "mean"): then no image level
    person_aggregation: str
    threshold: float | None
    threshold_source: str | None
    image: dict[str, Any] | None  # metric name → value (None where undefined); None for a person model
    person: dict[str, Any]
    ci: dict[str, Any] | None  # {"image"|"person": {metric: Interval}, "method": {...}}
    calibration: dict[str, Any]
    operating_points: list[dict[str, Any]]
    subgroups: dict[str, Any] | None
    subgroup_min_persons: int | None
    warnings: list[str]
    best_epoch: BestEpoch | None  # how the model file's epoch was chosen; None for a final model or older files
    unreadable_images: list[dict[str, Any]]
    decoding: dict[str, Any]
    seen_by_model: dict[str, Any] | None  # external: persons in the model's own train/val split (not external)


class CVMetricsRecord(TypedDict):
    """cv_metrics.json: the out-of-fold result of a cross-validation, its folds and the test ensemble."""

    schema_version: int
    folds: int
    class_names: list[str]
    positive_class: str | None
    person_aggregation: str
    n_persons: int
    n_images: int
    split_method: str | None
    out_of_fold: dict[str, Any]
    per_fold: list[dict[str, Any]]
    fold_mean_sd: dict[str, Any]
    test_ensemble: dict[str, Any] | None


# Keys added after schema 1, with the value an older file means by leaving them out.
_METRICS_DEFAULTS: dict[str, Any] = {
    "image": {},  # a reader study has persons only
    "person_model": "frames",
    "threshold": None,
    "threshold_source": None,
    "ci": None,
    "data_notes": [],
    "counts": {},
    "calibration": {},
    "operating_points": [],
    "subgroups": None,
    "subgroup_min_persons": None,
    "warnings": [],
    "best_epoch": None,
    "seen_by_model": None,
    "unreadable_images": [],
    "decoding": {},
    "run_dir": None,
    "data": None,
}


def write_metrics(path: Path, record: MetricsRecord) -> None:
    atomic_write_json(path, {**record, "schema_version": METRICS_SCHEMA})


def read_metrics(path: Path) -> MetricsRecord:
    """metrics.json of any version, as the current record; an `error:` when it is not one."""
    data = _read_json(path, "metrics.json", "pass an evaluation folder written by carotid-evaluate or carotid-train")
    missing = [key for key in ("class_names", "person") if key not in data]
    if missing:
        raise UserError(f"{path} is not a carotid metrics.json (no {', '.join(missing)})", "evaluate the model again")
    return {"schema_version": 1, **_METRICS_DEFAULTS, **data}  # type: ignore[return-value]


def write_cv_metrics(path: Path, record: CVMetricsRecord) -> None:
    atomic_write_json(path, {**record, "schema_version": CV_METRICS_SCHEMA})


def read_cv_metrics(path: Path) -> CVMetricsRecord:
    data = _read_json(path, "cv_metrics.json", "pass a cross-validation folder written by carotid-train --folds")
    if "out_of_fold" not in data:
        raise UserError(f"{path} is not a carotid cv_metrics.json", "run the cross-validation again")
    return {"schema_version": 1, "split_method": None, "test_ensemble": None, **data}  # type: ignore[return-value]


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found", fix) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable {what} ({err})", fix) from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a {what}", fix)
    return data
