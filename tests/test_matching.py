"""Sheet IDs ↔ person folders (issue 10): matched as a person would match them, every non-exact match and
every left-out person reported, and two folders for one person refused. Also the folder walk (symlinked
sub-folders, unreadable paths) and the start-up block of a real training run.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from carotid.core.errors import UserError
from carotid.data.folders.discovery import discover_frames
from carotid.data.folders.matching import id_key, match_ids
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from tests.conftest import FAST, only_run_dir, read_json, train_in_process, write_xlsx

QUICK = [*FAST, "--epochs", "1", "--no-test", "--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]


def frames(folder: Path, n: int = 2, value: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((24, 32), value + 40 * k, np.uint8)).save(folder / f"f{k}.png")
    return folder


def tree(base: Path, folders: dict[str, str], rows: list[list]) -> tuple[Path, Path]:
    """Person folders {name: class} under base/root (two frames each) and a label sheet of `rows`."""
    for i, (name, label) in enumerate(folders.items()):
        frames(base / "root" / name, value=(0 if label in ("normal", "0") else 100) + i % 3)
    return base / "root", write_xlsx(base / "label.xlsx", [["ID", "label"], *rows])


# ---------------------------------------------------------------------------------------------
# The matcher
# ---------------------------------------------------------------------------------------------


def test_leading_zeros_case_and_full_width_digits_match_and_are_reported():
    matching = match_ids(["1", "2", "p7", "１０００", "55"], ["001", "002", "P7", "1000", "55", "extra"])
    assert matching.folders == {"1": "001", "2": "002", "p7": "P7", "１０００": "1000", "55": "55"}
    assert matching.non_exact == {
        "leading zeros": [("1", "001"), ("2", "002")],
        "case": [("p7", "P7")],
        "Unicode width or form": [("１０００", "1000")],
    }
    assert matching.folders_without_row == ["extra"] and matching.rows_without_folder == []


def test_leading_zeros_pair_only_when_unique():
    matching = match_ids(["7"], ["07", "007"])
    assert matching.folders == {} and matching.ambiguous == ["7"]


def test_two_folders_that_are_one_person_are_an_error_naming_both():
    with pytest.raises(UserError, match="folders in DATA are the same person .*'3006' and '3006 '"):
        match_ids(["3006"], ["3006", "3006 "], "DATA")


SPELLINGS = st.text(alphabet="0０1１2aAbB ", min_size=1, max_size=4)


@settings(max_examples=300, deadline=None)
@given(sheet=st.lists(SPELLINGS, max_size=12, unique=True), folders=st.lists(SPELLINGS, max_size=12, unique=True))
def test_matching_is_one_to_one(sheet, folders):
    """No two folders map to one person, and no person is matched to two folders; every name is accounted for."""
    try:
        matching = match_ids(sheet, folders)
    except UserError:
        keys = [id_key(n) for n in sheet], [id_key(n) for n in folders]
        assert any(len(set(k)) < len(k) for k in keys), "refused only when two names compare equal"
        return
    pairs = matching.folders
    assert len(set(pairs.values())) == len(pairs), "two persons share a folder"
    assert set(pairs) | set(matching.rows_without_folder) == set(sheet)
    assert not set(pairs) & set(matching.rows_without_folder)
    assert set(pairs.values()) | set(matching.folders_without_row) == set(folders)
    assert not set(pairs.values()) & set(matching.folders_without_row)
    for sheet_id, folder in pairs.items():
        a, b = id_key(sheet_id), id_key(folder)
        assert a == b or (a.isdigit() and b.isdigit() and int(a) == int(b))


# ---------------------------------------------------------------------------------------------
# collect_persons and training
# ---------------------------------------------------------------------------------------------


def test_sheet_numbers_match_zero_padded_folders(tmp_path):
    folders = {f"{i:03d}": ("normal", "plaque")[i % 2] for i in range(1, 9)}
    root, label = tree(tmp_path, folders, [[i, ("normal", "plaque")[i % 2]] for i in range(1, 9)])
    manifest = collect_persons(str(root), read_labels(label), None)
    assert sorted(manifest.frames) == list(folders) and manifest.report["matching"]["matched"] == 8
    assert manifest.report["matching"]["not_spelled_alike"] == {"leading zeros": 8}
    assert manifest.frames_of()[0].path == str(root / "001" / "f0.png")


def test_partial_overlap_warns_and_strict_matching_refuses(tmp_path):
    folders = {str(1000 + i): ("normal", "plaque")[i % 2] for i in range(8)}
    rows = [[1000 + i, ("normal", "plaque")[i % 2]] for i in range(6)] + [[2000, "normal"], [2001, "plaque"]]
    root, label = tree(tmp_path, folders, rows)
    manifest = collect_persons(str(root), read_labels(label), None)
    assert len(manifest.frames) == 6
    assert manifest.report["warnings"] == [
        "2 of 8 sheet rows have no person folder and are left out (e.g. '2000', '2001'); "
        "--strict-matching makes this an error",
        "2 of 8 person folders have no labelled sheet row and are left out (e.g. '1006', '1007'); "
        "--strict-matching makes this an error",
    ]
    assert manifest.left_out_notes() == []  # said once, in the warnings
    with pytest.raises(UserError, match="--strict-matching: 2 sheet row.*2 folder"):
        collect_persons(str(root), read_labels(label), None, strict_matching=True)


def test_folders_3006_and_3006_space_are_refused(tmp_path, capsys):
    root, label = tree(
        tmp_path, {"3006": "normal", "3006 ": "plaque", "3007": "plaque"}, [[3006, "normal"], [3007, "plaque"]]
    )
    status = train_in_process("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "o"))
    err = capsys.readouterr().err
    assert status == 2 and "'3006' and '3006 '" in err and err.startswith("error: ")


def test_a_class_with_no_person_in_the_training_split_is_an_error(tmp_path, capsys):
    folders = {str(1000 + i): "normal" for i in range(8)}
    rows = [[1000 + i, "normal"] for i in range(8)] + [[1100, "plaque"]]  # the only plaque person has no folder
    root, label = tree(tmp_path, folders, rows)
    out = tmp_path / "out"
    status = train_in_process("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), *QUICK)
    err = capsys.readouterr().err
    assert status == 2 and "no person of class 'plaque' (0 person(s) in all) is in the training split" in err
    assert not out.exists() or not list(out.iterdir())


def test_startup_block_and_data_report_say_what_was_read(tmp_path, capsys):
    """The block a user sees first: sheet, header row, columns, classes, positive class and why, matching."""
    folders = {f"{i:03d}": ("normal", "plaque")[i % 2] for i in range(1, 11)} | {"P11": "plaque", "1012": "normal"}
    rows = [[i, ("阴性", "阳性")[i % 2]] for i in range(1, 11)] + [["p11", "阳性"], ["１０１２", "阴性"]]
    root, label = tree(tmp_path, folders, rows)
    out = tmp_path / "out"
    status = train_in_process("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), *QUICK)
    printed = capsys.readouterr().out
    assert status == 0, printed
    block = printed[printed.index("label sheet:") :].splitlines()[:10]
    assert block[:7] == [
        f"label sheet: 'Sheet1' of {label.resolve()} (the active sheet)",
        "  header row: 1 (holds recognised headers)",
        "  ID column: 'ID' (recognised header)",
        "  label column: 'label' (recognised header)",
        "  classes: '阳性' 6 person(s), '阴性' 6 person(s)",
        "  positive class: '阳性' (recognised pair: '阳性' is positive, '阴性' negative)",
        "  persons: 12 sheet row(s) matched a folder, 0 row(s) have no folder, 0 folder(s) have no labelled row",
    ]
    assert sorted(block[7:10]) == [
        "  matched though spelled differently (Unicode width or form): 1, e.g. sheet '１０１２' ↔ folder '1012'",
        "  matched though spelled differently (case): 1, e.g. sheet 'p11' ↔ folder 'P11'",
        "  matched though spelled differently (leading zeros): 10, e.g. sheet '1' ↔ folder '001', "
        "sheet '10' ↔ folder '010', sheet '2' ↔ folder '002'",
    ]
    run = only_run_dir(out)
    report = read_json(run / "data_report.json")
    assert report["label_file"]["positive_class"] == "阳性" and report["classes"] == {"阳性": 6, "阴性": 6}
    assert report["matching"]["not_spelled_alike"] == {
        "Unicode width or form": 1,
        "case": 1,
        "leading zeros": 10,
    }
    model = __import__("torch").load(run / "models" / "final_model.pth", weights_only=True)
    assert model["class_names"][model["positive_index"]] == "阳性"


# ---------------------------------------------------------------------------------------------
# Folders: symlinks and permissions
# ---------------------------------------------------------------------------------------------


def test_symlinked_subfolders_are_followed_once_and_loops_end(tmp_path):
    frames(tmp_path / "store" / "seq", n=3)
    frames(tmp_path / "root" / "p1", n=1)
    (tmp_path / "root" / "p1" / "linked").symlink_to(tmp_path / "store" / "seq", target_is_directory=True)
    (tmp_path / "root" / "p1" / "loop").symlink_to(tmp_path / "root" / "p1", target_is_directory=True)
    found = discover_frames(tmp_path / "root")
    assert found == {"p1": ["p1/f0.png", "p1/linked/f0.png", "p1/linked/f1.png", "p1/linked/f2.png"]}


@pytest.fixture
def shared_tmp():
    """A folder another user can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="carotid-perm-"))
    folder.chmod(0o777)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o755)
    shutil.rmtree(folder)


