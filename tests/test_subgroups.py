"""Subgroup tables (`--subgroup-column`), reading extra sheet columns, and operating points chosen on the
validation persons (`--operating-point`)."""

from __future__ import annotations

import csv

import numpy as np
import openpyxl
import pytest

from carotid import compare, evaluate
from carotid.commands import parse_evaluate_args
from carotid.core.errors import UserError
from carotid.data.sheet.labels import read_labels
from carotid.data.sheet.person_columns import read_person_columns
from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.metrics import classification_metrics, metrics_at_threshold, youden_threshold
from carotid.evaluation.operating_points import choose_operating_points
from carotid.evaluation.registry import parse_operating_point
from carotid.evaluation.subgroups import MISSING, subgroup_report
from carotid.training.config import parse_train_args
from tests.conftest import read_json, train_in_process, write_xlsx
from tests.latex import check_latex_table

NAMES = ["normal", "plaque"]


def synthetic_frames(n_persons: int = 40, frames: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    persons = np.repeat([f"p{i:02d}" for i in range(n_persons)], frames)
    labels = np.repeat(np.arange(n_persons) % 2, frames)
    p = np.clip(0.35 * labels + rng.uniform(0.1, 0.6, len(labels)), 0, 1)
    return persons, labels, np.stack([1 - p, p], 1)


def test_subgroup_tables_sum_to_the_whole_and_equal_the_metrics_of_their_persons():
    frame_ids, frame_y, frame_p = synthetic_frames()
    ids, person_p = aggregate_persons(frame_ids, frame_p)
    person_y = person_labels(frame_ids, frame_y, ids)
    hospital = {p: ("A" if i < 25 else "B") for i, p in enumerate(ids)}
    hospital[ids[-1]] = None  # an empty cell
    hospital[ids[-2]] = "C"  # one person: small
    report = subgroup_report(
        {"hospital": hospital},
        (frame_ids, frame_y, frame_p),
        (ids, person_y, person_p),
        class_names=NAMES,
        positive_index=1,
        threshold=0.45,
        aggregation="mean",
        bootstrap=100,
        seed=0,
        min_persons=5,
    )["hospital"]
    assert [r["value"] for r in report] == ["A", "B", "C", MISSING]
    assert sum(r["n_persons"] for r in report) == len(ids) and sum(r["n_images"] for r in report) == len(frame_ids)
    for name in NAMES:
        assert sum(r["counts"]["persons"][name] for r in report) == int((person_y == NAMES.index(name)).sum())
    assert [r["small"] for r in report] == [False, False, True, True]
    members = np.array([hospital[p] == "A" for p in ids])
    expected, _ = classification_metrics(person_y[members], person_p[members], NAMES, 1, 0.45)
    assert report[0]["person"]["auc"] == pytest.approx(expected["auc"])
    assert report[0]["person"]["confusion_matrix"] == expected["confusion_matrix"]
    total = np.sum([np.array(r["person"]["confusion_matrix"]) for r in report], axis=0)
    assert total.tolist() == metrics_at_threshold(person_y, person_p[:, 1], 1, 0.45)["confusion_matrix"]
    assert (
        report[0]["ci"]["person"]["auc"]["low"]
        <= report[0]["person"]["auc"]
        <= report[0]["ci"]["person"]["auc"]["high"]
    )


def test_read_person_columns_finds_the_header_below_a_title_row(tmp_path):
    path = write_xlsx(
        tmp_path / "l.xlsx",
        [
            ["Carotid study 2024"],
            ["ID", "label", "Hospital", "sex"],
            [1, "a", "H1", "F"],
            [2, "b", None, "M"],
            [1, "a", "H1", "F"],
        ],
    )
    values, notes = read_person_columns(path, "Sheet1", "ID", ["hospital", "sex"])  # header case does not matter
    assert values == {"hospital": {"1": "H1", "2": None}, "sex": {"1": "F", "2": "M"}}
    assert "column 'hospital' read for 1 persons" in notes[0]
    with pytest.raises(UserError, match="'device' not found"):
        read_person_columns(path, "Sheet1", "ID", ["device"])
    clash = write_xlsx(tmp_path / "c.xlsx", [["ID", "label", "site"], [1, "a", "H1"], [2, "b", "H1"], [1, "a", "H2"]])
    with pytest.raises(UserError, match="'1' has site 'H1' and 'H2'"):
        read_person_columns(clash, "Sheet1", read_labels(clash).id_column, ["site"])


def test_subgroup_column_end_to_end(trained_run, data_dir, tmp_path, capsys):
    _, label = data_dir
    sheet = openpyxl.load_workbook(label).active
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    extended = [rows[0] + ["医院", "sex"]] + [r + [f"H{i % 2}", "F" if i % 3 else None] for i, r in enumerate(rows[1:])]
    study = write_xlsx(tmp_path / "study.xlsx", extended, sheet=sheet.title)
    out = tmp_path / "e"
    argv = ["--run-dir", str(trained_run), "--label-excel", str(study), "--out", str(out), "--num-workers", "0"]
    assert evaluate.main([*argv, "--bootstrap", "50", "--subgroup-column", "医院", "--subgroup-column", "sex"]) == 0
    printed = capsys.readouterr().out
    assert "per person by '医院'" in printed and "per person by 'sex'" in printed
    report = read_json(out / "metrics.json")
    for column in ("医院", "sex"):
        assert sum(r["n_persons"] for r in report["subgroups"][column]) == report["n_persons"]
        assert sum(r["n_images"] for r in report["subgroups"][column]) == report["n_images"]
    assert all(r["small"] for r in report["subgroups"]["sex"])  # 3 test persons < 10
    assert (out / "subgroups.csv").read_text(encoding="utf-8").startswith("column,value,n_persons")
    with (out / "tables" / "subgroups.csv").open(encoding="utf-8") as handle:  # the paper's table, the same numbers
        table = list(csv.DictReader(handle))
    written = [(r["column"], r["value"], int(r["persons"]), float(r["auc"]) if r["auc"] else None) for r in table]
    assert written == [
        (column, "" if row["value"] is None else str(row["value"]), row["n_persons"], row["person"].get("auc"))
        for column, rows in report["subgroups"].items()
        for row in rows
    ]
    assert len(check_latex_table(out / "tables" / "subgroups.tex")) == len(table)
    assert evaluate.main([*argv, "--subgroup-column", "device"]) == 2
    assert "'device' not found" in capsys.readouterr().err

    # carotid-compare takes the columns the evaluations recorded from the same sheet: with the same resamples
    # and seed, each model's AUC and interval per subgroup are its evaluation's own forest plot's numbers.
    final = tmp_path / "final"
    argv = ["--run-dir", str(trained_run), "--label-excel", str(study), "--out", str(final), "--model", "final"]
    argv += ["--num-workers", "0", "--bootstrap", "50"]
    assert evaluate.main([*argv, "--subgroup-column", "医院", "--subgroup-column", "sex"]) == 0
    assert compare.main([str(out), str(final), "--out", str(tmp_path / "cmp"), "--bootstrap", "50"]) == 0
    assert "subgroups: 医院, sex (the columns the evaluations recorded)" in capsys.readouterr().out
    with (tmp_path / "cmp" / "forest_plot.csv").open(encoding="utf-8") as handle:
        compared = list(csv.DictReader(handle))
    for folder in (out, final):
        with (folder / "forest_plot.csv").open(encoding="utf-8") as handle:
            own = list(csv.DictReader(handle))
        names = list(dict.fromkeys(r["model"] for r in compared))
        mine = [r for r in compared if r["model"] == names[[out, final].index(folder)]]
        keys = ("column", "value", "n_persons", "auc", "auc_low", "auc_high")
        assert [[r[k] for k in keys] for r in mine] == [[r[k] for k in keys] for r in own] and own


# ---------------------------------------------------------------------------------------------
# Operating points
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 1.0])
def test_operating_point_thresholds_meet_their_target_on_validation(target):
    rng = np.random.default_rng(int(target * 100))
    y = (np.arange(57) % 3 == 0).astype(int)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, len(y)), 0, 1)
    probs = np.stack([1 - p, p], 1)
    points, notes = choose_operating_points([f"sensitivity={target}", f"specificity={target}", "youden"], y, probs, 1)
    assert notes == [] and [pt["name"] for pt in points] == [
        f"sensitivity={target:g}",
        f"specificity={target:g}",
        "youden",
    ]
    sens_t, spec_t = points[0]["threshold"], points[1]["threshold"]
    at = metrics_at_threshold(y, p, 1, sens_t)
    assert at["sensitivity"] >= target
    # The highest such threshold: the next higher score gives up sensitivity below the target.
    higher = p[p >= sens_t]
    next_up = np.min(higher[higher > np.min(higher)]) if len(np.unique(higher)) > 1 else None
    if next_up is not None:
        assert metrics_at_threshold(y, p, 1, next_up)["sensitivity"] < target
    at = metrics_at_threshold(y, p, 1, spec_t)
    assert at["specificity"] >= target
    lower = p[p < spec_t]
    if len(lower):
        assert metrics_at_threshold(y, p, 1, np.max(lower))["specificity"] < target
    assert points[2]["threshold"] == pytest.approx(youden_threshold(y, probs, 1))


