"""The label sheet read as the user meant (issue 10): columns, sheets, header rows, positive class, label
spellings, formulas without results, and bounded reading of hostile files.

Every case is a real .xlsx written with openpyxl; each ends in the right table (and the reason it reports)
or in a UserError that names the candidates and the flag that chooses.
"""

from __future__ import annotations

import time
import tracemalloc
import zipfile
from pathlib import Path

import openpyxl
import pytest
from openpyxl.styles import Font

from carotid.core.errors import UserError
from carotid.data.sheet import workbook as sheet_module
from carotid.data.sheet.labels import read_labels
from tests.conftest import write_xlsx


def book(path: Path, sheets: dict[str, list[list]], hidden=(), active: str | None = None) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        ws = workbook.create_sheet(name)
        for row in rows:
            ws.append(row)
        if name in hidden:
            ws.sheet_state = "hidden"
    if active is not None:
        workbook.active = list(sheets).index(active)
    workbook.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# Columns: no fallback to "the next column"
# ---------------------------------------------------------------------------------------------


def test_unknown_label_header_among_more_than_two_columns_is_an_error_listing_them(tmp_path):
    rows = [["编号", "性别", "年龄", "颈动脉"], [1, "男", 60, "甲"], [2, "女", 70, "乙"]]
    path = write_xlsx(tmp_path / "l.xlsx", rows)
    with pytest.raises(UserError) as err:
        read_labels(path)
    message = str(err.value)
    assert "no label column recognised among 4 columns" in message
    assert "'编号', '性别', '年龄', '颈动脉'" in message and "--label-column '颈动脉'" in message


def test_a_plaque_header_is_the_label_not_the_sex_column(tmp_path):
    rows = [["编号", "性别", "年龄", "斑块"], [1, "男", 60, "有"], [2, "女", 70, "无"], [3, "男", 65, "有"]]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.label_column == "斑块" and table.labels == {"1": "有", "2": "无", "3": "有"}
    assert table.positive_class == "有" and "recognised pair" in table.choices["positive_class"]


def test_plaque_y_n_header_is_recognised_not_the_age_column(tmp_path):
    rows = [["Patient No.", "Age", "Plaque (Y/N)"]] + [[i, 50 + i, "YN"[i % 2]] for i in range(10)]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert (table.id_column, table.label_column) == ("Patient No.", "Plaque (Y/N)")
    assert table.class_names == ["N", "Y"] and table.positive_class == "Y"


def test_label_column_flag_chooses_among_unknown_headers(tmp_path):
    path = write_xlsx(tmp_path / "l.xlsx", [["编号", "性别", "颈动脉"], [1, "男", "甲"], [2, "女", "乙"]])
    table = read_labels(path, label_column="颈动脉")
    assert table.labels == {"1": "甲", "2": "乙"} and table.choices["label_column"] == "from --label-column"


# ---------------------------------------------------------------------------------------------
# Sheets: the active visible one; hidden ones only by name
# ---------------------------------------------------------------------------------------------


def test_hidden_first_sheet_with_stale_labels_is_not_read(tmp_path):
    stale = [["ID", "label"], [1, "normal"], [2, "normal"], [3, "plaque"]]
    current = [["ID", "label"], [1, "plaque"], [2, "normal"], [3, "normal"]]
    path = book(tmp_path / "l.xlsx", {"old": stale, "current": current}, hidden={"old"}, active="current")
    table = read_labels(path)
    assert table.sheet == "current" and table.labels["1"] == "plaque"
    assert "the active sheet" in table.choices["sheet"] and "hidden sheet(s) 'old' not read" in table.choices["sheet"]
    named = read_labels(path, sheet="old")
    assert named.labels["1"] == "normal" and named.choices["sheet"] == "from --sheet (a hidden sheet)"


def test_active_sheet_is_used_over_the_first_one(tmp_path):
    path = book(
        tmp_path / "l.xlsx",
        {"notes": [["ID", "label"], [9, "x"], [8, "y"]], "labels": [["ID", "label"], [1, "a"], [2, "b"]]},
        active="labels",
    )
    table = read_labels(path)
    assert table.sheet == "labels" and "other sheet(s) 'notes' not read" in table.choices["sheet"]


# ---------------------------------------------------------------------------------------------
# The header row
# ---------------------------------------------------------------------------------------------


