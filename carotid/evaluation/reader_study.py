"""A reader as a "model" (`carotid-evaluate --reader-column COL`): a radiologist's call or score from a
column of the label sheet, scored on the same persons as the model, into an evaluation folder that
`carotid-compare` accepts (person_predictions.csv + metrics.json).

A column is read as one of three kinds, decided from all of its values and printed:
- call: every value is a class name, or every value is 0/1 (1 = the positive class);
- probability: numbers in [0, 1] (threshold 0.5 unless --reader-threshold);
- score: any other numbers, higher = more likely positive (a Likert or BI-RADS-like scale; needs
  --reader-threshold for sensitivity and specificity).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from carotid.core.errors import UserError
from carotid.core.files import write_table
from carotid.core.run_dir import EvalDir
from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.calibration import BINNING, calibration_metrics
from carotid.evaluation.metrics import classification_metrics
from carotid.evaluation.records import write_metrics


@dataclass
class ReaderScores:
    kind: str  # call, probability or score
    scores: dict[str, float]  # person → score (call: 1.0 positive, 0.0 negative)
    threshold: float
    threshold_source: str
    notes: list[str] = field(default_factory=list)


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_reader(
    column: str, values: dict[str, str | None], class_names: list[str], positive_index: int, threshold: float | None
) -> ReaderScores:
    """The reader's score of every person with a value in `values` (persons without one are left out)."""
    given = {p: v for p, v in values.items() if v is not None}
    if not given:
        raise UserError(f"--reader-column '{column}' is empty for every evaluated person", "check the column name")
    positive = class_names[positive_index]
    if set(given.values()) <= set(class_names):
        scores = {p: float(v == positive) for p, v in given.items()}
        return ReaderScores("call", scores, 0.5, f"the reader's call ('{positive}' = positive)")
    numbers = {p: _number(v) for p, v in given.items()}
    bad = sorted({v for p, v in given.items() if numbers[p] is None})
    if bad:
        raise UserError(
            f"--reader-column '{column}' holds {', '.join(map(repr, bad[:3]))}: neither class names {class_names} "
            "nor numbers",
            "give the reader's call as a class name or 0/1, or a score as a number",
        )
    distinct = set(numbers.values())
    if distinct <= {0.0, 1.0}:
        note = f"reader column '{column}': 0/1 read as a call, 1 = '{positive}'"
        return ReaderScores("call", numbers, 0.5, f"the reader's call (1 = '{positive}')", [note])
    if min(distinct) >= 0.0 and max(distinct) <= 1.0:
        if threshold is None:
            return ReaderScores("probability", numbers, 0.5, "default 0.5 for a probability")
        return ReaderScores("probability", numbers, threshold, "--reader-threshold")
    if threshold is None:
        raise UserError(
            f"--reader-column '{column}' holds scores from {min(distinct):g} to {max(distinct):g}, not probabilities",
            "pass --reader-threshold T (positive if score ≥ T), e.g. the scale's cut-off for a positive call",
        )
    note = f"reader column '{column}': scores from {min(distinct):g} to {max(distinct):g}, higher = '{positive}'"
    return ReaderScores("score", numbers, threshold, "--reader-threshold", [note])


def reader_out_dir(model_out: Path, column: str) -> Path:
    """OUT_reader_<COL>/ beside the model's evaluation folder."""
    return model_out.with_name(f"{model_out.name}_reader_{re.sub(r'[^A-Za-z0-9_.-]+', '_', column).strip('_')}")


