"""What is chosen on the validation persons and stored in the model file: the best epoch (`next_best`), the
temperature (`--calibrate temperature`), the decision threshold (Youden's J) and the `--operating-point`s.

One function for the trainer (at every epoch, for the best and the final model) and for
`carotid-evaluate --calibrate/--operating-point` (on a finished run's validation persons). The threshold
and operating points are chosen on the probabilities the model file will give, so after the temperature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.calibration import EPS, apply_temperature, fit_temperature
from carotid.evaluation.metrics import youden_threshold
from carotid.evaluation.operating_points import choose_operating_points
from carotid.evaluation.records import BestEpoch, ValidationChoice
from carotid.evaluation.registry import lower_is_better

TIE_BREAK = "val_loss"  # a few validation persons give AUC few values: epochs tie, and 1.0 is often reached early
CEILING = 1.0  # every monitored metric but a loss lies in [0, 1]
_ACRONYMS = {"auc": "AUC", "f1": "F1", "ppv": "PPV", "npv": "NPV"}


@dataclass
class ValidationOutput:
    """The readable validation frames: true class, logits and person of each."""

    labels: np.ndarray
    logits: np.ndarray
    person_ids: np.ndarray
    probs: np.ndarray | None = None  # softmax(logits) as inference gives it, so thresholds match evaluations exactly


def no_best(monitor: str) -> BestEpoch:
    """The record before the first epoch."""
    return {
        "monitor": monitor,
        "epoch": None,
        "value": None,
        "val_loss": None,
        "tie_break": None if lower_is_better(monitor) else TIE_BREAK,
        "tied_epochs": [],
        "saturated": False,
        "saturated_from": None,
        "message": None,
    }


def next_best(best: Mapping[str, Any], row: Mapping[str, Any]) -> tuple[BestEpoch, bool]:
    """(the best-epoch record after the metrics row `row`, whether `row`'s epoch is now the best).

    The monitored value decides; among epochs at the same best value (a tie: at AUC 1.0, every epoch after the
    first to reach it), the lower val_loss wins, and the earlier epoch on a tie of both. A loss monitor has no
    tie-break. The rule is the same whatever the model kind, in every fold."""
    record = best_epoch_record(best)
    monitor, value, loss = record["monitor"], row.get(record["monitor"]), row.get(TIE_BREAK)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return record, False
    lower = lower_is_better(monitor)
    tied = record["value"] is not None and math.isclose(value, record["value"], rel_tol=0.0, abs_tol=1e-12)
    if record["value"] is None or (not tied and (value < record["value"] if lower else value > record["value"])):
        record.update(tied_epochs=[row["epoch"]], saturated=False, saturated_from=None)
        improved = True
    elif tied and record["tie_break"] is not None:
        record["tied_epochs"] = [*record["tied_epochs"], row["epoch"]]
        improved = loss is not None and (record["val_loss"] is None or loss < record["val_loss"])
    else:
        return record, False
    if improved:
        record.update(epoch=row["epoch"], value=value, val_loss=loss)
    if not lower and record["value"] >= CEILING:
        record.update(saturated=True, saturated_from=record["tied_epochs"][0])
    record["message"] = _best_epoch_message(record)
    return record, improved


def best_epoch_record(best: Mapping[str, Any]) -> BestEpoch:
    """The BestEpoch keys of the trainer's best-epoch state (which also holds its validation choice)."""
    return {**no_best(best["monitor"]), **{k: best[k] for k in BestEpoch.__annotations__ if k in best}}


def _best_epoch_message(record: BestEpoch) -> str | None:
    """'val AUC saturated at 1.0 from epoch 2; best epoch chosen by val loss: epoch 5 (…)', or None."""
    tied = record["tied_epochs"]
    if record["tie_break"] is None or (len(tied) < 2 and not record["saturated"]):
        return None
    name, by = metric_words(record["monitor"]), metric_words(record["tie_break"])
    head = (
        f"{name} saturated at {CEILING:.1f} from epoch {record['saturated_from']}"
        if record["saturated"]
        else f"{name} tied at {record['value']:.4f} in epochs {', '.join(map(str, tied))}"
    )
    at = f"at {CEILING:.1f}" if record["saturated"] else f"at {record['value']:.4f}"
    among = f"the lowest of {len(tied)} epochs {at}" if len(tied) > 1 else f"the only epoch {at}"
    loss = "n/a" if record["val_loss"] is None else f"{record['val_loss']:.4f}"
    return f"{head}; best epoch chosen by {by}: epoch {record['epoch']} ({by} {loss}, {among})"


def metric_words(column: str) -> str:
    """A metrics.csv column in words: val_person_auc → 'val person AUC'."""
    return " ".join(_ACRONYMS.get(part, part) for part in column.split("_"))


def choose_on_validation(
    val: ValidationOutput | None,
    *,
    aggregation: str,
    positive_index: int,
    calibrate: str | None = None,
    operating_points: list[str] | tuple[str, ...] = (),
    temperature: float | None = None,
    temperature_source: str | None = None,
) -> ValidationChoice:
    """The threshold, temperature and operating points chosen on the validation persons, with notes.

    Without `calibrate`, `temperature` (a model file's) is kept and the choices are made after it."""
    out: ValidationChoice = {
        "threshold": 0.5,
        "threshold_source": "default 0.5 (no validation split)",
        "temperature": temperature,
        "temperature_source": temperature_source,
        "operating_points": [],
        "notes": [],
    }
    if val is None:
        return out
    # scipy and scikit-learn load here, after the first epoch, not before the first batch.

    after = ""
    if calibrate == "temperature":
        fit = fit_temperature(val.logits, val.labels)
        out["temperature"] = fit["temperature"]
        out["temperature_source"] = (
            f"fitted on {fit['frames']} frames of {len(np.unique(val.person_ids))} validation persons: "
            f"NLL {fit['nll_before']:.4f} → {fit['nll_after']:.4f}"
        )
        after = " (after temperature scaling)"
    after = after or (" (after temperature scaling)" if temperature is not None else "")
    untouched = out["temperature"] is None and val.probs is not None
    probs = np.asarray(val.probs, dtype=np.float64) if untouched else apply_temperature(val.logits, out["temperature"])
    saturated = int(np.count_nonzero(probs.max(axis=1) > 1.0 - EPS))
    if calibrate == "temperature" and saturated > len(probs) / 2:
        out["notes"].append(
            f"temperature {out['temperature']:.3g} puts {saturated} of {len(probs)} validation frames at "
            f"probability 0 or 1: the validation persons are (almost) separated, so the temperature is likely "
            "fitted to them rather than to new persons; compare calibration before and after temperature "
            "scaling in the test evaluation (metrics.json calibration.before_temperature)"
        )
    if probs.shape[1] != 2:
        return out | {"threshold": None, "threshold_source": None}
    ids, person_probs = aggregate_persons(val.person_ids, probs, aggregation, positive_index)
    y = person_labels(val.person_ids, val.labels, ids)
    threshold = youden_threshold(y, person_probs, positive_index)
    if threshold is None:
        out["threshold_source"] = "default 0.5 (one class in the validation split)"
    else:
        out["threshold"] = threshold
        out["threshold_source"] = f"Youden's J on the {len(ids)} validation persons{after}"
    out["operating_points"], notes = choose_operating_points(list(operating_points), y, person_probs, positive_index)
    out["notes"] += notes
    return out
