"""Hostile but realistic inputs, round 4 (issue 32), case 18: more folds than persons of a class, and what
Pillow, pydicom and openpyxl warn about while reading a user's file, each said in the tool's words with the file
and what to do. Real files in tmp_path, the real CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carotid.data.split import cv_splits
from tests.conftest import FAST, train_in_process, write_xlsx

# An EXIF block whose first directory promises two entries and holds one: Pillow warns "Corrupt EXIF data".
BROKEN_EXIF = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x02\x00\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"


def tree(tmp_path: Path, plaque: int, normal: int) -> tuple[Path, Path]:
    root = tmp_path / "DATA"
    persons = {str(1001 + k): "plaque" if k < plaque else "normal" for k in range(plaque + normal)}
    for k, person in enumerate(persons):
        for j in range(2):
            (root / person).mkdir(parents=True, exist_ok=True)
            pixels = np.random.default_rng(10 * k + j).integers(0, 256, (32, 32), dtype=np.uint8)
            Image.fromarray(pixels).save(root / person / f"f{j}.png")
    rows = [["patient_id", "label"]] + [[p, label] for p, label in persons.items()]
    return root, write_xlsx(tmp_path / "label.xlsx", rows)


def test_more_folds_than_persons_of_a_class_is_said_in_the_tools_words():
    labels = {str(1001 + k): int(k < 3) for k in range(12)}
    _, notes = cv_splits(labels, 5, 0.75, 0.25, 0.0, 0, None, ["normal", "plaque"])
    assert notes == [
        "cross-validation: 5 folds, but fewer persons (or groups of persons) than folds in class 'plaque' (3): 2 "
        "fold(s) hold none of that class, so their AUC, sensitivity or specificity cannot be computed and the mean "
        "over folds counts only the folds that have them — add persons of that class, or use --folds 3"
    ]
    assert not [n for n in notes if "least populated" in n or "n_splits" in n]


def test_a_jpeg_with_corrupt_exif_is_named_with_what_it_means(tmp_path, capsys):
    root, label = tree(tmp_path, 4, 4)
    broken = root / "1001" / "scan.jpg"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(broken, exif=BROKEN_EXIF)
    common = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    assert train_in_process(*common, "--epochs", "1", *FAST) == 0
    err = capsys.readouterr().err.splitlines()
    said = (
        f"warning: {broken}: its EXIF metadata (orientation, camera data) is damaged and is ignored — nothing, "
        "unless the report lists the file as unreadable or shows it rotated: then re-export it"
    )
    assert said in err, err
    assert not [line for line in err if "Corrupt EXIF" in line or "UserWarning" in line], err


# The case as a user meets it, five folds (the default): each fold trains, is evaluated and written with its
# figures, so this takes about a minute on two cores (237 s at load average 6-8).
@pytest.mark.slow
def test_five_folds_with_three_persons_of_a_class_say_so_and_the_mean_says_over_how_many(tmp_path, capsys):
    root, label = tree(tmp_path, 3, 9)
    common = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    shares = ["--train-ratio", "0.75", "--val-ratio", "0.25", "--test-ratio", "0"]
    assert train_in_process(*common, "--folds", "5", *shares, "--epochs", "1", *FAST) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert "note: cross-validation: 5 folds, but fewer persons (or groups of persons) than folds in class " \
        "'plaque' (3): 2 fold(s) hold none of that class" in captured.out  # fmt: skip
    auc = [line for line in out if line.startswith("auc ")][-1]  # the CV table comes after the folds' tables
    assert auc.count("(3/5)") == 2, auc  # per person and per image
    assert "(n/5): the mean over the n folds where the metric is defined (a fold without a class has no AUC, " \
        "sensitivity or specificity)" in out  # fmt: skip
    assert "least populated" not in captured.out + captured.err and "Warning" not in captured.err


def test_openpyxl_and_pydicom_warnings_name_the_file_being_read(tmp_path, capsys):
    """Their warnings as the libraries raise them (from their own files), while the tool reads a user's file."""
    import warnings

    import openpyxl
    import pydicom

    from carotid.core.errors import run_cli
    from carotid.core.library_words import reading

    said = [
        (openpyxl.__file__, "Data Validation extension is not supported and will be removed", "label.xlsx"),
        (pydicom.__file__, "Invalid value for VR UI: '1.2.840.abc'", "1001/us.dcm"),
    ]

    def command(argv):
        for library_file, message, name in said:
            with reading(tmp_path / name):
                warnings.warn_explicit(message, UserWarning, library_file, 1)
        return 0

    assert run_cli(command, []) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: {tmp_path / 'label.xlsx'}: it holds an Excel feature that is not read (data validation, "
        "conditional formatting, a defined name) — nothing: the cells' values are read as they are",
        f"warning: {tmp_path / '1001/us.dcm'}: its header breaks the DICOM standard in a way pydicom reads past "
        "('Invalid value for VR UI: '1.2.840.abc''); the frames are read as stored — nothing if its frames look "
        "right in the report; otherwise re-export the study from the scanner or PACS",
    ]
