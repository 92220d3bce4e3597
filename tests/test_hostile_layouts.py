"""Hostile but realistic exports, round 4 (issue 32), cases 16 and 17: person folders one level down (a PACS
export by date, folders sorted by class) and label columns that are not classes (a measurement, a totals row,
'+'/'-'). Each test builds the real folders and workbook in tmp_path and checks what a user would see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carotid.core.errors import UserError
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from tests.conftest import train_in_process, write_xlsx


def frame(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (20, 24), dtype=np.uint8)).save(path)


def sheet(tmp_path: Path, persons: dict[str, str]) -> Path:
    return write_xlsx(tmp_path / "label.xlsx", [["patient_id", "label"]] + [[p, lab] for p, lab in persons.items()])


PERSONS = {str(1001 + k): ("plaque", "normal")[k % 2] for k in range(8)}


# ---------------------------------------------------------------------------------------------
# 16. Person folders one level down
# ---------------------------------------------------------------------------------------------


def test_folders_sorted_by_class_say_where_the_persons_are_and_how_to_point_at_them(tmp_path, capsys):
    root = tmp_path / "DATA"
    for k, (person, label) in enumerate(PERSONS.items()):
        frame(root / label / person / "f0.png", seed=k)
    label = sheet(tmp_path, PERSONS)
    status = train_in_process("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "o"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and "Traceback" not in "\n".join(err)
    assert err[-1] == (
        f"error: no folder in {root} is named like a sheet ID, but 8 sheet ID(s) are folders one level down in "
        f"{root} (e.g. normal/1002), inside folders named like the sheet's classes ('normal', 'plaque'); the labels "
        "come from the sheet, not from folders — put every person's folder directly in one folder (merging the "
        "folders of a person found in several) and pass that folder as --root-dir"
    )
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_a_pacs_export_by_date_names_the_date_folder_to_pass(tmp_path):
    root = tmp_path / "DATA"
    for k, person in enumerate(PERSONS):
        frame(root / "20240105" / person / "series1" / "f0.png", seed=k)
    with pytest.raises(UserError) as raised:
        collect_persons(str(root), read_labels(sheet(tmp_path, PERSONS)), None)
    assert str(raised.value) == (
        f"no folder in {root} is named like a sheet ID, but 8 sheet ID(s) are folders one level down in {root} "
        "(e.g. 20240105/1001), inside 1 folder(s) such as '20240105', as a PACS export by date or study makes — "
        f"pass --root-dir {root}/20240105"
    )


def test_persons_one_level_down_beside_persons_in_the_root_are_named_in_a_warning(tmp_path):
    root = tmp_path / "DATA"
    persons = list(PERSONS)
    for k, person in enumerate(persons[:6]):
        frame(root / person / "f0.png", seed=k)
    for k, person in enumerate(persons[6:]):
        frame(root / "20240107" / person / "f0.png", seed=10 + k)
    manifest = collect_persons(str(root), read_labels(sheet(tmp_path, PERSONS)), None)
    assert sorted(manifest.frames) == persons[:6]
    (warning,) = [w for w in manifest.report["warnings"] if "one level down" in w]
    assert warning == (
        f"2 sheet ID(s) are folders one level down in {root} (e.g. 20240107/1007), inside 1 folder(s) such as "
        f"'20240107', as a PACS export by date or study makes: left out; move their folders up into {root}"
    )


# ---------------------------------------------------------------------------------------------
# 17. Label columns that are not classes
# ---------------------------------------------------------------------------------------------


def test_a_measurement_taken_as_the_label_is_refused_naming_the_column(tmp_path):
    rows = [["ID", "IMT"]] + [[str(1000 + i), round(0.5 + 0.07 * i, 2)] for i in range(16)]
    path = write_xlsx(tmp_path / "imt.xlsx", rows)
    with pytest.raises(UserError) as raised:
        read_labels(path)
    assert str(raised.value) == (
        f"column 'IMT' of {path} has 16 distinct numbers for 16 persons (0.5 to 1.55): a measurement, not a class "
        "— choose the label column with --label-column (or add a column of classes, e.g. plaque yes/no, to the sheet)"
    )
    grades = [["ID", "grade"]] + [[str(1000 + i), i % 5] for i in range(16)]  # 0-4 grades stay classes
    assert read_labels(write_xlsx(tmp_path / "grades.xlsx", grades)).class_names == ["0", "1", "2", "3", "4"]


def test_a_totals_row_is_left_out_and_named_by_its_row_number(tmp_path):
    rows = [["ID", "label"]] + [[str(1000 + i), "ab"[i % 2]] for i in range(6)] + [["合计", 6], ["Total:", 6]]
    table = read_labels(write_xlsx(tmp_path / "totals.xlsx", rows))
    assert table.class_names == ["a", "b"] and sorted(table.labels) == [str(1000 + i) for i in range(6)]
    assert "row 8 ('合计'), row 9 ('Total:'): a totals row, not a person: left out" in table.notes


def test_plus_and_minus_are_two_classes_with_plus_positive(tmp_path):
    rows = [["ID", "label"]] + [[str(1000 + i), "+-"[i % 2]] for i in range(6)] + [["1006", "n/a"]]
    table = read_labels(write_xlsx(tmp_path / "pm.xlsx", rows))
    assert table.class_names == ["+", "-"] and table.positive_class == "+"
    assert table.labels["1001"] == "-" and "1006" not in table.labels
    # Beside other classes '-' stays what it was: a missing mark.
    rows = [["ID", "label"]] + [[str(1000 + i), ("plaque", "normal", "-")[i % 3]] for i in range(6)]
    table = read_labels(write_xlsx(tmp_path / "dash.xlsx", rows))
    assert table.class_names == ["normal", "plaque"] and len(table.labels) == 4
