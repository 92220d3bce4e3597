"""The metric registry: every metric's name and role, and the person-aggregation methods.

The metrics.csv columns, the `--monitor` choices, the epoch line, the evaluation table and the
bootstrap's list all derive from `METRICS`; adding a metric is one entry here plus its arithmetic in
`carotid.evaluation.metrics` (and in `bootstrap.ResampledMetrics` if it should get a CI or be logged
every epoch). Free of numpy and torch, so
option parsing can import it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SEED, DEFAULT_BOOTSTRAP = 42, 1000  # the training seed, and person resamples for the 95% CIs
LEVELS = ("image", "person")
CI_METHODS = ("wilson", "exact", "bootstrap")  # --ci: how per-person proportions get their CI (the first: default)


@dataclass(frozen=True)
class Metric:
    name: str
    binary_only: bool = False  # defined at a threshold on the positive class
    per_epoch: tuple[str, ...] = ()  # levels logged for validation every epoch: val_<name>, val_person_<name>
    epoch_line: tuple[str, ...] = ()  # levels shown on the console's epoch line
    bootstrap: bool = False  # gets a person-bootstrap CI in evaluations


METRICS = (
    Metric("auc", per_epoch=LEVELS, epoch_line=LEVELS, bootstrap=True),
    Metric("accuracy", per_epoch=LEVELS, epoch_line=("image",), bootstrap=True),
    Metric("balanced_accuracy", per_epoch=LEVELS, bootstrap=True),
    Metric("f1"),
    Metric("sensitivity", binary_only=True, bootstrap=True),
    Metric("specificity", binary_only=True, bootstrap=True),
    Metric("ppv", binary_only=True),
    Metric("npv", binary_only=True),
)


def val_column(metric: str, level: str) -> str:
    """The metrics.csv column of a validation metric: val_auc (per image), val_person_auc (per person)."""
    return f"val_{metric}" if level == "image" else f"val_{level}_{metric}"


VAL_COLUMNS = tuple(val_column(m.name, level) for level in LEVELS for m in METRICS if level in m.per_epoch)
PERSON_COLUMNS = tuple(val_column(m.name, "person") for m in METRICS if "person" in m.per_epoch)


def person_monitor(monitor: str) -> str:
    """The per-person column of a validation metric (val_auc → val_person_auc): what a person model logs."""
    if monitor in ("val_loss", "train_loss") or monitor.startswith("val_person_"):
        return monitor
    return monitor.replace("val_", "val_person_", 1)


EPOCH_LINE = ("val_loss",) + tuple(
    val_column(m.name, level) for level in LEVELS for m in METRICS if level in m.epoch_line
)
METRIC_COLUMNS = (
    ("epoch", "train_loss", "train_accuracy", "val_loss")
    + VAL_COLUMNS
    + ("lr", "epoch_seconds", "images_per_second", "data_wait_fraction", "unreadable_frames")
)
MONITORS = ("auto", "val_loss") + VAL_COLUMNS
BOOTSTRAP_METRICS = tuple(m.name for m in METRICS if m.bootstrap)


def table_metrics(binary: bool) -> list[str]:
    """The rows of an evaluation table, in registry order."""
    return [m.name for m in METRICS if binary or not m.binary_only]


def lower_is_better(monitor: str) -> bool:
    return monitor.endswith("loss")


# ---------------------------------------------------------------------------------------------
# Calibration (carotid.evaluation.calibration): how far the probabilities are from observed rates
# ---------------------------------------------------------------------------------------------

ECE_BINS = 10  # equal-width bins of the predicted probability for the expected calibration error
CALIBRATION_METRICS = (
    Metric("brier"),
    Metric("ece"),
    Metric("calibration_slope", binary_only=True),
    Metric("calibration_intercept", binary_only=True),
    Metric("calibration_in_the_large", binary_only=True),
)
CALIBRATIONS = ("temperature",)  # --calibrate choices


# ---------------------------------------------------------------------------------------------
# Operating points (--operating-point): thresholds chosen on the validation persons
# ---------------------------------------------------------------------------------------------

OPERATING_POINT_KINDS = ("youden", "sensitivity", "specificity")
OPERATING_POINT_HELP = "youden, sensitivity=0.90 (highest threshold with sensitivity ≥ 0.90) or specificity=0.90"


@dataclass(frozen=True)
class OperatingPointSpec:
    kind: str  # one of OPERATING_POINT_KINDS
    target: float | None  # the sensitivity or specificity to reach; None for youden

    @property
    def name(self) -> str:
        return self.kind if self.target is None else f"{self.kind}={self.target:g}"


def parse_operating_point(text: str) -> OperatingPointSpec | None:
    """'youden', 'sensitivity=0.9', 'specificity=0.95' → the spec; None when the text is none of these."""
    kind, _, value = str(text).strip().lower().partition("=")
    kind = kind.strip()
    if kind == "youden" and not value:
        return OperatingPointSpec("youden", None)
    if kind in ("sensitivity", "specificity"):
        try:
            target = float(value)
        except ValueError:
            return None
        if math.isfinite(target) and 0.0 < target <= 1.0:
            return OperatingPointSpec(kind, target)
    return None
