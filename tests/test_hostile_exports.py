"""Hostile but realistic hospital exports, round 4 (issue 32): boilerplate files in every folder, nested person
folders, non-ultrasound DICOMs, outputs onto inputs, FIFOs and loops, names that are not UTF-8 in JSON. Each test
builds the real input in tmp_path and checks what a user would see."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from carotid.core.errors import UserError
from carotid.core.files import read_table, write_table
from carotid.data.folders.layout import find_input_frames
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from carotid.data.split import cv_splits, person_groups, split_persons
from tests.conftest import FAST, module_command, subprocess_env, train_in_process, write_xlsx


def frame(path: Path, seed: int, size=(24, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, size[::-1], dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def tree(tmp_path: Path, persons: dict[str, str], frames: int = 3) -> tuple[Path, Path]:
    """root/<id>/f<k>.png (distinct pixels each) and a label sheet; returns (root, label file)."""
    root = tmp_path / "root"
    for i, person in enumerate(persons):
        for k in range(frames):
            frame(root / person / f"f{k}.png", seed=100 * i + k)
    rows = [["patient_id", "label"]] + [[p, label] for p, label in persons.items()]
    return root, write_xlsx(tmp_path / "label.xlsx", rows)


def sample_file(name: str) -> str:
    return get_testdata_file(name, download=False)


def collect(root: Path, label: Path):
    return collect_persons(str(root), read_labels(str(label)), None)


# ---------------------------------------------------------------------------------------------
# 11. The same file in every person's folder
# ---------------------------------------------------------------------------------------------


def test_a_file_in_every_folder_is_boilerplate_left_out_and_the_folds_still_split(tmp_path):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(16)}
    root, label = tree(tmp_path, persons)
    frame(tmp_path / "calibration.png", seed=7)
    for person in persons:
        shutil.copy(tmp_path / "calibration.png", root / person / "calibration.png")
    for k in range(3):  # and one real copied folder: two IDs, the same frames
        shutil.copy(root / "1004" / f"f{k}.png", root / "1007" / f"copy{k}.png")
    manifest = collect(root, label)
    (warning,) = [w for w in manifest.report["warnings"] if "boilerplate" in w]
    assert warning.startswith("1 file identical in 3 or more persons' folders (16 copies; e.g. 1000/calibration.png")
    (left_out,) = manifest.report["boilerplate_files"]
    assert left_out["persons"] == 16 and left_out["files"] == sorted(f"{p}/calibration.png" for p in persons)
    assert not any(rel.endswith("calibration.png") for fs in manifest.frames.values() for rel, _ in fs)
    assert len(manifest.frames["1000"]) == 3 and len(manifest.frames["1007"]) == 6
    assert [g["persons"] for g in manifest.report["persons_sharing_files"]] == [["1004", "1007"]]
    groups = person_groups(sorted(manifest.person_labels), None, manifest.report["persons_sharing_files"])
    plan, _ = cv_splits(manifest.person_labels, 2, 0.5, 0.25, 0.25, 0, groups)
    where = {p: k for k, f in enumerate(plan["folds"]) for p in f["held_out"]} | {p: "test" for p in plan["test"]}
    assert where["1004"] == where["1007"] and len(where) == 16


def test_three_copies_of_one_folder_stay_one_person_not_boilerplate(tmp_path):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(8)}
    root, label = tree(tmp_path, persons)
    for copy in ("1002", "1004"):  # 1000's folder copied over two other IDs: every file in 3 folders
        shutil.rmtree(root / copy)
        shutil.copytree(root / "1000", root / copy)
    manifest = collect(root, label)
    assert manifest.report["boilerplate_files"] == []
    assert [g["persons"] for g in manifest.report["persons_sharing_files"]] == [["1000", "1002", "1004"]]


@pytest.mark.parametrize("folds", [None, 2])
def test_everyone_in_one_group_is_an_error_naming_the_cause_not_a_crash(tmp_path, folds):
    labels = {f"p{k}": k % 2 for k in range(12)}
    groups = dict.fromkeys(labels, "group:all")
    with pytest.raises(UserError, match="the 12 persons form one group .*none is left for the test split"):
        if folds:
            cv_splits(labels, folds, 0.5, 0.25, 0.25, 0, groups)
        else:
            split_persons(labels, 0.5, 0.25, 0.25, 0, groups)


# ---------------------------------------------------------------------------------------------
# 2. A person folder dragged into another
# ---------------------------------------------------------------------------------------------


def test_a_person_folder_inside_another_is_an_error_naming_both(tmp_path):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(6)}
    root, label = tree(tmp_path, persons)
    shutil.move(root / "1002", root / "1001" / "1002")
    with pytest.raises(UserError) as caught:
        collect(root, label)
    assert str(caught.value) == (
        "folder 1001/1002 inside person 1001's folder is named like sheet ID '1002', which has no folder of its "
        f"own: its frames would be trained as 1001's — move it to {root / '1002'} (a person folder dragged into "
        "another), or rename it if it is not that person"
    )


def test_series_folders_named_like_persons_with_their_own_folders_are_not_persons(tmp_path):
    persons = {str(k): "ab"[k % 2] for k in range(1, 7)}
    root, label = tree(tmp_path, persons, frames=0)
    for i, person in enumerate(persons):
        for series in ("1", "2"):  # PACS series numbers, like persons 1 and 2
            frame(root / person / series / "f.png", seed=10 * i + int(series))
    manifest = collect(root, label)
    assert sorted(manifest.frames) == sorted(persons) and len(manifest.frames["3"]) == 2


# ---------------------------------------------------------------------------------------------
# 3. A CT or MR series in a person's folder
# ---------------------------------------------------------------------------------------------


def test_dicom_of_another_modality_is_left_out_named_and_counted_by_modality(tmp_path):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(6)}
    root, label = tree(tmp_path, persons)
    shutil.copy(sample_file("examples_rgb_color.dcm"), root / "1000" / "us.dcm")  # Modality US
    shutil.copy(sample_file("CT_small.dcm"), root / "1001" / "ct.dcm")
    mr = pydicom.dcmread(sample_file("CT_small.dcm"))
    mr.Modality = "MR"
    mr.save_as(root / "1002" / "IM0001")  # named by nothing: a DICOM by its content
    manifest = collect(root, label)
    (warning,) = [w for w in manifest.report["warnings"] if "another modality" in w]
    assert warning == (
        "2 DICOM files of another modality than ultrasound left out (CT, MR; e.g. 1001/ct.dcm: Modality CT), not "
        'trained or evaluated (listed in data_report.json "other_modality_dicom"): remove them from the person '
        "folders, or export only the ultrasound series"
    )
    assert manifest.report["other_modality_dicom"] == [
        {"path": "1001/ct.dcm", "modality": "CT"},
        {"path": "1002/IM0001", "modality": "MR"},
    ]
    assert manifest.report["frames_by_modality"] == {"US": 1, "CT": 1, "MR": 1}
    used = {rel for fs in manifest.frames.values() for rel, _ in fs}
    assert "1000/us.dcm" in used and not used & {"1001/ct.dcm", "1002/IM0001"}
    assert len(manifest.frames["1001"]) == 3
    report = manifest.report  # every file found is accounted for
    assert report["files_found"] == sum(report["files_by_kind"].values()) + len(report["other_modality_dicom"])


def test_a_person_with_only_a_ct_series_is_an_error_naming_the_modality(tmp_path):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(6)}
    root, label = tree(tmp_path, persons)
    shutil.rmtree(root / "1003")
    (root / "1003").mkdir()
    shutil.copy(sample_file("CT_small.dcm"), root / "1003" / "ct.dcm")
    with pytest.raises(UserError) as caught:
        collect(root, label)
    assert str(caught.value) == (
        "person 1003's folder holds no ultrasound frame, only DICOM of modality CT (e.g. 1003/ct.dcm) — put the "
        "person's ultrasound frames in the folder, or remove the person's row from the sheet"
    )


def test_predict_input_leaves_another_modality_out_with_a_warning(tmp_path):
    for person in ("3001", "3002"):
        frame(tmp_path / "in" / person / "f.png", seed=int(person))
    shutil.copy(sample_file("CT_small.dcm"), tmp_path / "in" / "3001" / "ct.dcm")
    layout, frames, _, warnings = find_input_frames(tmp_path / "in", "auto")
    assert {p: [Path(f).name for f, _ in fs] for p, fs in frames.items()} == {"3001": ["f.png"], "3002": ["f.png"]}
    assert warnings == [
        "1 DICOM file of another modality than ultrasound left out (CT; e.g. 3001/ct.dcm: Modality CT), not "
        "predicted: remove them from the person folders, or export only the ultrasound series"
    ]
    with pytest.raises(UserError, match=r"holds no ultrasound frame, only DICOM of another modality .*ct.dcm: CT"):
        find_input_frames(tmp_path / "in" / "3001" / "ct.dcm", "auto")


# ---------------------------------------------------------------------------------------------
# 4. An output onto an input or onto a run's file
# ---------------------------------------------------------------------------------------------


def refused(main, argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def test_outputs_onto_an_input_or_a_runs_file_are_refused_before_writing(trained_run, data_dir, tmp_path, capsys):
    from carotid import evaluate, export, predict

    root, label = data_dir
    run = Path(trained_run)
    model, final = run / "models" / "best_model.pth", run / "models" / "final_model.pth"
    kept = {p: p.read_bytes() for p in (label, model, final, run / "metrics.csv")}
    base = ["--model", str(model), "--input", str(root), "--num-workers", "0"]
    assert refused(predict.main, [*base, "--out", str(label)], capsys) == (
        f"error: --out {label} exists and is not a .csv or .tsv or .txt file: writing there would overwrite it — "
        "pass a new file name ending in .csv"
    )
    assert refused(predict.main, [*base, "--out", str(model)], capsys) == (
        f"error: --out {model} is the model file (--model): writing there would overwrite it — pass another file name"
    )
    assert refused(predict.main, [*base, "--out", str(run / "metrics.csv")], capsys) == (
        f"error: --out {run / 'metrics.csv'} is a file of the run {run}: writing there would overwrite it — pass a "
        "file name outside the run folder (or a new name in it)"
    )
    exported = ["--model", str(model), "--format", "torchscript", "--out", str(final)]
    assert f"error: --out {final} is a file of the run {run}" in refused(export.main, exported, capsys)
    external = ["--model", str(model), "--root-dir", str(root), "--label-excel", str(label), "--out", str(run)]
    assert refused(evaluate.main, external, capsys) == (
        f"error: --out {run} is a run folder: its report and tables would be overwritten — pass a new folder (or "
        "leave the option out for the default)"
    )
    assert all(path.read_bytes() == data for path, data in kept.items()), "an input was overwritten"
    assert not list(tmp_path.iterdir()) and not (run / "models" / "best_model.pt").exists()


# ---------------------------------------------------------------------------------------------
# 10. FIFOs, devices and link loops named like frames: never opened
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def no_hang():
    """Fail, not hang, if anything blocks on a FIFO or reads /dev/zero for ever."""

    def stuck(*_):
        raise TimeoutError("blocked: a special file was opened")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def special_entries(folder: Path) -> list[str]:
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.dcm")
    os.symlink("/dev/urandom", folder / "IM0001")  # named by nothing: would be sniffed for a DICOM preamble
    os.symlink(folder / "loop.jpg", folder / "loop.jpg")  # a link to itself
    os.symlink(folder, folder / "series")  # a folder link back to its own folder
    return ["IM0001", "loop.jpg", "pipe.png", "zero.dcm"]


def test_fifos_devices_and_link_loops_are_skipped_named_and_never_opened(tmp_path, no_hang):
    persons = {str(1000 + k): "ab"[k % 2] for k in range(6)}
    root, label = tree(tmp_path, persons)
    names = special_entries(root / "1001")
    os.symlink(root / "1006", root / "1006")  # a person "folder" that is a link to itself, beside them
    manifest = collect(root, label)
    assert manifest.report["not_regular_files"] == {"count": 4, "first": [f"1001/{n}" for n in names]}
    (warning,) = [w for w in manifest.report["warnings"] if "not a regular file" in w]
    assert warning == (
        "4 entries named like frames but not a regular file skipped, never opened (e.g. 1001/IM0001, "
        "1001/loop.jpg, 1001/pipe.png): a named pipe, a device or a link that leads nowhere (a loop); replace each "
        "with the frame file it stands for, or remove it"
    )
    assert [rel for rel, _ in manifest.frames["1001"]] == ["1001/f0.png", "1001/f1.png", "1001/f2.png"]


def test_predict_input_with_special_files_skips_them_and_a_fifo_input_is_an_error(tmp_path, no_hang):
    person = tmp_path / "in" / "3001"
    frame(person / "f.png", seed=1)
    special_entries(person)
    os.mkfifo(tmp_path / "in" / "IM0002")  # beside the person folder: the layout check never opens it
    layout, frames, _, warnings = find_input_frames(tmp_path / "in", "auto")
    assert layout == "persons" and [Path(f).name for f, _ in frames["3001"]] == ["f.png"]
    assert any(w.startswith("4 entries named like frames but not a regular file skipped") for w in warnings)
    with pytest.raises(UserError, match="is not a regular file or a folder .*never read"):
        find_input_frames(tmp_path / "in" / "IM0002", "auto")


# ---------------------------------------------------------------------------------------------
# 12. `carotid-train … | head`: stdout closed
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--folds", "2"]], ids=["run", "cross-validation"])
def test_train_into_a_closed_pipe_exits_quietly_and_leaves_no_run_folder(tmp_path, extra):
    root, label = tree(tmp_path, {str(1000 + k): "ab"[k % 2] for k in range(12)})
    argv = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out"), *FAST]
    process = subprocess.Popen(
        module_command("carotid.train", *argv, "--epochs", "1", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    process.stdout.close()  # `| head` that has already stopped reading: the first line finds the pipe closed
    _, err = process.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipe" not in err and b"Exception ignored" not in err
    assert not list((tmp_path / "out").glob("*_2*")), "a run that could not start leaves no folder"
    assert process.returncode == 128 + signal.SIGPIPE


# ---------------------------------------------------------------------------------------------
# 14. A folder name in GBK bytes without a sheet row: every JSON stays JSON
# ---------------------------------------------------------------------------------------------


def test_every_json_of_a_run_is_valid_with_a_gbk_folder_name_beside_the_persons(tmp_path):
    root, label = tree(tmp_path, {str(1000 + k): "ab"[k % 2] for k in range(8)})
    gbk = "测试".encode("gbk")  # unzipped without -O GBK: the name's bytes are not UTF-8
    folder = os.path.join(os.fsencode(root), gbk)
    os.mkdir(folder)
    frame(Path(os.fsdecode(os.path.join(folder, b"f.png"))), seed=99)
    out = tmp_path / "out"
    argv = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), "--epochs", "1", *FAST]
    assert train_in_process(*argv) == 0
    (run,) = out.glob("train_*")
    written = list(run.rglob("*.json"))
    assert run / "data_report.json" in written and len(written) >= 3
    for path in written:
        json.loads(path.read_text(encoding="utf-8"))  # raises on a raw \x escape
    report = json.loads((run / "data_report.json").read_text(encoding="utf-8"))
    assert report["folders_without_label"]["first"] == ["\\xb2\\xe2\\xca\\xd4"]


# ---------------------------------------------------------------------------------------------
# 7, 8. One yes/no question spelled two ways; labels not decided yet
# ---------------------------------------------------------------------------------------------


def test_yes_no_spelled_two_ways_is_two_classes_with_the_spellings_named(tmp_path):
    answers = ["Y", "N", "Yes", "No", "Y", "N", "yes", "Y"]
    rows = [["patient_id", "plaque"]] + [[f"p{k}", a] for k, a in enumerate(answers)]
    table = read_labels(str(write_xlsx(tmp_path / "label.xlsx", rows)))
    assert table.class_names == ["N", "Y"] and table.positive_class == "Y"
    assert [table.labels[f"p{k}"] for k in range(8)] == ["Y", "N", "Y", "N", "Y", "N", "Y", "Y"]
    assert "labels 'Y' (3), 'Yes' (1), 'yes' (1) are one class 'Y' (they spell one yes/no answer)" in table.warnings
    assert "labels 'N' (2), 'No' (1) are one class 'N' (they spell one yes/no answer)" in table.warnings


def test_chinese_yes_no_spelled_three_ways_is_two_classes_with_the_spellings_named(tmp_path):
    answers = ["有", "无", "是", "否", "有", "无", "阳性", "阴性"]
    rows = [["患者编号", "斑块"]] + [[f"p{k}", a] for k, a in enumerate(answers)]
    table = read_labels(str(write_xlsx(tmp_path / "label.xlsx", rows)))
    assert table.class_names == ["无", "有"] and table.positive_class == "有"
    assert [table.labels[f"p{k}"] for k in range(8)] == ["有", "无"] * 4
    assert "labels '有' (2), '是' (1), '阳性' (1) are one class '有' (they spell one yes/no answer)" in table.warnings
    assert "labels '无' (2), '否' (1), '阴性' (1) are one class '无' (they spell one yes/no answer)" in table.warnings


def test_undecided_labels_leave_their_persons_out_and_the_study_binary(tmp_path):
    labels = ["plaque", "normal", "待定", "plaque", "pending", "normal", "复查", "recheck", "?", "N/A"]
    rows = [["patient_id", "label"]] + [[f"p{k}", label] for k, label in enumerate(labels)]
    table = read_labels(str(write_xlsx(tmp_path / "label.xlsx", rows)))
    assert table.class_names == ["normal", "plaque"] and sorted(table.labels) == ["p0", "p1", "p3", "p5"]
    (warning,) = [w for w in table.warnings if "undecided" in w]
    assert warning == (
        "4 person(s) have an undecided label ('待定' (1), 'pending' (1), '复查' (1), 'recheck' (1)): left out as "
        "unlabelled, not a class; give them their class in the sheet when it is decided"
    )
    # '?' and 'N/A' are missing-value marks, not undecided answers: blank, counted and said.
    assert "2 label cell(s) hold a missing-value mark ('?', 'N/A') and count as blank" in table.notes


# ---------------------------------------------------------------------------------------------
# 6. IDs that a spreadsheet would run as formulas
# ---------------------------------------------------------------------------------------------

HOSTILE_IDS = ["=HYPERLINK(1)", "@SUM(1)", "+cmd", "-2+3", "'=quoted", "-5"]


def test_csv_cells_that_would_run_as_formulas_are_text_and_read_back_unchanged(tmp_path):
    path = tmp_path / "t.csv"
    write_table(path, ["person_id", "=class"], [[v, 0.25] for v in HOSTILE_IDS] + [["\tTAB", -0.5]])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "person_id,'=class"
    assert lines[1:] == ["'=HYPERLINK(1),0.25", "'@SUM(1),0.25", "'+cmd,0.25", "'-2+3,0.25", "''=quoted,0.25",
                         "-5,0.25", "'\tTAB,-0.5"]  # fmt: skip
    assert [r["person_id"] for r in read_table(path)] == [*HOSTILE_IDS, "\tTAB"]
    assert list(read_table(path)[0]) == ["person_id", "=class"]


def test_predict_writes_formula_like_person_ids_as_text(trained_run, data_dir, tmp_path, capsys):
    from carotid import predict

    root, _ = data_dir
    persons = sorted(p for p in root.iterdir() if p.is_dir())[:2]
    for source, name in zip(persons, HOSTILE_IDS):
        shutil.copytree(source, tmp_path / "in" / name)
    out = tmp_path / "p.csv"
    model = str(Path(trained_run) / "models" / "best_model.pth")
    assert (
        predict.main(["--model", model, "--input", str(tmp_path / "in"), "--out", str(out), "--num-workers", "0"]) == 0
    )
    text = (tmp_path / "p_persons.csv").read_text(encoding="utf-8")
    assert "\n'=HYPERLINK(1)," in text and "\n'@SUM(1)," in text
    assert not any(line.startswith(("=", "@")) for line in text.splitlines())
    assert sorted(r["person_id"] for r in read_table(tmp_path / "p_persons.csv")) == ["=HYPERLINK(1)", "@SUM(1)"]


# ---------------------------------------------------------------------------------------------
# 9. predict on a folder with a person folder that holds no frames
# ---------------------------------------------------------------------------------------------


def test_predict_input_names_a_person_folder_without_frames(tmp_path):
    frame(tmp_path / "in" / "3001" / "f.png", seed=1)
    frame(tmp_path / "in" / "3002" / "f.png", seed=2)
    (tmp_path / "in" / "3003" / "series1").mkdir(parents=True)
    (tmp_path / "in" / "3003" / "notes.txt").write_text("scan postponed")
    layout, frames, _, warnings = find_input_frames(tmp_path / "in", "persons")
    assert sorted(frames) == ["3001", "3002"]
    assert warnings == [
        "1 person folder(s) hold no image and were not predicted (e.g. 3003/): put the person's frames in the folder"
    ]


# ---------------------------------------------------------------------------------------------
# 15. A full disk reported by safetensors (no errno): the same one line
# ---------------------------------------------------------------------------------------------


def test_a_full_disk_inside_safetensors_is_the_one_disk_full_error(tmp_path, capsys, monkeypatch):
    import accelerate.utils.other
    from safetensors import SafetensorError

    def full(*args, **kwargs):  # what safetensors raises with 100 KB to 3 MB free
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(accelerate.utils.other, "safe_save_file", full)
    root, label = tree(tmp_path, {str(1000 + k): "ab"[k % 2] for k in range(8)})
    out = tmp_path / "out"
    argv = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), "--epochs", "1", *FAST]
    assert train_in_process(*argv) == 2
    (run,) = out.glob("train_*")
    err = capsys.readouterr().err
    assert "Traceback" not in err and "SafetensorError" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: the disk holding {run} is full (No space left on device) — free space on it (df -h {run}), then "
        "start the run again (no checkpoint had been saved yet)"
    )


# ---------------------------------------------------------------------------------------------
# 19 (part). compare A A
# ---------------------------------------------------------------------------------------------


def test_compare_of_a_folder_with_itself_says_so(tmp_path, capsys):
    from carotid import compare

    folder = tmp_path / "eval_test_best"
    folder.mkdir()
    assert refused(compare.main, [str(folder), str(tmp_path / "." / "eval_test_best")], capsys) == (
        f"error: the same evaluation folder is given twice ({folder}): a model compared with itself differs by "
        "nothing — pass different evaluation folders (e.g. RUN_A/eval_test_best RUN_B/eval_test_best)"
    )
    assert sorted(tmp_path.iterdir()) == [folder]