def test_merged_title_row_and_blank_row_above_the_header_are_skipped(tmp_path):
    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.append(["Carotid study 2023 labels"])
    ws.merge_cells("A1:C1")
    ws.append([])
    ws.append(["ID", "age", "label"])
    for i in range(6):
        ws.append([1000 + i, 60, ("normal", "plaque")[i % 2]])
    path = tmp_path / "l.xlsx"
    workbook.save(path)
    table = read_labels(path)
    assert table.header_row == 3 and table.class_names == ["normal", "plaque"]
    assert len(table.labels) == 6 and "id" not in table.labels
    assert "Carotid study 2023 labels" in table.choices["header_row"]


def test_header_row_flag_picks_the_row_and_a_blank_row_is_an_error(tmp_path):
    rows = [["Report", "exported 2023"], ["ID", "label"], [1, "a"], [2, "b"]]
    path = write_xlsx(tmp_path / "l.xlsx", rows)
    assert read_labels(path).header_row == 2  # the row holding recognised headers
    table = read_labels(path, header_row=2)
    assert table.labels == {"1": "a", "2": "b"} and table.choices["header_row"] == "from --header-row"
    with pytest.raises(UserError, match="--header-row 9 .* is past the last row"):
        read_labels(path, header_row=9)


def test_no_header_row_is_an_error_naming_header_row(tmp_path):
    with pytest.raises(UserError, match="no header row found.*--header-row N"):
        read_labels(write_xlsx(tmp_path / "l.xlsx", [[1, "a"], [2, "b"]]))


# ---------------------------------------------------------------------------------------------
# The positive class
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values,positive",
    [
        (("阴性", "阳性"), "阳性"),
        (("normal", "abnormal"), "abnormal"),
        (("negative", "positive"), "positive"),
        (("no", "yes"), "yes"),
        ((0, 1), "1"),
        ((False, True), "True"),
        (("正常", "斑块"), "斑块"),
        (("normal", "stenosis"), "stenosis"),
    ],
)
def test_recognised_pairs_choose_the_clinically_positive_class(tmp_path, values, positive):
    rows = [["ID", "label"]] + [[i, values[i % 2]] for i in range(6)]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.positive_class == positive and not table.warnings, table.choices


def test_unrecognised_pair_is_the_last_class_with_a_warning_and_the_flag_wins(tmp_path):
    path = write_xlsx(tmp_path / "l.xlsx", [["ID", "label"]] + [[i, "AB"[i % 2]] for i in range(6)])
    table = read_labels(path)
    assert table.positive_class == "B"
    assert table.warnings == [
        "positive class 'B' is the last class in sorted order: neither 'A' nor 'B' is a recognised positive or "
        "negative label (pass --positive-class to choose)"
    ]
    chosen = read_labels(path, positive_class="A")
    assert chosen.positive_class == "A" and chosen.choices["positive_class"] == "from --positive-class"
    other = write_xlsx(tmp_path / "m.xlsx", [["ID", "label"], [1, "阴性"], [2, "阳性"]])
    flipped = read_labels(other, positive_class="阴性")
    assert flipped.positive_class == "阴性"
    with pytest.raises(UserError, match="--positive-class 'C' is not a class"):
        read_labels(path, positive_class="C")


# ---------------------------------------------------------------------------------------------
# Label spellings, blanks, booleans, formulas
# ---------------------------------------------------------------------------------------------


def test_case_variants_and_zero_width_space_are_one_class_named_by_the_most_frequent(tmp_path):
    spellings = ["plaque", "plaque", "Plaque", "PLAQUE", "plaque\u200b", "normal", "normal ", "Normal"]
    path = write_xlsx(tmp_path / "l.xlsx", [["ID", "label"]] + [[i, s] for i, s in enumerate(spellings)])
    table = read_labels(path)
    assert table.class_names == ["normal", "plaque"]
    assert set(table.labels.values()) == {"normal", "plaque"} and len(table.labels) == 8
    assert any("'plaque' (3), 'PLAQUE' (1), 'Plaque' (1) are one class 'plaque'" in w for w in table.warnings)


def test_missing_value_marks_are_blank_and_counted(tmp_path):
    marks = ["NA", "N/A", "nan", "null", "-", "无", "空", "未知"]
    rows = [["ID", "label"], [100, "normal"], [101, "plaque"]] + [[i, m] for i, m in enumerate(marks)]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.class_names == ["normal", "plaque"] and len(table.labels) == 2
    assert any(n.startswith("8 label cell(s) hold a missing-value mark") for n in table.notes), table.notes


