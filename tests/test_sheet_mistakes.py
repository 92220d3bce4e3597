"""Label sheets as a new round of hospital data gets them wrong (issue 25): each case a real .xlsx written with
openpyxl, read by the real reader or the real train CLI, ending in the message that names the fix.

Two label columns (one per side), merged label cells, hidden rows, an empty active sheet, a blank ID column,
Excel's lock file, IDs Excel or a script changed (dates, '.0', apostrophes, path separators), and a resumed
run whose label file changed.
"""

from __future__ import annotations

import datetime
import functools
import io
import json
import time
import zipfile
from pathlib import Path

import openpyxl
import pytest
import yaml
from PIL import Image

from carotid.core.errors import UserError
from carotid.data.manifest import collect_persons, data_block
from carotid.data.sheet import raw_xml
from carotid.data.sheet.labels import read_labels
from tests.conftest import FAST, make_data, only_run_dir, train_in_process, write_xlsx


def workbook(path: Path, rows: list[list], merged=(), hidden_rows=()) -> Path:
    book = openpyxl.Workbook()
    for row in rows:
        book.active.append(row)
    for ref in merged:
        book.active.merge_cells(ref)
    for number in hidden_rows:
        book.active.row_dimensions[number].hidden = True
    book.save(path)
    return path


def person_folders(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        Image.new("L", (16, 16), 100).save(root / name / "frame.png")
    return root


# ---------------------------------------------------------------------------------------------
# Columns: several recognised label (or ID) columns
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [["Patient ID", "Plaque (left)", "Plaque (right)"], ["患者编号", "斑块（左）", "斑块（右）"]],
)
def test_a_label_column_per_side_is_an_error_naming_both_and_label_column_picks_one(tmp_path, headers):
    rows = [headers, [1, "yes", "no"], [2, "no", "no"], [3, "yes", "yes"]]
    path = write_xlsx(tmp_path / "sides.xlsx", rows)
    with pytest.raises(UserError) as err:
        read_labels(path)
    message = str(err.value)
    assert f"2 columns are recognised as the label column: '{headers[1]}', '{headers[2]}'" in message
    assert f"--label-column '{headers[1]}'" in message and "one run per column" in message
    right = read_labels(path, label_column=headers[2])
    assert right.label_column == headers[2] and right.labels == {"1": "no", "2": "no", "3": "yes"}


def test_two_id_columns_are_an_error_but_a_name_beside_an_id_is_not_the_id(tmp_path):
    two_ids = write_xlsx(tmp_path / "ids.xlsx", [["ID", "MRN", "label"], [1, "m1", "a"], [2, "m2", "b"]])
    with pytest.raises(UserError, match=r"2 columns are recognised as the ID column: 'ID', 'MRN'.*--id-column"):
        read_labels(two_ids)
    assert read_labels(two_ids, id_column="MRN").labels == {"m1": "a", "m2": "b"}
    named = write_xlsx(tmp_path / "named.xlsx", [["编号", "姓名", "诊断"], [1, "张三", "有"], [2, "李四", "无"]])
    assert read_labels(named).id_column == "编号"


# ---------------------------------------------------------------------------------------------
# Cells: merged down, hidden rows, a blank ID column
# ---------------------------------------------------------------------------------------------


def test_a_label_merged_down_over_rows_is_an_error_naming_the_ranges(tmp_path):
    rows = [["ID", "label"], [1, "plaque"], [2, None], [3, None], [4, "normal"], [5, None], [6, "normal"]]
    path = workbook(tmp_path / "merged.xlsx", rows, merged=["B2:B4", "B5:B6"])
    with pytest.raises(UserError) as err:
        read_labels(path)
    message = str(err.value)
    assert "2 merged cell range(s) of column 'label'" in message and "B2:B4, B5:B6" in message
    assert "unmerge" in message and "no label" not in message


def test_a_merged_title_above_the_header_is_not_a_merged_label(tmp_path):
    rows = [["Carotid study 2024"], ["ID", "label"], [1, "plaque"], [2, "normal"]]
    path = workbook(tmp_path / "title.xlsx", rows, merged=["A1:B1"])
    assert read_labels(path).labels == {"1": "plaque", "2": "normal"}


def test_rows_hidden_in_excel_are_used_and_said_to_be(tmp_path):
    rows = [["ID", "label"], [1, "plaque"], [2, "normal"], [3, "plaque"], [4, "normal"]]
    table = read_labels(workbook(tmp_path / "hidden.xlsx", rows, hidden_rows=[3, 5]))
    assert table.labels == {"1": "plaque", "2": "normal", "3": "plaque", "4": "normal"}
    (warning,) = [w for w in table.warnings if "hidden" in w]
    assert "2 person(s) are in rows hidden in Excel" in warning and "'2' (row 3), '4' (row 5)" in warning
    assert "used" in warning
    visible = read_labels(workbook(tmp_path / "visible.xlsx", rows))
    assert not [w for w in visible.warnings if "hidden" in w]


