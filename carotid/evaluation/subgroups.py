"""Performance by subgroup (`carotid-evaluate --subgroup-column COL`): the metrics of each value of a
sheet column (hospital, device, sex, age band…) with person-bootstrap CIs and counts.

Every evaluated person is in exactly one row per column (an empty cell is the value "(missing)"), so
the rows' counts add up to the whole evaluation. Subgroups with fewer than `min_persons` persons or
one class only are listed and marked `small`: their intervals are too wide to read as a difference.

`carotid-compare` takes the same columns of the same label sheet (those the evaluations recorded, or its own
--subgroup-column) and gives each model's person AUC per value, by the same rows and bootstrap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carotid.core.errors import UserError
from carotid.data.sheet.labels import read_labels
from carotid.data.sheet.person_columns import read_person_columns
from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.compare import Side, negative_class
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


# ---------------------------------------------------------------------------------------------
# The subgroups of a comparison (carotid-compare): each model's person AUC per subgroup value
# ---------------------------------------------------------------------------------------------


def comparison_subgroups(
    sides: list[Side],
    names: list[str],
    columns: list[str],
    label_excel: str | None,
    *,
    min_persons: int,
    bootstrap: int,
    seed: int,
) -> dict | None:
    """compare.json's "subgroups": the columns (`columns`, else those the evaluations recorded), where they
    were read and why, and each model's AUC per value; None without a column."""
    notes = []
    given = bool(columns)
    if not given:
        columns, notes = recorded_columns(sides)
    if not columns:
        return None
    values, sheet, read, differ = sheet_columns(sides, columns, label_excel)
    return {
        "columns": columns,
        "chosen_by": "--subgroup-column" if given else "the columns the evaluations recorded",
        "label_excel": sheet,
        "min_persons": min_persons,
        "by_model": compare_subgroups(sides, names, values, min_persons=min_persons, bootstrap=bootstrap, seed=seed),
        "read": read,  # how many persons each column gave
        "notes": notes + differ,  # warnings: the evaluations disagree
    }


def recorded_columns(sides: list[Side]) -> tuple[list[str], list[str]]:
    """(the subgroup columns the evaluations recorded, in order of first mention; a note when they differ)."""
    recorded = [list((side.metrics.get("subgroups") or {}).keys()) for side in sides]
    columns = list(dict.fromkeys(c for cols in recorded for c in cols))
    if all(cols == recorded[0] for cols in recorded):
        return columns, []
    each = "; ".join(f"{side.folder}: {', '.join(cols) or 'none'}" for side, cols in zip(sides, recorded))
    return columns, [
        f"the evaluations recorded different subgroup columns ({each}): every model is shown by "
        f"{', '.join(columns)}, read from the label sheet"
    ]


def sheet_columns(
    sides: list[Side], columns: list[str], label_excel: str | None
) -> tuple[dict[str, dict[str, str | None]], str, list[str], list[str]]:
    """({column: {person ID: value}}, the sheet read, what was read, a warning when the evaluations recorded
    different sheets): `columns` of `label_excel`, else of the label sheet the first evaluation recorded
    (metrics.json's data), read as carotid-evaluate reads them."""
    recorded = [(side.folder, side.metrics.get("data")) for side in sides if side.metrics.get("data")]
    data = dict(recorded[0][1]) if recorded else {}
    differ = []
    sheets = {str(d.get("label_excel")) for _, d in recorded}
    if label_excel is None and len(sheets) > 1:
        differ.append(
            f"the evaluations recorded different label sheets ({', '.join(sorted(sheets))}): the subgroups are "
            f"read from {data['label_excel']}"
        )
    path = label_excel or data.get("label_excel")
    if path is None:
        raise UserError(
            "no evaluation records its label sheet (a reader's or an older evaluation)",
            "pass --label-excel with the sheet holding the subgroup columns",
        )
    if not Path(path).is_file():
        raise UserError(f"label sheet not found: {path}", "pass --label-excel with the sheet holding the columns")
    keep = label_excel is None  # the recorded sheet: its recorded sheet name and columns; another: found anew
    table = read_labels(
        path,
        data.get("sheet") if keep else None,
        data.get("id_column") if keep else None,
        data.get("label_column") if keep else None,
        min_classes=1,
        header_row=data.get("header_row") if keep else None,
    )
    values, read = read_person_columns(path, table.sheet, table.id_column, columns)
    return values, str(path), read, differ


def compare_subgroups(
    sides: list[Side],
    names: list[str],
    values: dict[str, dict[str, str | None]],
    *,
    min_persons: int,
    bootstrap: int,
    seed: int,
) -> dict[str, dict]:
    """{model name: {column: rows}}: each model's person AUC with its person-bootstrap CI per subgroup value.
    With the same seed and resamples, a model's intervals are its own evaluation's (the same persons drawn)."""
    y = (sides[0].truth == sides[0].positive_class).astype(int)
    return {
        name: subgroup_aucs(
            values,
            (side.person_ids, y, np.c_[1.0 - side.score, side.score]),
            [negative_class(side), side.positive_class],  # the columns of the probabilities
            1,
            min_persons=min_persons,
            bootstrap=bootstrap,
            seed=seed,
        )
        for name, side in zip(names, sides)
    }


def subgroup_aucs(
    columns: dict[str, dict[str, str | None]],
    persons: tuple[np.ndarray, np.ndarray, np.ndarray],
    class_names: list[str],
    positive_index: int,
    *,
    min_persons: int,
    bootstrap: int,
    seed: int,
) -> dict:
    """{column: rows}: subgroup_report's rows of `persons` (IDs, labels, probabilities) trimmed to the person AUC
    and its CI, what a forest plot shows where no one threshold holds for every person (a comparison's models,
    a cross-validation's folds)."""
    report = subgroup_report(
        columns,
        persons,  # one row per person: the frames are the persons
        persons,
        class_names=class_names,
        positive_index=positive_index,
        threshold=0.5,  # the metrics at a threshold are computed, then left out
        aggregation="mean",
        bootstrap=bootstrap,
        seed=seed,
        min_persons=min_persons,
    )
    return {
        column: [
            {key: row[key] for key in ("value", "n_persons", "small")}
            | {
                "counts": {"persons": row["counts"]["persons"]},
                "person": {"auc": row["person"].get("auc")},
                "ci": {"person": {"auc": ((row["ci"] or {}).get("person") or {}).get("auc")}},
            }
            for row in rows
        ]
        for column, rows in report.items()
    }