def as_other_user(fn) -> tuple[int, str]:
    """fn() -> status, in a forked child that is not root (root reads every file whatever its mode).

    What the child imports is imported here first: the other user may not read this interpreter's files."""
    import encodings.cp437  # noqa: F401 - zipfile decodes member names with it

    import openpyxl.reader.excel  # noqa: F401
    import sklearn.model_selection  # noqa: F401

    import carotid.train  # noqa: F401

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 99
        try:
            os.close(read)
            os.dup2(write, 1)
            os.dup2(write, 2)
            sys.stdout = sys.stderr = open(write, "w", buffering=1, closefd=False)  # past pytest's capture
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)  # nobody
            status = fn()
        except BaseException:  # noqa: BLE001 - reported to the parent through the pipe
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)
    os.close(write)
    with os.fdopen(read, encoding="utf-8") as pipe:
        output = pipe.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), output


@pytest.mark.parametrize("what", ["label file", "root dir", "person folder", "nested folder"])
def test_unreadable_paths_are_one_error_naming_them(shared_tmp, what):
    folders = {str(1000 + i): ("normal", "plaque")[i % 2] for i in range(8)}
    root, label = tree(shared_tmp, folders, [[int(f), c] for f, c in folders.items()])
    frames(root / "1003" / "seq")
    for path in shared_tmp.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    blocked = {
        "label file": label,
        "root dir": root,
        "person folder": root / "1002",
        "nested folder": root / "1003" / "seq",
    }[what]
    blocked.chmod(0)
    argv = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(shared_tmp / "out"), *QUICK]
    status, output = as_other_user(lambda: train_in_process(*argv))
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert status == 2 and len(lines) == 1 and "Traceback" not in output, output
    assert str(blocked) in lines[0] and "permission denied" in lines[0]


def test_an_unreadable_frame_is_reported_like_an_undecodable_one(shared_tmp):
    folders = {str(1000 + i): ("normal", "plaque")[i % 2] for i in range(8)}
    root, label = tree(shared_tmp, folders, [[int(f), c] for f, c in folders.items()])
    for path in shared_tmp.rglob("*"):
        path.chmod(0o777 if path.is_dir() else 0o666)
    (root / "1004" / "f1.png").chmod(0)

    def collect() -> int:
        manifest = collect_persons(str(root), read_labels(label), None)
        print(manifest.report["unreadable_images"])
        return 0 if "1004/f1.png" in str(manifest.report["unreadable_images"]) else 1

    status, output = as_other_user(collect)
    assert status == 0 and "Permission" in output, output
