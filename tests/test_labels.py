"""Reading label.xlsx: header recognition (English and Chinese), ID normalisation, blanks, duplicates."""

from __future__ import annotations

import pytest

from carotid.core.errors import UserError
from carotid.data.sheet.labels import normalize_id, read_labels
from tests.conftest import write_xlsx


def test_chinese_headers_text_labels_and_sorted_classes(tmp_path):
    path = write_xlsx(
        tmp_path / "label.xlsx", [["序号", "患者编号", "诊断"], [1, 1005, "斑块"], [2, 1006, "正常"], [3, 1007, "斑块"]]
    )
    table = read_labels(path)
    assert table.labels == {"1005": "斑块", "1006": "正常", "1007": "斑块"}
    assert table.class_names == sorted(["斑块", "正常"])
    assert (table.id_column, table.label_column) == ("患者编号", "诊断")
    assert table.choices["id_column"] == table.choices["label_column"] == "recognised header"
    assert table.positive_class == "斑块" and "recognised pair" in table.choices["positive_class"]


@pytest.mark.parametrize(
    "id_header,label_header", [("Patient_ID", "Label"), ("person id", "DIAGNOSIS"), ("编号", "类别")]
)
def test_common_headers_are_recognised_case_insensitively(tmp_path, id_header, label_header):
    path = write_xlsx(tmp_path / "l.xlsx", [["age", label_header, id_header], [60, "a", "p1"], [70, "b", "p2"]])
    table = read_labels(path)
    assert table.labels == {"p1": "a", "p2": "b"}


def test_unknown_headers_on_a_two_column_sheet_are_id_then_label_and_say_so(tmp_path):
    # Only a two-column sheet is read without recognised headers (more columns: tests/test_sheets.py).
    path = write_xlsx(tmp_path / "l.xlsx", [["who", "what"], ["p1", 0], ["p2", 1]])
    table = read_labels(path)
    assert table.labels == {"p1": "0", "p2": "1"}
    assert "two columns" in table.choices["id_column"] and "two columns" in table.choices["label_column"]


def test_explicit_columns_and_sheet(tmp_path):
    path = write_xlsx(
        tmp_path / "l.xlsx",
        [["x"]],
        extra_sheets={"labels": [["mrn", "grade", "outcome"], ["a1", 1, "n"], ["a2", 2, "p"]]},
    )
    table = read_labels(path, sheet="labels", id_column="MRN", label_column="outcome")
    assert table.labels == {"a1": "n", "a2": "p"}
    assert table.sheet == "labels"


def test_ids_are_normalised_ints_floats_and_padded_text(tmp_path):
    rows = [["id", "label"], [1005, 0], [1006.0, 1], ["  1007 ", 0], ["P 08", 1], [" p9\u3000", 1.0]]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.labels == {"1005": "0", "1006": "1", "1007": "0", "P 08": "1", "p9": "1"}
    assert table.class_names == ["0", "1"]
    assert normalize_id(12.5) == "12.5" and normalize_id(None) is None and normalize_id("  ") is None


def test_numeric_class_names_sort_numerically(tmp_path):
    rows = [["id", "label"]] + [[f"p{i}", c] for i, c in enumerate([2, 10, 1, 2, 10, 1])]
    assert read_labels(write_xlsx(tmp_path / "l.xlsx", rows)).class_names == ["1", "2", "10"]


def test_blank_rows_and_cells_are_skipped_with_notes(tmp_path):
    rows = [["id", "label"], ["p1", "a"], [None, None], ["p2", None], [None, "b"], ["p3", "b"], []]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.labels == {"p1": "a", "p3": "b"}
    assert any("no label" in n for n in table.notes) and any("no ID" in n for n in table.notes)


def test_duplicate_ids_same_label_are_merged(tmp_path):
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", [["id", "label"], [1, "a"], [1.0, "a"], [2, "b"]]))
    assert table.labels == {"1": "a", "2": "b"}
    assert any("merged" in n for n in table.notes)


def test_duplicate_ids_with_conflicting_labels_are_an_error(tmp_path):
    path = write_xlsx(tmp_path / "l.xlsx", [["id", "label"], [1005, "a"], [1006, "b"], ["1005", "b"]])
    with pytest.raises(UserError, match=r"'1005' is 'a' in row 2 and 'b' in row 4"):
        read_labels(path)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"id_column": "nope"}, r"--id-column 'nope' is not a column header; the headers are 'id', 'label'"),
        ({"label_column": "grade"}, r"--label-column 'grade' is not a column header"),
        ({"sheet": "Sheet9"}, r"sheet 'Sheet9' not found .* its sheets are 'Sheet1'"),
    ],
)
def test_wrong_column_or_sheet_names_the_choices(tmp_path, kwargs, message):
    path = write_xlsx(tmp_path / "l.xlsx", [["id", "label"], [1, "a"], [2, "b"]])
    with pytest.raises(UserError, match=message):
        read_labels(path, **kwargs)


def test_one_class_only_is_an_error(tmp_path):
    with pytest.raises(UserError, match="only 'a'.*at least two classes"):
        read_labels(write_xlsx(tmp_path / "l.xlsx", [["id", "label"], [1, "a"], [2, "a"]]))


def test_missing_non_xlsx_and_corrupt_files(tmp_path):
    with pytest.raises(UserError, match="label file not found"):
        read_labels(tmp_path / "missing.xlsx")
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("id,label\n1,a\n")
    with pytest.raises(UserError, match="is not an .xlsx file"):
        read_labels(csv_file)
    corrupt = tmp_path / "corrupt.xlsx"
    corrupt.write_bytes(b"PK\x03\x04 this is not really a zip archive")
    with pytest.raises(UserError, match="cannot be read as .xlsx"):
        read_labels(corrupt)
    encrypted = tmp_path / "protected.xlsx"
    encrypted.write_bytes(bytes.fromhex("d0cf11e0a1b11ae1") + b"\0" * 512)
    with pytest.raises(UserError, match="password-protected"):
        read_labels(encrypted)


@pytest.mark.parametrize(
    "negated,named",
    [
        ("非心脏", "心脏"),
        ("无钙化", "钙化"),
        ("不狭窄", "狭窄"),
        ("non-plaque", "plaque"),
        ("Non Stenosis", "stenosis"),
        ("no calcification", "calcification"),
        ("not occluded", "occluded"),
        ("plaque-negative", "plaque"),
        ("Stenosis negative", "Stenosis"),
        ("斑块阴性", "斑块"),
    ],
)
def test_a_label_that_negates_the_other_is_the_negative_class(tmp_path, negated, named):
    """Sorted order would make the negated label (e.g. 非心脏 after 心脏) positive; its meaning decides instead."""
    rows = [["ID", "label"]] + [[i, (negated, named)[i % 2]] for i in range(6)]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.positive_class == named, table.choices
    assert f"'{negated}' is the negation of '{named}'" in table.choices["positive_class"] and not table.warnings


def test_a_label_that_only_starts_like_a_negation_is_not_one(tmp_path):
    rows = [["ID", "label"]] + [[i, ("nodule", "cyst")[i % 2]] for i in range(6)]  # 'no'+'dule' is not 'no X'
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.positive_class == "nodule" and "negation" not in table.choices["positive_class"]
