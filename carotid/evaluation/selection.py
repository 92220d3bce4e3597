"""What is chosen on the validation persons and stored in the model file: the temperature
(`--calibrate temperature`), the decision threshold (Youden's J) and the `--operating-point`s.

One function for the trainer (at every epoch, for the best and the final model) and for
`carotid-evaluate --calibrate/--operating-point` (on a finished run's validation persons). The threshold
and operating points are chosen on the probabilities the model file will give, so after the temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.calibration import EPS, apply_temperature, fit_temperature
from carotid.evaluation.metrics import youden_threshold
from carotid.evaluation.operating_points import choose_operating_points
from carotid.evaluation.records import ValidationChoice


@dataclass
class ValidationOutput:
    """The readable validation frames: true class, logits and person of each."""

    labels: np.ndarray
    logits: np.ndarray
    person_ids: np.ndarray
    probs: np.ndarray | None = None  # softmax(logits) as inference gives it, so thresholds match evaluations exactly


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
