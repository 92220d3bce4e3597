"""Hostile but realistic inputs, round 4 (issue 32), the rest of case 19: a resumed run whose checkpoints were
deleted, standard output on a full device, a Strict Open XML workbook, YBR_FULL_422 DICOM frames, and files
named as another kind (a DICOM named .jpg, a PNG named .dcm). Real files in tmp_path, pydicom's own samples."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from carotid import evaluate
from carotid.core.errors import UserError
from carotid.data.folders.frame_counts import count_frames
from carotid.data.folders.layout import find_input_frames
from carotid.data.folders.readable import startup_lines
from carotid.data.frames.decode import decode_frames
from carotid.data.frames.kinds.dicom import dicom_frames
from carotid.data.frames.preprocessing import Preprocessing
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from tests.conftest import (
    FAST,
    make_data,
    module_command,
    only_run_dir,
    read_json,
    subprocess_env,
    train_in_process,
    write_xlsx,
)


def sample_file(name: str) -> str:
    return get_testdata_file(name, download=False)


def test_resume_of_a_run_whose_checkpoints_were_deleted_says_so_and_keeps_its_models(trained_run, tmp_path, capsys):
    run = tmp_path / trained_run.name
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints")
    best = (run / "models" / "best_model.pth").read_bytes()
    assert train_in_process("--resume", str(run)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: --resume {run}: its checkpoints/ folder holds no checkpoint, yet the run has trained "
        "(models/best_model.pth, models/final_model.pth); resuming would start again at epoch 1 and replace its "
        f"models — restore its checkpoints/ folder, or start a new run from its model: --load-model "
        f"{run / 'models' / 'best_model.pth'}"
    )
    assert (run / "models" / "best_model.pth").read_bytes() == best and not (run / "checkpoints").exists()


def test_standard_output_on_a_full_device_is_not_called_a_full_disk(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    command = module_command("carotid.demo", "--out", str(tmp_path / "demo"), "--persons", "4", "--frames", "2")
    with open("/dev/full", "w") as full:
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    assert result.returncode == 2 and "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.stderr.strip() == (
        "error: standard output cannot be written (No space left on device: it goes to /dev/full) — send it to a "
        "terminal, a file on a disk with space or /dev/null, and run the command again"
    )


def test_a_strict_open_xml_workbook_is_named_as_such_with_the_fix(tmp_path):
    plain = write_xlsx(tmp_path / "plain.xlsx", [["ID", "label"], ["1", "a"], ["2", "b"]])
    strict = tmp_path / "strict.xlsx"
    # What Excel's "Strict Open XML Spreadsheet" changes: the transitional namespaces become ISO 29500 Strict's.
    namespaces = {
        b"http://schemas.openxmlformats.org/spreadsheetml/2006/main": b"http://purl.oclc.org/ooxml/spreadsheetml/main",
        b"http://schemas.openxmlformats.org/officeDocument/2006/relationships": (
            b"http://purl.oclc.org/ooxml/officeDocument/relationships"
        ),
    }
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(strict, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            for old, new in namespaces.items():
                data = data.replace(old, new)
            target.writestr(item, data)
    with pytest.raises(UserError) as raised:
        read_labels(strict)
    assert str(raised.value) == (
        f"{strict} is saved as 'Strict Open XML Spreadsheet', which cannot be read here — open it in Excel and "
        "save it as 'Excel Workbook (*.xlsx)' (File > Save As)"
    )
    assert read_labels(plain).class_names == ["a", "b"]


@pytest.mark.parametrize("name", ["SC_ybr_full_422_uncompressed.dcm", "examples_ybr_color.dcm"])
def test_ybr_full_422_frames_are_decoded_as_pydicom_decodes_them(name):
    ds = pydicom.dcmread(sample_file(name))
    assert ds.PhotometricInterpretation == "YBR_FULL_422"
    expected = ds.pixel_array[0] if ds.get("NumberOfFrames", 1) > 1 else ds.pixel_array
    (source,) = list(dicom_frames(sample_file(name), [0]))
    assert not isinstance(source, Exception), source
    # pydicom gives RGB; JPEG frames may differ by the decoder's rounding (Pillow's libjpeg-turbo here).
    assert source.pixels.shape == expected.shape and np.abs(source.pixels.astype(int) - expected).max() <= 4
    grey_and_colour = decode_frames(sample_file(name), [0], Preprocessing(32, 3))
    assert isinstance(grey_and_colour[0], tuple) and grey_and_colour[0][0].shape == (3, 32, 32)


def test_a_dicom_named_jpg_and_a_png_named_dcm_are_read_by_their_content(tmp_path):
    person = tmp_path / "root" / "1001"
    person.mkdir(parents=True)
    shutil.copy(sample_file("examples_rgb_color.dcm"), person / "scan.jpg")
    grey = np.random.default_rng(0).integers(0, 256, (20, 24), dtype=np.uint8)
    Image.fromarray(grey).save(person / "capture.png")
    (person / "capture.png").rename(person / "capture.dcm")
    counts = count_frames(str(tmp_path / "root"), ["1001/capture.dcm", "1001/scan.jpg"])
    assert not counts.unreadable and not counts.not_images
    assert counts.files_by_kind == {"image": 1, "dicom": 1} and counts.misnamed == {
        "1001/capture.dcm": "png", "1001/scan.jpg": "dcm"
    }  # fmt: skip
    prep = Preprocessing(24, 1, resize="stretch", crop="none")
    (png,) = decode_frames(str(person / "capture.dcm"), [0], prep)
    assert isinstance(png, tuple) and np.abs(png[0][0].astype(int) - np.asarray(Image.fromarray(grey).resize(
        (24, 24), Image.Resampling.BILINEAR)).astype(int)).max() <= 1  # fmt: skip
    (dicom,) = decode_frames(str(person / "scan.jpg"), [0], prep)
    (named_right,) = decode_frames(sample_file("examples_rgb_color.dcm"), [0], prep)
    assert isinstance(dicom, tuple) and np.array_equal(dicom[0], named_right[0])


def misnamed_data(tmp_path: Path) -> tuple[Path, Path, int]:
    """8 persons of 2 PNG frames; 1001 also holds an ultrasound cine loop named .jpg, 1002 a PNG named .dcm.
    Returns (root, label, the cine loop's NumberOfFrames)."""
    root, label = make_data(tmp_path / "data", persons=8, frames=2, size=32)
    cine = sample_file("examples_ybr_color.dcm")  # a JPEG-baseline ultrasound cine loop
    shutil.copy(cine, next(root.glob("1001*")) / "cine_003.jpg")
    grey = np.random.default_rng(1).integers(0, 256, (24, 32), dtype=np.uint8)
    Image.fromarray(grey).save(next(root.glob("1002*")) / "capture.dcm", format="PNG")
    return root, label, int(pydicom.dcmread(cine, stop_before_pixels=True).NumberOfFrames)


def test_a_cine_loop_named_jpg_gives_every_frame_and_misnamed_files_are_noted(tmp_path):
    root, label, cine_frames = misnamed_data(tmp_path)
    manifest = collect_persons(str(root), read_labels(label), None)
    report = manifest.report
    assert cine_frames == 30 and len(manifest.frames["1001"]) == 2 + cine_frames
    assert sorted(index for path, index in manifest.frames["1001"] if path.endswith(".jpg")) == list(range(30))
    assert report["frames_by_kind"] == {"image": 8 * 2 + 1, "dicom": cine_frames}
    assert report["images_used"] == 8 * 2 + 1 + cine_frames
    assert report["files_read_by_content"] == {
        "count": 2,
        "first": [
            {"path": "1001/cine_003.jpg", "content": "DICOM", "rename_to": ".dcm"},
            {"path": "1002/capture.dcm", "content": "PNG", "rename_to": ".png"},
        ],
    }
    lines = startup_lines(report, in_channels=1)
    assert lines[0].startswith(f"frames: {8 * 2 + 1 + cine_frames} in 18 files (dicom: 30 frames in 1 file, ")
    assert lines[-1] == (
        "note: 2 files read by their content, not their name (e.g. 1001/cine_003.jpg is a DICOM file; all listed "
        'in data_report.json "files_read_by_content") — rename them (e.g. to cine_003.dcm) so that other tools '
        "read them too"
    )


def test_predict_input_gives_every_frame_of_a_cine_loop_named_jpg_and_says_so(tmp_path):
    root, _, cine_frames = misnamed_data(tmp_path)
    layout, frames, unreadable, warnings = find_input_frames(root, "auto")
    assert layout == "persons" and not unreadable
    cine = [index for path, index in frames["1001"] if path.endswith("cine_003.jpg")]
    assert cine == list(range(cine_frames)) and len(frames["1002"]) == 3
    assert warnings[-1].startswith("2 files read by their content, not their name (e.g. 1001/cine_003.jpg is a ")


@pytest.mark.slow
def test_training_and_evaluation_use_every_frame_of_a_cine_loop_named_jpg(tmp_path, capsys):
    root, label, cine_frames = misnamed_data(tmp_path)
    common = ["--root-dir", str(root), "--label-excel", str(label)]
    assert train_in_process(*common, "--output-dir", str(tmp_path / "out"), "--epochs", "1", *FAST) == 0
    printed = capsys.readouterr().out
    run = only_run_dir(tmp_path / "out")
    report = read_json(run / "data_report.json")
    total = 8 * 2 + 1 + cine_frames
    assert report["images_used"] == total and report["frames_by_kind"]["dicom"] == cine_frames
    assert f"frames: {total} in 18 files (dicom: {cine_frames} frames in 1 file, " in printed
    assert "note: 2 files read by their content, not their name (e.g. 1001/cine_003.jpg is a DICOM file" in printed
    model = run / "models" / "best_model.pth"
    out = tmp_path / "external"
    argv = [*common, "--model", str(model), "--out", str(out), "--num-workers", "0", "--batch-size", "8"]
    assert evaluate.main([*argv, "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out
    metrics = read_json(out / "metrics.json")
    assert metrics["n_images"] == total and not metrics["unreadable_images"]
    assert "note: 2 files read by their content, not their name" in printed
    predictions = (out / "predictions.csv").read_text(encoding="utf-8")
    assert predictions.count("cine_003.jpg") == cine_frames


# ---------------------------------------------------------------------------------------------
# 9. A DICOM whose PatientID is another person of the sheet
# ---------------------------------------------------------------------------------------------


def test_a_dicom_naming_another_person_of_the_sheet_is_warned_with_both(tmp_path):
    root = tmp_path / "root"
    persons = {str(1001 + k): "ab"[k % 2] for k in range(6)}
    for k, person in enumerate(persons):
        scan = pydicom.dcmread(sample_file("examples_rgb_color.dcm"))  # an ultrasound frame
        scan.PatientID = person if k != 0 else "1004"  # 1001's folder holds 1004's study
        (root / person).mkdir(parents=True)
        scan.save_as(root / person / "us.dcm")
    hospital = pydicom.dcmread(sample_file("examples_rgb_color.dcm"))
    hospital.PatientID = "H-778812"  # a hospital number: names no one of the sheet
    hospital.save_as(root / "1002" / "us2.dcm")
    label = write_xlsx(tmp_path / "label.xlsx", [["patient_id", "label"]] + [[p, c] for p, c in persons.items()])
    manifest = collect_persons(str(root), read_labels(label), None)
    (warning,) = [w for w in manifest.report["warnings"] if "PatientID" in w]
    assert warning == (
        "1 DICOM file(s) name another person of the sheet in their header (e.g. 1001/us.dcm in 1001's folder has "
        "PatientID '1004', the sheet's 1004): they are trained as the folder's person — move each to its person's "
        "folder, or correct the PatientID if the folder is right"
    )
    assert len(manifest.frames["1001"]) == 1 and len(manifest.frames["1002"]) == 2