def test_operating_point_specs_are_parsed_and_checked(capsys):
    assert parse_operating_point("Sensitivity=0.90").name == "sensitivity=0.9"
    assert parse_operating_point("youden").target is None
    for bad in ("sensitivity=1.5", "sensitivity", "npv=0.9", "youden=1", "specificity=nan"):
        assert parse_operating_point(bad) is None
    cfg, _ = parse_train_args(["--operating-point", "youden", "--operating-point", "specificity=0.95"])
    assert cfg.operating_point == ["youden", "specificity=0.95"]
    assert parse_train_args([])[0].operating_point == []
    with pytest.raises(UserError, match="'sens=0.9' is not understood"):
        parse_train_args(["--operating-point", "sens=0.9"])
    with pytest.raises(UserError, match="repeats a point"):
        parse_evaluate_args(["--operating-point", "youden", "--operating-point", "YOUDEN"])


def test_operating_points_from_a_yaml_config(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("operating_point: [youden, sensitivity=0.9]\ncalibrate: temperature\n")
    cfg, given = parse_train_args(["--config", str(config)])
    assert cfg.operating_point == ["youden", "sensitivity=0.9"] and cfg.calibrate == "temperature"
    assert "operating_point" in given
    cfg, _ = parse_train_args(["--config", str(config), "--operating-point", "specificity=0.8"])
    assert cfg.operating_point == ["specificity=0.8"]  # the command line replaces the file's list


def test_train_refuses_a_subgroup_column_the_sheet_lacks_before_anything_is_written(data_dir, tmp_path, capsys):
    root, label = data_dir
    out = tmp_path / "out"
    argv = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), "--folds", "2"]
    assert train_in_process(*argv, "--subgroup-column", "device") == 2
    assert "'device' not found" in capsys.readouterr().err and not list(out.glob("*_*"))
    assert train_in_process(*argv, "--subgroup-column", "device", "--subgroup-column", "device") == 2
    assert "repeats a column" in capsys.readouterr().err