def evaluate_reader(
    column: str,
    values: dict[str, str | None],
    persons: dict[str, tuple[int, int]],
    class_names: list[str],
    positive_index: int,
    out_dir: Path,
    *,
    threshold: float | None,
    split: str,
    bootstrap: int,
    seed: int,
    data_notes: list[str],
) -> dict:
    """Score the reader on `persons` ({person: (true class, frames)}) and write its evaluation folder."""
    if len(class_names) != 2:
        raise UserError(f"--reader-column needs a binary task; the classes are {class_names}", "drop --reader-column")
    reader = read_reader(column, {p: values.get(p) for p in persons}, class_names, positive_index, threshold)
    ids = np.array(sorted(reader.scores), dtype=str)
    missing = sorted(set(persons) - set(reader.scores))
    notes = list(reader.notes)
    if missing:
        notes.append(f"{len(missing)} person(s) have no reader value and are left out, e.g. {missing[:5]}")
    y = np.array([persons[p][0] for p in ids], dtype=int)
    score = np.array([reader.scores[p] for p in ids])
    probs = np.zeros((len(ids), 2))
    probs[:, positive_index], probs[:, 1 - positive_index] = score, 1.0 - score  # rows sum to 1 for the bootstrap
    person, warnings = classification_metrics(y, probs, class_names, positive_index, reader.threshold)
    calibration, ci = _reader_uncertainty(reader, ids, y, probs, class_names, positive_index, bootstrap, seed, warnings)
    report = {
        "reader": {"column": column, "kind": reader.kind},
        "split": split,
        "class_names": class_names,
        "positive_class": class_names[positive_index],
        "n_persons": int(len(ids)),
        "counts": {"persons": dict(zip(class_names, np.bincount(y, minlength=2).tolist()))},
        "threshold": reader.threshold,
        "threshold_source": reader.threshold_source,
        "person": person,
        "ci": ci,
        "calibration": calibration,
        "warnings": [f"person: {w}" for w in warnings],
        "data_notes": data_notes + notes,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(EvalDir(out_dir).metrics, report)
    _write_reader_table(EvalDir(out_dir).person_predictions, reader, ids, score, persons, class_names, positive_index)
    return report


def _reader_uncertainty(reader, ids, y, probs, class_names, positive_index, bootstrap, seed, warnings) -> tuple:
    """(calibration section for a probability reader, else None; person-bootstrap CIs or None)."""
    calibration = None
    if reader.kind == "probability":
        per_person, calibration_notes = calibration_metrics(y, probs, class_names, positive_index)
        calibration = {"binning": BINNING, "person": per_person}
        warnings += calibration_notes
    if not bootstrap:
        return calibration, None
    ci = bootstrap_ci(
        ids,
        y,
        probs,
        n_classes=2,
        positive_index=positive_index,
        threshold=reader.threshold,
        n_resamples=bootstrap,
        seed=seed,
    )
    return calibration, {"person": ci["person"], "method": ci["method"]}


def _write_reader_table(path, reader, ids, score, persons, class_names, positive_index) -> None:
    """person_predictions.csv of the reader. A score (e.g. 1-5) is no probability: prob_<positive> holds it as
    given and prob_<negative> stays empty."""

    def prob_of(value: float) -> str:
        return "" if reader.kind == "score" else f"{value:.6f}"

    write_table(
        path,
        ["person_id", "true_label", "n_frames"] + [f"prob_{name}" for name in class_names] + ["predicted_label"],
        (
            [p, class_names[persons[p][0]], persons[p][1]]
            + [f"{s:.6f}" if k == positive_index else prob_of(1.0 - s) for k in range(2)]
            + [class_names[positive_index if s >= reader.threshold else 1 - positive_index]]
            for p, s in zip(ids, score)
        ),
    )


def format_reader(report: dict) -> str:
    """One line: the reader's kind, persons, threshold, and AUC, sensitivity and specificity with CIs."""
    person, ci = report["person"], (report["ci"] or {}).get("person") or {}

    def cell(key: str) -> str:
        value, interval = person.get(key), ci.get(key)
        text = "n/a" if value is None else f"{value:.3f}"
        return text + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")

    return (
        f"reader '{report['reader']['column']}' ({report['reader']['kind']}, {report['n_persons']} persons, "
        f"threshold {report['threshold']:g}): "
        + ", ".join(f"{k} {cell(k)}" for k in ("auc", "sensitivity", "specificity"))
    )
