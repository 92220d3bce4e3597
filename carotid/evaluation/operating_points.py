"""Operating points: thresholds on the positive class chosen on the validation persons (Youden's J, a
target sensitivity or a target specificity), stored in the model file and reported with CIs.

A clinic screens at "sensitivity ≥ 0.90" or confirms at "specificity ≥ 0.95"; the threshold that gives
that on the validation persons is what the test persons are then measured at.
"""

from __future__ import annotations

import math

import numpy as np

from carotid.evaluation.metrics import metrics_at_threshold, youden_threshold
from carotid.evaluation.registry import OperatingPointSpec, parse_operating_point


def _midpoint_below(score: float, scores: np.ndarray) -> float:
    """A threshold just below `score`: midway to the next lower score (0 when none), as pROC and the
    Youden threshold do, so the choice does not sit on the edge of the validation data."""
    lower = scores[scores < score]
    return float((score + (lower.max() if len(lower) else 0.0)) / 2)


def _midpoint_above(score: float, scores: np.ndarray) -> float:
    higher = scores[scores > score]
    return float((score + (higher.min() if len(higher) else 1.0)) / 2)


def _needed(target: float, n: int) -> int:
    return max(1, math.ceil(target * n - 1e-9))  # 0.9 x 10 is 9.000000000000002 in floating point


def threshold_for(spec: OperatingPointSpec, y_pos: np.ndarray, p_pos: np.ndarray) -> float | None:
    """The threshold (positive ⇔ p ≥ threshold) meeting `spec` on these persons; None with one class.

    sensitivity=x: the highest threshold whose sensitivity is ≥ x (so specificity is as high as it can
    be); specificity=x: the lowest threshold whose specificity is ≥ x."""
    y_pos, p_pos = np.asarray(y_pos).astype(bool), np.asarray(p_pos, dtype=np.float64)
    if y_pos.all() or not y_pos.any():
        return None
    if spec.kind == "youden":
        return youden_threshold(y_pos.astype(int), np.stack([1 - p_pos, p_pos], 1), 1)
    if spec.kind == "sensitivity":
        positives = np.sort(p_pos[y_pos])[::-1]
        return _midpoint_below(positives[_needed(spec.target, len(positives)) - 1], p_pos)
    negatives = np.sort(p_pos[~y_pos])
    return _midpoint_above(negatives[_needed(spec.target, len(negatives)) - 1], p_pos)


def choose_operating_points(
    specs: list[str], y_true: np.ndarray, person_probs: np.ndarray, positive_index: int
) -> tuple[list[dict], list[str]]:
    """[{name, threshold}] for each spec on the validation persons, and notes for those that could not be chosen."""
    y_pos = np.asarray(y_true) == positive_index
    p_pos = np.asarray(person_probs)[:, positive_index]
    points, notes = [], []
    for text in specs:
        spec = parse_operating_point(text)
        threshold = threshold_for(spec, y_pos, p_pos)
        if threshold is None:
            notes.append(f"operating point {spec.name} not chosen: the validation persons have one class")
            continue
        points.append({"name": spec.name, "threshold": threshold})
    return points, notes


def operating_point_report(
    points: list[dict], levels: dict[str, tuple[np.ndarray, np.ndarray]], positive_index: int, ci_of
) -> list[dict]:
    """Per stored operating point: its threshold, the metrics at it per level, and their bootstrap CIs.

    `levels` is {level: (labels, probs)}; `ci_of(threshold)` gives bootstrap_ci's dict (or None)."""
    out = []
    for point in points:
        entry = {"name": point["name"], "threshold": point["threshold"]}
        for level, (y, probs) in levels.items():
            entry[level] = metrics_at_threshold(
                y, np.asarray(probs)[:, positive_index], positive_index, point["threshold"]
            )
        ci = ci_of(point["threshold"])
        entry["ci"] = None if ci is None else {level: ci[level] for level in levels}
        out.append(entry)
    return out


def format_operating_points(points: list[dict]) -> str:
    lines = ["operating points (chosen on the validation persons), per person:"]
    for point in points:
        shown = []
        for key in ("sensitivity", "specificity", "ppv", "npv"):
            value = point["person"][key]
            interval = ((point["ci"] or {}).get("person") or {}).get(key)
            text = f"{key} {'n/a' if value is None else f'{value:.3f}'}"
            shown.append(text + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""))
        lines.append(f"  {point['name']:<18} threshold {point['threshold']:.3f}: " + ", ".join(shown))
    return "\n".join(lines)
