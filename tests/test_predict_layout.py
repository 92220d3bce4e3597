"""carotid-predict never merges persons by a guess (issue 10), and Ctrl-C before training is one line.

The model file is a real carotid model file (small_cnn, 32 px) written by tests/test_errors.write_model_file;
the folders are real PNG trees in tmp_path.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image

from carotid import predict
from carotid.core.errors import INTERRUPTED, INTERRUPTED_LATE
from tests.conftest import subprocess_env
from tests.test_errors import write_model_file

QUICK = ["--num-workers", "0", "--batch-size", "8"]


def frames(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        Image.fromarray(np.full((24, 32), 30 * k, np.uint8)).save(folder / f"f{k}.png")
    return folder


def persons_csv(out: Path) -> list[dict]:
    with out.with_name(f"{out.stem}_persons.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(write_model_file(tmp_path_factory.mktemp("model") / "model.pth"))


def run(model: str, source: Path, out: Path, *extra: str) -> int:
    return predict.main(["--model", model, "--input", str(source), "--out", str(out), *QUICK, *extra])


def test_a_stray_image_beside_person_folders_is_an_error_not_one_merged_person(model, tmp_path, capsys):
    for person in ("1001", "1002", "1003"):
        frames(tmp_path / "root" / person)
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(tmp_path / "root" / "screenshot.png")
    out = tmp_path / "p.csv"
    assert run(model, tmp_path / "root", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "screenshot.png" in err and "--layout persons" in err
    assert not out.exists()
    assert run(model, tmp_path / "root", out, "--layout", "persons") == 0
    assert [r["person_id"] for r in persons_csv(out)] == ["1001", "1002", "1003"]
    assert "warning: 1 image(s) directly in" in capsys.readouterr().out


def test_a_class_folder_tree_is_an_error_not_one_person_per_class(model, tmp_path, capsys):
    for label, person in (("normal", "1001"), ("normal", "1002"), ("plaque", "1003")):
        frames(tmp_path / "DATA" / label / person)
    assert run(model, tmp_path / "DATA", tmp_path / "p.csv") == 2
    err = capsys.readouterr().err
    assert "only folders of images" in err and "DATA/<class>/<id>/" in err and "--layout persons" in err
    assert run(model, tmp_path / "DATA" / "normal", tmp_path / "n.csv") == 0  # one class folder: its persons
    assert [r["person_id"] for r in persons_csv(tmp_path / "n.csv")] == ["1001", "1002"]


def test_person_folders_with_sequence_subfolders_are_persons(model, tmp_path):
    frames(tmp_path / "root" / "1001")
    frames(tmp_path / "root" / "1002" / "seq1")  # exports keep some persons' frames one level down
    assert run(model, tmp_path / "root", tmp_path / "p.csv") == 0
    assert [(r["person_id"], r["n_frames"]) for r in persons_csv(tmp_path / "p.csv")] == [("1001", "2"), ("1002", "2")]


def test_a_single_image_file_is_one_prediction(model, tmp_path, capsys):
    image = frames(tmp_path / "scans", 1) / "f0.png"
    out = tmp_path / "one.csv"
    assert run(model, image, out) == 0
    assert [r["person_id"] for r in persons_csv(out)] == ["f0.png"]
    assert "layout: images" in capsys.readouterr().out
    (tmp_path / "notes.txt").write_text("x")
    assert run(model, tmp_path / "notes.txt", out) == 2


def test_layout_images_predicts_each_image_on_its_own(model, tmp_path):
    frames(tmp_path / "mixed", 3)
    out = tmp_path / "i.csv"
    assert run(model, tmp_path / "mixed", out, "--layout", "images") == 0
    assert [r["person_id"] for r in persons_csv(out)] == ["f0.png", "f1.png", "f2.png"]


# ---------------------------------------------------------------------------------------------
# Ctrl-C before training starts
# ---------------------------------------------------------------------------------------------


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == str(path) for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="watches /proc to interrupt during label reading")
def test_ctrl_c_while_reading_labels_is_one_line_exit_130_and_no_run_dir(tmp_path):
    label = tmp_path / "label.xlsx"
    workbook = openpyxl.Workbook()
    workbook.active.append(["ID", "label"])
    for i in range(60_000):  # a sheet that takes a few seconds to read
        workbook.active.append([i, ("normal", "plaque")[i % 2], f"note {i}"])
    workbook.save(label)
    frames(tmp_path / "root" / "1")
    out = tmp_path / "out"
    argv = ["--root-dir", str(tmp_path / "root"), "--label-excel", str(label), "--output-dir", str(out)]
    job = subprocess.Popen(
        [sys.executable, "-m", "carotid.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    deadline = time.monotonic() + 120
    while not _holds_open(job.pid, label) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130 and err.strip() == INTERRUPTED, err
    assert not out.exists() or list(out.iterdir()) == []


def test_ctrl_c_while_starting_up_is_one_line_too(tmp_path):
    job = subprocess.Popen(
        [sys.executable, "-m", "carotid.train", "--demo", "--output-dir", str(tmp_path / "out")],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
    )
    time.sleep(1.0)  # torch (3-9 s) is still being imported
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 130 and err.strip() == INTERRUPTED, err


SWALLOWED = """
import os, signal, sys
from carotid.core.errors import quiet_ctrl_c_until_run, run_cli
quiet_ctrl_c_until_run()
class Finalised:  # as zipfile.ZipFile.__del__ when openpyxl's archive is collected
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(1000))  # the handler runs here, inside __del__, where Python drops its KeyboardInterrupt
def main(argv):
    del_me = Finalised()
    del del_me
    print("went on")
    return 0
sys.exit(run_cli(main, []))
"""


def test_a_ctrl_c_that_a_finaliser_swallows_still_ends_with_status_130():
    job = subprocess.run([sys.executable, "-c", SWALLOWED], capture_output=True, text=True, env=subprocess_env())
    assert "went on" in job.stdout  # Python itself loses the KeyboardInterrupt raised inside __del__
    assert job.returncode == 130 and err_lines(job.stderr)[-1] == INTERRUPTED_LATE, job.stderr


def test_a_swallowed_ctrl_c_before_training_stops_it_at_the_first_step(monkeypatch):
    from carotid.core import errors
    from carotid.core.runtime import StopSignal

    monkeypatch.setitem(errors._pending, "interrupt", True)
    with StopSignal() as stop:
        assert stop.requested and stop.name == "SIGINT"  # the Trainer checkpoints and stops before epoch 1


def err_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
