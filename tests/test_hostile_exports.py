"""Hostile but realistic hospital exports, round 4 (issue 32): boilerplate files in every folder, nested person
folders, non-ultrasound DICOMs, outputs onto inputs, FIFOs and loops, names that are not UTF-8 in JSON. Each test
builds the real input in tmp_path and checks what a user would see."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carotid.core.errors import UserError
from carotid.data.labels import read_labels
from carotid.data.manifest import collect_persons
from carotid.data.split import cv_splits, person_groups, split_persons
from tests.conftest import write_xlsx


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