def test_a_blank_id_column_names_the_id_and_label_columns(tmp_path):
    path = write_xlsx(tmp_path / "blank.xlsx", [["ID", "age", "label"], [None, 60, "a"], [None, 70, "b"]])
    with pytest.raises(UserError) as err:
        read_labels(path)
    message = str(err.value)
    assert "the ID column 'ID'" in message and "blank in every row" in message
    assert "label column 'label' holds 2 value(s)" in message and "--id-column" in message


# ---------------------------------------------------------------------------------------------
# The file: an empty active sheet, Excel's lock file
# ---------------------------------------------------------------------------------------------


def test_an_empty_active_sheet_beside_a_filled_one_names_it_and_sheet(tmp_path):
    book = openpyxl.Workbook()
    book.active.title = "Sheet1"
    filled = book.create_sheet("Labels")
    for row in [["ID", "label"], [1, "a"], [2, "b"]]:
        filled.append(row)
    book.create_sheet("Notes")
    book.active = 0
    book.save(tmp_path / "tabs.xlsx")
    with pytest.raises(UserError) as err:
        read_labels(tmp_path / "tabs.xlsx")
    message = str(err.value)
    assert "sheet 'Sheet1'" in message and "is empty" in message and "sheet(s) 'Labels' hold data" in message
    assert "--sheet 'Labels'" in message and "Notes" not in message


def test_excels_lock_file_is_named_as_such_with_the_workbook_beside_it(tmp_path, capsys):
    label = write_xlsx(tmp_path / "label.xlsx", [["ID", "label"], [1, "a"], [2, "b"]])
    lock = tmp_path / "~$label.xlsx"
    lock.write_bytes(b"\x07Dr. Wang" + b"\x20" * 100 + b"\x00" * 57)  # 165 bytes: owner name, padding
    code = train_in_process("--root-dir", str(tmp_path), "--label-excel", str(lock), "--output-dir", str(tmp_path))
    err = capsys.readouterr().err
    assert code == 2 and "Excel's lock file" in err and f"pass the workbook itself, {label}" in err
    assert "corrupt" not in err


# ---------------------------------------------------------------------------------------------
# IDs that Excel or a script changed
# ---------------------------------------------------------------------------------------------


def test_ids_changed_by_excel_or_a_script_are_explained_with_the_fix(tmp_path):
    root = person_folders(tmp_path / "root", ["1-5", "1-6", "1011", "1012", "2001", "3001", "a", "b"])
    rows = [
        ["ID", "label"],
        [datetime.datetime(2026, 1, 5), "plaque"],  # typed 1-5, stored by Excel as 5 January
        [datetime.datetime(2026, 1, 6), "normal"],
        ["1011.0", "plaque"],
        ["1012.0", "normal"],
        ["'2001", "plaque"],
        ["3001/1", "normal"],
        ["a", "plaque"],
        ["b", "normal"],
    ]
    table = read_labels(write_xlsx(tmp_path / "ids.xlsx", rows))
    manifest = collect_persons(str(root), table, None, sample=0)
    warnings = manifest.report["warnings"]
    by_kind = {kind: [w for w in warnings if kind in w] for kind in ("dates", "'.0'", "apostrophe", "separator")}
    assert all(len(found) == 1 for found in by_kind.values()), warnings
    assert "2 sheet ID(s) are dates" in by_kind["dates"][0] and "2026-01-05 beside folder '1-5'" in by_kind["dates"][0]
    assert "format the ID column as Text" in by_kind["dates"][0]
    assert "'1011.0', '1012.0'" in by_kind["'.0'"][0] and "without '.0'" in by_kind["'.0'"][0]
    assert '"\'2001"' in by_kind["apostrophe"][0] and "delete it" in by_kind["apostrophe"][0]
    assert "'3001/1'" in by_kind["separator"][0]
    printed = data_block(manifest.report, "ids.xlsx")
    assert all(f"warning: {w}" in printed for w in warnings)
    assert sorted(manifest.person_labels) == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Resume with a label file that changed
# ---------------------------------------------------------------------------------------------