def test_booleans_and_zero_one_are_one_pair(tmp_path):
    rows = [["ID", "label"], [1, True], [2, False], [3, 1], [4, 0], [5, 1], [6, "TRUE"], [7, 0]]
    table = read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert table.class_names == ["0", "1"] and table.positive_class == "1"
    assert table.labels == {"1": "1", "2": "0", "3": "1", "4": "0", "5": "1", "6": "1", "7": "0"}


def test_formula_without_a_cached_value_is_reported_as_such(tmp_path):
    rows = [["ID", "label"], [1, "normal"], [2, "plaque"], [3, "=A1+1"]]
    with pytest.raises(UserError) as err:
        read_labels(write_xlsx(tmp_path / "l.xlsx", rows))
    assert "1 cell(s) of the ID and label columns" in str(err.value) and "B4: =A1+1" in str(err.value)
    assert "never saved by Excel" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Bounded reading: hostile files end in an error within seconds, without a memory blow-up
# ---------------------------------------------------------------------------------------------


def test_rows_styled_out_to_column_xfd_are_read_without_memory_blow_up(tmp_path):
    workbook = openpyxl.Workbook()
    ws = workbook.active
    ws.append(["ID", "label"])
    bold = Font(bold=True)
    for i in range(3000):
        ws.append([i, ("normal", "plaque")[i % 2]])
        ws.cell(row=i + 2, column=16384).font = bold  # an empty, formatted cell in XFD: the row "reaches" it
    path = tmp_path / "xfd.xlsx"
    workbook.save(path)
    assert openpyxl.load_workbook(path, read_only=True).active.max_column == 16384
    tracemalloc.start()
    started = time.perf_counter()
    table = read_labels(path)
    seconds, peak = time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(table.labels) == 3000 and seconds < 20 and peak < 200 * 2**20, (seconds, peak)


def test_a_value_beyond_the_column_limit_is_an_error(tmp_path):
    workbook = openpyxl.Workbook()
    workbook.active.append(["ID", "label"])
    workbook.active.append([1, "a"])
    workbook.active.cell(row=2, column=16384, value="stray")
    workbook.save(tmp_path / "l.xlsx")
    with pytest.raises(UserError, match="value in XFD2, beyond the 500 columns"):
        read_labels(tmp_path / "l.xlsx")


def with_sheet_text(path: Path, target: Path, placeholder: bytes, chunks) -> Path:
    """A copy of an openpyxl-written workbook whose sheet has `placeholder` replaced by the streamed `chunks`:
    openpyxl itself cuts text at Excel's 32,767 characters, other programs do not."""
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename != "xl/worksheets/sheet1.xml":
                out.writestr(info, data)
                continue
            head, tail = data.split(placeholder)
            with out.open(info.filename, "w", force_zip64=True) as part:
                part.write(head)
                for chunk in chunks:
                    part.write(chunk)
                part.write(tail)
    return target


def test_a_huge_cell_is_refused_before_it_is_parsed(tmp_path):
    path = write_xlsx(tmp_path / "l.xlsx", [["ID", "label"], [1, "a"], [2, "=PLACEHOLDER"]])
    huge = with_sheet_text(path, tmp_path / "huge.xlsx", b"PLACEHOLDER", (b"x" * 2**20 for _ in range(80)))
    assert huge.stat().st_size < 2 * 2**20  # 80 MB of one cell in a small file
    started = time.perf_counter()
    with pytest.raises(UserError, match="80 MB of uncompressed xl/worksheets/sheet1.xml"):
        read_labels(huge)
    assert time.perf_counter() - started < 5


def test_a_cell_longer_than_excel_allows_is_an_error_naming_it(tmp_path):
    path = write_xlsx(tmp_path / "l.xlsx", [["ID", "label"], [1, "a"], [2, "PLACEHOLDER"]])
    long = with_sheet_text(path, tmp_path / "long.xlsx", b"PLACEHOLDER", [b"b" * 40_000])
    with pytest.raises(UserError, match=r"cell B3 .* holds 40,000 characters \(Excel allows 32,767\)"):
        read_labels(long)


def test_more_rows_than_the_limit_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sheet_module, "MAX_ROWS", 50)  # the real limit is 100,000: the same code path, faster
    path = write_xlsx(tmp_path / "l.xlsx", [["ID", "label"]] + [[i, "ab"[i % 2]] for i in range(60)])
    with pytest.raises(UserError, match="more than 50 non-empty rows"):
        read_labels(path)
