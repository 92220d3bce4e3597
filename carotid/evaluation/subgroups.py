"""Performance by subgroup (`carotid-evaluate --subgroup-column COL`): the metrics of each value of a
sheet column (hospital, device, sex, age band…) with person-bootstrap CIs and counts.

Every evaluated person is in exactly one row per column (an empty cell is the value "(missing)"), so
the rows' counts add up to the whole evaluation. Subgroups with fewer than `min_persons` persons or
one class only are listed and marked `small`: their intervals are too wide to read as a difference.
"""

from __future__ import annotations

import numpy as np

from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.metrics import classification_metrics
from carotid.evaluation.registry import BOOTSTRAP_METRICS

MISSING = "(missing)"
SHOWN = ("auc", "sensitivity", "specificity", "accuracy")  # the console's columns; metrics.json has every metric


def subgroup_report(
    columns: dict[str, dict[str, str | None]],
    frames: tuple[np.ndarray, np.ndarray, np.ndarray],
    persons: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    class_names: list[str],
    positive_index: int,
    threshold: float,
    aggregation: str,
    bootstrap: int,
    seed: int,
    min_persons: int,
    proportions: str = "wilson",
) -> dict:
    """{column: [one row per value]}; `frames` and `persons`: (person IDs, labels, probs) per image, per person."""
    frame_ids, frame_y, frame_p = frames
    person_ids, person_y, person_p = persons
    out = {}
    for column, values in columns.items():
        value_of = np.array([values.get(p) or MISSING for p in person_ids], dtype=object)
        rows = []
        for value in sorted(set(value_of), key=lambda v: (v == MISSING, v)):
            members = person_ids[value_of == value]
            in_frames, in_persons = np.isin(frame_ids, members), value_of == value
            y = person_y[in_persons]
            row = {
                "value": value,
                "n_persons": int(in_persons.sum()),
                "n_images": int(in_frames.sum()),
                "counts": {
                    "persons": dict(zip(class_names, np.bincount(y, minlength=len(class_names)).tolist())),
                    "images": dict(
                        zip(class_names, np.bincount(frame_y[in_frames], minlength=len(class_names)).tolist())
                    ),
                },
                "small": bool(in_persons.sum() < min_persons or len(np.unique(y)) < 2),
            }
            notes = []
            for level, (ly, lp) in {
                "image": (frame_y[in_frames], frame_p[in_frames]),
                "person": (y, person_p[in_persons]),
            }.items():
                row[level], level_notes = classification_metrics(ly, lp, class_names, positive_index, threshold)
                notes += [f"{level}: {n}" for n in level_notes]
            row["ci"] = None
            if bootstrap:
                ci = bootstrap_ci(
                    frame_ids[in_frames],
                    frame_y[in_frames],
                    frame_p[in_frames],
                    n_classes=len(class_names),
                    positive_index=positive_index,
                    threshold=threshold,
                    n_resamples=bootstrap,
                    seed=seed,
                    aggregation=aggregation,
                    proportions=proportions,
                )
                row["ci"] = {level: ci[level] for level in ("image", "person")}
            row["notes"] = notes
            rows.append(row)
        out[column] = rows
    return out


def subgroup_records(subgroups: dict) -> list[dict]:
    """Flat rows for subgroups.csv: column, value, counts, small, and each person metric with its CI."""
    records = []
    for column, rows in subgroups.items():
        for row in rows:
            record = {"column": column, "value": row["value"], "n_persons": row["n_persons"]}
            record |= {"n_images": row["n_images"], "small": row["small"]}
            record |= {f"persons_{name}": n for name, n in row["counts"]["persons"].items()}
            for key in BOOTSTRAP_METRICS:
                record[f"person_{key}"] = row["person"].get(key)
                interval = ((row["ci"] or {}).get("person") or {}).get(key)
                record[f"person_{key}_low"] = interval["low"] if interval else None
                record[f"person_{key}_high"] = interval["high"] if interval else None
            records.append(record)
    return records


def format_subgroups(subgroups: dict, min_persons: int) -> str:
    lines = []
    for column, rows in subgroups.items():
        keys = [k for k in SHOWN if k in rows[0]["person"]]
        lines.append(f"per person by '{column}' (* = fewer than {min_persons} persons or one class):")
        lines.append((f"  {'value':<16}{'persons':>8}  " + "".join(f"{k:<24}" for k in keys)).rstrip())
        for row in rows:
            cells = []
            for key in keys:
                value = row["person"].get(key)
                interval = ((row["ci"] or {}).get("person") or {}).get(key)
                text = "n/a" if value is None else f"{value:.3f}"
                if interval:
                    text += f" [{interval['low']:.2f}, {interval['high']:.2f}]"
                cells.append(f"{text:<24}")
            mark = "*" if row["small"] else " "
            lines.append((f"  {str(row['value'])[:15] + mark:<16}{row['n_persons']:>8}  " + "".join(cells)).rstrip())
    return "\n".join(lines)