def test_resume_refuses_changed_labels_and_records_a_new_file_with_the_same_ones(tmp_path, capsys):
    root, label = make_data(tmp_path / "frames", persons=8, frames=2, size=32)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    assert train_in_process(*args, *FAST, "--epochs", "1", "--no-test") == 0
    run_dir = only_run_dir(tmp_path / "out")
    started = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    labels = json.loads((run_dir / "data_report.json").read_text(encoding="utf-8"))["person_labels"]
    assert len(labels) == 8
    flipped = {p: ("normal" if c == "plaque" else "plaque") if i < 2 else c for i, (p, c) in enumerate(labels.items())}
    changed = write_xlsx(tmp_path / "changed.xlsx", [["患者编号", "诊断"], *map(list, flipped.items())])
    resume = ["--resume", str(run_dir), "--epochs", "2", "--label-excel"]
    capsys.readouterr()
    assert train_in_process(*resume, str(changed)) == 2
    err = capsys.readouterr().err
    first = sorted(labels)[0]
    assert "changed since the run started: 2 of its 8 persons have another label" in err and f"'{first}'" in err
    assert yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) == started  # nothing written
    # The same labels with a new person's row: the run goes on and config.yaml names the new file.
    same = write_xlsx(tmp_path / "more.xlsx", [["患者编号", "诊断"], *map(list, labels.items()), ["new", "plaque"]])
    assert train_in_process(*resume, str(same)) == 0
    assert "have the same labels in both: the run goes on" in capsys.readouterr().out
    now = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (
        now["options"]["label_excel"] == str(same.resolve())
        and now["label_file_sha256"] != started["label_file_sha256"]
    )
    assert now["label_file_history"] == [
        {"label_excel": started["options"]["label_excel"], "label_file_sha256": started["label_file_sha256"]}
    ]


# ---------------------------------------------------------------------------------------------
# data_report.json holds every start-up warning
# ---------------------------------------------------------------------------------------------


def test_every_start_up_warning_is_in_data_report_json(tmp_path, capsys):
    root, label = make_data(tmp_path / "frames", persons=8, frames=2, size=32)
    demo = read_labels(label).labels
    rows = [["患者编号", "诊断"], *([p, "AB"[c == "plaque"]] for p, c in sorted(demo.items()))]  # no known positive
    hidden = workbook(tmp_path / "hidden.xlsx", rows, hidden_rows=[2])
    args = ["--root-dir", str(root), "--label-excel", str(hidden), "--output-dir", str(tmp_path / "out"), *FAST]
    ratios = ["--train-ratio", "0.75", "--val-ratio", "0", "--test-ratio", "0.25", "--monitor", "val_auc"]
    assert train_in_process(*args, *ratios, "--epochs", "1", "--no-test") == 0
    startup = capsys.readouterr().out.split("epoch 1 |")[0]  # the data's warnings; the run's own come later
    printed = [line.removeprefix("warning: ") for line in startup.splitlines() if line.startswith("warning: ")]
    report = json.loads((only_run_dir(tmp_path / "out") / "data_report.json").read_text(encoding="utf-8"))
    assert any("rows hidden in Excel" in w for w in report["warnings"])
    assert any("positive class 'B'" in w for w in report["warnings"])
    assert "no validation split; --monitor val_auc replaced by train_loss" in report["warnings"]
    assert sorted(printed) == sorted(report["warnings"])


# ---------------------------------------------------------------------------------------------
# Merged ranges read in bytes: exact across block edges, and fast on a hostile sheet
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 64, 2**20])
def test_merged_ranges_are_cut_out_and_collected_whatever_the_block_size(monkeypatch, block):
    monkeypatch.setattr(raw_xml, "BLOCK", block)
    refs = [f"B{2 * i + 2}:B{2 * i + 3}" for i in range(40)]
    merges = "".join(f'<mergeCell ref="{r}"/>' for r in refs)
    head, tail = (
        '<worksheet><sheetData><row r="1"><c r="A1"><v>1</v></c></row></sheetData>',
        "<pageMargins/></worksheet>",
    )
    for xml, wanted in (
        (f'{head}<mergeCells count="40">{merges}</mergeCells>{tail}', refs),
        (f'{head}<x:mergeCells count="1"><x:mergeCell ref="A2:A9"/></x:mergeCells>{tail}', ["A2:A9"]),
        (f'{head}<mergeCells count="0"/>{tail}', []),
        (head + tail, []),
    ):
        stream = raw_xml.WithoutMergeCells(io.BytesIO(xml.encode()))
        read = b"".join(iter(functools.partial(stream.read, 5), b""))
        assert read.decode() == head + tail and stream.refs == wanted


def test_a_sheet_of_a_hundred_thousand_merged_ranges_is_read_in_seconds(tmp_path):
    """openpyxl builds an object per merged range: minutes for such a sheet before the ranges were cut out."""
    path = workbook(tmp_path / "many.xlsx", [["ID", "label"], [1, "a"], [2, "b"]])
    with zipfile.ZipFile(path) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    merges = "".join(f'<mergeCell ref="D{2 * i + 5}:D{2 * i + 6}"/>' for i in range(100_000))
    part = "xl/worksheets/sheet1.xml"
    parts[part] = parts[part].replace(b"</sheetData>", f"</sheetData><mergeCells>{merges}</mergeCells>".encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    started = time.perf_counter()
    assert read_labels(path).labels == {"1": "a", "2": "b"}  # merged cells beside the table are no concern
    assert time.perf_counter() - started < 10
