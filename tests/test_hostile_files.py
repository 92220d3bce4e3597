"""Hostile but realistic file trees (issue 25, the file side): NaN pixels, the same frames under two IDs,
names that are not UTF-8, folders with no readable frame, suffix-less DICOM exports, paths over the OS
limit, a full disk, DICOM headers that claim more frames than they hold, zipped person folders, library
warnings, and the accounting of data_report.json. Each test builds the real input."""

from __future__ import annotations

import errno
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from carotid.core.errors import UserError, run_cli
from carotid.data.folders import file_cache
from carotid.data.folders.layout import find_input_frames
from carotid.data.frames.decode import decode_frames
from carotid.data.frames.preprocessing import Preprocessing
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from carotid.data.split import person_groups, split_persons
from tests.conftest import FAST, make_data, only_run_dir, read_json, train_in_process, write_xlsx

PREP = Preprocessing(32, 1, "stretch", "none")


def frame(path: Path, value: int | None = None, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    array = rng.integers(0, 256, size[::-1], dtype=np.uint8) if value is None else np.full(size[::-1], value, np.uint8)
    Image.fromarray(array).save(path)
    return path


def tree(tmp_path: Path, persons: dict[str, str], frames: int = 3) -> tuple[Path, Path]:
    """root/<id>/f<k>.png for each person, and a label sheet; returns (root, label file)."""
    root = tmp_path / "root"
    for person in persons:
        for k in range(frames):
            frame(root / person / f"f{k}.png")
    rows = [["patient_id", "label"]] + [[p, label] for p, label in persons.items()]
    return root, write_xlsx(tmp_path / "label.xlsx", rows)


def collect(root: Path, label: Path, cap: int | None = None):
    return collect_persons(str(root), read_labels(str(label)), cap)


def sample_file(name: str) -> str:
    return get_testdata_file(name, download=False)


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------


def test_a_float_tiff_with_nan_pixels_is_unreadable_with_its_reason_never_black(tmp_path):
    values = np.linspace(0, 1, 24 * 20, dtype=np.float32).reshape(20, 24)
    clean, holed = tmp_path / "clean.tif", tmp_path / "holed.tif"
    Image.fromarray(values, mode="F").save(clean)
    values[3, 4], values[5, 6] = np.nan, np.inf
    Image.fromarray(values, mode="F").save(holed)
    assert not isinstance(decode_frames(str(clean), [0], PREP)[0], str)
    assert decode_frames(str(holed), [0], PREP)[0] == (
        "ValueError: 2 of 480 pixel values are not finite (NaN or infinite)"
    )
    root, label = tree(tmp_path, {"1": "a", "2": "b", "3": "a", "4": "b"})
    shutil.copy(holed, root / "1" / "scan.tif")
    manifest = collect(root, label)
    assert [(u["path"], u["reason"]) for u in manifest.report["unreadable_images"]] == [
        ("1/scan.tif", "ValueError: 2 of 480 pixel values are not finite (NaN or infinite)")
    ]
    assert ("1/scan.tif", 0) not in manifest.frames["1"]


def test_a_dicom_holding_fewer_frames_than_its_header_claims_gives_those_it_holds(tmp_path):
    root, label = tree(tmp_path, {"1": "a", "2": "b", "3": "a", "4": "b"})
    short = pydicom.dcmread(sample_file("rtdose.dcm"))  # 15 frames of 10x10, 32-bit, uncompressed
    short.PixelData, short.NumberOfFrames = short.PixelData[: 3 * 400], 10
    short.Modality = "US"  # read as an ultrasound loop (an RT dose is left out as another modality)
    short.save_as(root / "1" / "loop.dcm")
    wrong = pydicom.dcmread(sample_file("MR_small.dcm"))  # 64x64, 16-bit
    wrong.Rows, wrong.Modality = 80, "US"
    wrong.save_as(root / "2" / "wrong.dcm")
    results = decode_frames(str(root / "1" / "loop.dcm"), list(range(4)), PREP)
    assert [isinstance(r, str) for r in results] == [False, False, False, True]
    assert results[3] == "IndexError: frame 3 of a file with 3 frame(s)"
    manifest = collect(root, label)
    assert [f for f in manifest.frames["1"] if f[0] == "1/loop.dcm"] == [("1/loop.dcm", k) for k in range(3)]
    assert manifest.report["dicom_frames_missing"] == [{"path": "1/loop.dcm", "header_frames": 10, "frames_found": 3}]
    assert any("NumberOfFrames 10, pixel data for 3" in w for w in manifest.report["warnings"])
    (reason,) = [u["reason"] for u in manifest.report["unreadable_images"] if u["path"] == "2/wrong.dcm"]
    assert "80x64 frame (10240 bytes) does not fit the 8192 bytes of pixel data" in reason


# ---------------------------------------------------------------------------------------------
# The same frames under two IDs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("network_latency", [False, True])  # the stats in this thread, or on the reader threads
def test_persons_sharing_frame_files_are_warned_and_never_split_apart(tmp_path, monkeypatch, network_latency):
    if network_latency:  # every stat counts as slow, as on a network file system
        monkeypatch.setattr(file_cache, "SLOW_STAT_S", 0.0)
    persons = {str(1000 + k): "ab"[k % 2] for k in range(16)}
    root, label = tree(tmp_path, persons)
    shutil.rmtree(root / "1003")
    os.symlink(root / "1002", root / "1003")  # a linked folder: the same files
    for k in range(3):  # a copied frame: identical content, another file
        shutil.copy(root / "1004" / f"f{k}.png", root / "1007" / f"copy{k}.png")
    manifest = collect(root, label)
    shared = manifest.report["persons_sharing_files"]
    assert [g["persons"] for g in shared] == [["1002", "1003"], ["1004", "1007"]]
    (warning,) = [w for w in manifest.report["warnings"] if "share frame files" in w]
    assert warning.startswith("4 persons share frame files with another person (2 group(s)")
    groups = person_groups(sorted(manifest.person_labels), None, shared)
    assert groups["1002"] == groups["1003"] and groups["1004"] == groups["1007"]
    for seed in range(6):
        splits, _ = split_persons(manifest.person_labels, 0.5, 0.25, 0.25, seed, groups)
        where = {p: s for s, members in splits.items() for p in members}
        assert where["1002"] == where["1003"] and where["1004"] == where["1007"], (seed, splits)


def test_no_sharing_no_groups_and_the_plain_split(tmp_path):
    root, label = tree(tmp_path, {str(k): "ab"[k % 2] for k in range(6)})
    manifest = collect(root, label)
    assert manifest.report["persons_sharing_files"] == []
    assert person_groups(sorted(manifest.person_labels), None, []) is None


# ---------------------------------------------------------------------------------------------
# Folders with nothing to read, archives, the accounting of data_report.json
# ---------------------------------------------------------------------------------------------


def test_a_labelled_folder_without_any_readable_frame_is_left_out_like_an_empty_one(tmp_path):
    root, label = tree(tmp_path, {"1": "a", "2": "b", "3": "a", "4": "b", "5": "a", "6": "b", "7": "a"})
    for person in ("5", "6", "7"):
        shutil.rmtree(root / person)
        (root / person).mkdir()
    shutil.copy(sample_file("dicomdirtests/DICOMDIR"), root / "5" / "DICOMDIR")
    (root / "6" / "README").write_text("exported by the scanner\n")
    bare = pydicom.dcmread(sample_file("MR_small.dcm"))
    bare.preamble = None
    pydicom.dcmwrite(root / "7" / "IM0000", bare, enforce_file_format=False)  # no preamble, no suffix
    assert open(root / "7" / "IM0000", "rb").read(132)[128:] != b"DICM"
    manifest = collect(root, label)
    assert sorted(manifest.frames) == ["1", "2", "3", "4"]
    assert manifest.report["persons_without_images"] == {"count": 3, "first": ["5", "6", "7"]}
    assert any(n.startswith("3 persons without images left out") for n in manifest.left_out_notes())


def test_every_file_counted_is_accounted_for_and_rt_plans_are_listed(tmp_path):
    root, label = tree(tmp_path, {"1": "a", "2": "b", "3": "a", "4": "b"})
    shutil.copy(sample_file("rtplan.dcm"), root / "1" / "plan.dcm")
    shutil.copy(sample_file("rtplan.dcm"), root / "2" / "RTPLAN0001")  # a suffix-less export: DICOM by content
    (root / "3" / "notes").write_text("no suffix, not DICOM")
    (root / "4" / "broken.tif").write_bytes(b"II*\0garbage")
    report = collect(root, label).report
    assert report["files_found"] == 12 + 4
    without = report["files_without_frames"]
    assert without["count"] == 3 and without["first"] == ["1/plan.dcm", "2/RTPLAN0001", "3/notes"]
    header_failed = [u for u in report["unreadable_images"] if u["frame"] is None]
    assert [u["path"] for u in header_failed] == ["4/broken.tif"]
    assert report["files_found"] == sum(report["files_by_kind"].values()) + len(header_failed) + without["count"]


def test_person_folders_left_as_archives_are_named(tmp_path):
    root, label = tree(tmp_path, {"1001": "a", "1002": "b", "1003": "a", "1004": "b"})
    with zipfile.ZipFile(root / "1005.zip", "w") as archive:
        archive.write(root / "1001" / "f0.png", "1005/f0.png")
    shutil.copy(root / "1005.zip", root / "1001" / "old.rar")
    report = collect(root, label).report
    assert report["archives"] == {"count": 2, "first": ["1001/old.rar", "1005.zip"]}
    assert any(
        w.startswith("2 archive(s) found and not read (e.g. 1001/old.rar, 1005.zip)") for w in report["warnings"]
    )
    only = tmp_path / "zipped"
    only.mkdir()
    shutil.copy(root / "1005.zip", only / "1001.zip")
    with pytest.raises(UserError, match=r"holds 1 archive\(s\), which are not read: unpack them"):
        collect(only, label)


def test_a_person_holding_a_large_share_of_the_frames_is_named_with_the_cap(tmp_path):
    root, label = tree(tmp_path, {str(k): "ab"[k % 2] for k in range(12)}, frames=4)
    for k in range(4, 40):
        frame(root / "3" / f"f{k}.png")
    (warning,) = [w for w in collect(root, label).report["warnings"] if "large share" in w]
    assert "'3' 40 of 84 (48%)" in warning and "--max-imgs-per-person" in warning
    assert not [w for w in collect(root, label, cap=4).report["warnings"] if "large share" in w]


# ---------------------------------------------------------------------------------------------
# Paths: suffix-less DICOM for predict, over the OS limit
# ---------------------------------------------------------------------------------------------


def test_predict_input_finds_a_suffix_less_dicom_export_as_the_reader_does(tmp_path):
    source = pydicom.dcmread(sample_file("MR_small.dcm"))
    source.Modality = "US"
    for person in ("3001", "3002"):
        for k in range(2):
            (tmp_path / "in" / person).mkdir(parents=True, exist_ok=True)
            source.save_as(tmp_path / "in" / person / f"IM{k:04d}")
    layout, frames, unreadable, _ = find_input_frames(tmp_path / "in", "auto")
    assert layout == "persons" and unreadable == []
    assert {p: [Path(f).name for f, _ in fs] for p, fs in frames.items()} == {
        "3001": ["IM0000", "IM0001"],
        "3002": ["IM0000", "IM0001"],
    }
    layout, frames, _, _ = find_input_frames(tmp_path / "in" / "3001", "auto")
    assert layout == "person" and len(frames["3001"]) == 2
    assert find_input_frames(tmp_path / "in" / "3001" / "IM0000", "auto")[0] == "images"


def test_a_path_over_the_os_limit_is_an_error_naming_the_folder(tmp_path, capsys):
    root, label = tree(tmp_path, {"1": "a", "2": "b", "3": "a", "4": "b"})
    fd = os.open(root / "2", os.O_RDONLY)
    try:
        for _ in range(22):  # 22 x 201 bytes: past PATH_MAX (4096), built relative to each parent
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        with open(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as handle:
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(handle, format="PNG")
    finally:
        os.close(fd)
    with pytest.raises(UserError, match=r"folder .*/2/d{200}/.* with the names in it is longer than the system"):
        collect(root, label)
    assert train_in_process("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: the path of folder ") and "Traceback" not in "\n".join(err)


# ---------------------------------------------------------------------------------------------
# Library warnings on the console
# ---------------------------------------------------------------------------------------------


def test_library_warnings_become_the_tools_own_lines_once_each_and_counted(tmp_path, capsys, monkeypatch):
    big = frame(tmp_path / "big.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 4096 pixels: over the limit, under twice it

    def command(argv):
        for _ in range(3):
            decode_frames(str(big), [0], PREP)
        warnings.warn("our own", UserWarning, stacklevel=1)
        return 0

    assert run_cli(command, []) == 0
    err = capsys.readouterr().err.splitlines()
    bomb = [line for line in err if "decompression bombs" in line]
    assert len(bomb) == 2 and bomb[0] == (
        f"warning: {big}: its 4096 pixels are over Pillow's guard against decompression bombs; it is read all the "
        "same — nothing if it is a real scan; otherwise remove the file"
    ), err
    assert bomb[1].startswith(f"warning: said 3 times in all: {big}: its 4096 pixels")
    assert "warning: our own (UserWarning, test_hostile_files)" in err
    assert not [line for line in err if "Warning:" in line and not line.startswith("warning:")], err


# ---------------------------------------------------------------------------------------------
# Whole runs: names that are not UTF-8, a full disk, predict on the model's own training persons
# ---------------------------------------------------------------------------------------------

GBK = os.fsdecode("左侧".encode("gbk"))  # a sub-folder name from a zip made on a Chinese Windows machine


@pytest.mark.slow
def test_names_that_are_not_utf8_survive_every_file_and_the_test_evaluation(tmp_path, capsys):
    root, label = make_data(tmp_path / "data", persons=8, frames=3, size=32)
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        (person / GBK).mkdir()
        for k, png in enumerate(sorted(person.rglob("*.png"))):
            png.rename(person / GBK / os.fsdecode(f"图{k}.png".encode("gbk")))
    common = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    assert train_in_process(*common, "--epochs", "1", *FAST) == 0
    out = capsys.readouterr().out
    run = only_run_dir(tmp_path / "out")
    report = read_json(run / "data_report.json")
    (warning,) = [w for w in report["warnings"] if "not valid UTF-8" in w]
    files = report["files_found"]
    assert warning.startswith(f"{files} path(s) hold file or folder names that are not valid UTF-8 (e.g. ")
    assert "/\\xd7\\xf3\\xb2\\xe0/" in warning
    assert f"warning: {warning}" in out
    metrics = run / "eval_test_best" / "metrics.json"
    assert metrics.is_file() and read_json(metrics)
    predictions = (run / "eval_test_best" / "predictions.csv").read_text(encoding="utf-8")
    assert "\\xd7\\xf3\\xb2\\xe0/" in predictions
    # Every warning the start-up block printed is in data_report.json.
    startup = out.split("epoch 1")[0]
    said = [line[len("warning: ") :] for line in startup.splitlines() if line.startswith("warning: ")]
    assert said and set(said) <= set(report["warnings"]), (said, report["warnings"])


@pytest.mark.slow
@pytest.mark.parametrize("target, nth, epochs", [("final_model.pth", 1, "1"), ("progress.json", 2, "2")])
def test_a_full_disk_is_one_error_and_resume_finishes(target, nth, epochs, tmp_path, capsys, monkeypatch):
    """ENOSPC at the final model, or at the second epoch's checkpoint (simulated: the rename that publishes
    the file fails as a write to a full disk does)."""
    root, label = make_data(tmp_path / "data", persons=8, frames=3, size=32)
    common = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    replace, calls = os.replace, []

    def full_disk(src, dst, *args, **kwargs):
        if Path(dst).name == target:
            calls.append(dst)
            if len(calls) == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)
    assert train_in_process(*common, "--epochs", epochs, *FAST) == 2
    run = only_run_dir(tmp_path / "out")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: the disk holding {run} is full (No space left on device: "), err[-1]
    assert f"continue with --resume {run}" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (run / "models" / "final_model.pth").exists() and not list(run.rglob(".*tmp*"))
    monkeypatch.setattr(os, "replace", replace)
    assert train_in_process("--resume", str(run)) == 0
    assert (run / "models" / "final_model.pth").is_file() and (run / "eval_test_best" / "metrics.json").is_file()


@pytest.mark.slow
def test_predict_on_the_models_own_training_persons_says_so(trained_run, data_dir, tmp_path, capsys):
    from carotid.predict import main

    root, _ = data_dir
    assert main(["--model", str(trained_run / "models" / "best_model.pth"), "--input", str(root),
                 "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    splits = read_json(trained_run / "splits.json")
    seen = len(splits["train"]) + len(splits["val"])
    (line,) = [line for line in out.splitlines() if "the model has seen them" in line]
    assert line.startswith(f"warning: {seen} persons of 12 in --input (")
    assert "model's own train and val split" in line
