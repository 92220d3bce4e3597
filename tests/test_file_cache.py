"""carotid.data.folders.file_cache: a start on files an earlier start read opens none of them for their kind, and
the user sees the same frames and the same note; a file rewritten since, or a damaged cache, is read again."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from carotid.data.folders.readable import startup_lines
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from tests.conftest import make_data

CINE = get_testdata_file("examples_ybr_color.dcm")  # a JPEG-baseline ultrasound cine loop, 30 frames
LINKS = 2100  # enough files read for the start to keep what it read (file_cache.CACHE_MIN_FILES)
_opened: list | None = None  # the paths opened while a start runs (audit events), None between starts


def _record_open(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_record_open)  # a hook cannot be removed: it records only while _opened is a list


def start(root: Path, label: Path):
    """collect_persons as a run starts (no frame decoded: sample=0), and the frame files it opened, relative."""
    global _opened
    _opened = []
    try:
        manifest = collect_persons(str(root), read_labels(label), None, sample=0)
    finally:
        opened, _opened = _opened, None
    names = {os.path.relpath(p, root) if os.path.isabs(p) else p for p in opened}
    return manifest, {n for n in names if n.endswith((".png", ".jpg", ".dcm"))}


def test_a_second_start_reads_no_kind_again_and_a_png_rewritten_as_dicom_is_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    root, label = make_data(tmp_path / "data", persons=8, frames=2, size=32)
    folders = {p.name.split("_")[0]: p for p in root.iterdir() if p.is_dir()}
    shutil.copy(CINE, folders["1001"] / "cine_003.jpg")  # a cine loop named .jpg
    frame = next(folders["1003"].glob("*.png"))
    for k in range(LINKS):  # hard links: quick to make, each a file of its own name
        os.link(frame, folders["1003"] / f"link_{k:04d}.png")
    cine_frames = int(pydicom.dcmread(CINE, stop_before_pixels=True).NumberOfFrames)
    total = 8 * 2 + LINKS + cine_frames

    first, opened = start(root, label)
    assert len(first.frames["1001"]) == 2 + cine_frames and first.report["images_used"] == total
    assert len(opened) == 8 * 2 + LINKS + 1  # every file's first bytes
    note = startup_lines(first.report, in_channels=1)[-1]
    assert note.startswith("note: 1 file read by its content, not its name (e.g. 1001/cine_003.jpg is a DICOM file")

    again, opened = start(root, label)
    assert opened == {f"{folders['1001'].name}/cine_003.jpg"}  # only to count its frames: no kind read again
    assert again.frames == first.frames and again.report["files_read_by_content"] == first.report[
        "files_read_by_content"
    ]  # fmt: skip
    assert startup_lines(again.report, in_channels=1)[-1] == note

    # A PNG replaced by a DICOM cine loop under the same name (written in place: same inode, new size and mtime).
    rewritten = next(folders["1005"].glob("*.png"))
    shutil.copyfile(CINE, rewritten)
    third, opened = start(root, label)
    assert len(third.frames["1005"]) == 1 + cine_frames and third.report["images_used"] == total - 1 + cine_frames
    assert third.report["frames_by_kind"] == {"image": 8 * 2 + LINKS - 1, "dicom": 2 * cine_frames}
    paths = [entry["path"] for entry in third.report["files_read_by_content"]["first"]]
    assert paths == sorted([f"{folders['1001'].name}/cine_003.jpg", str(rewritten.relative_to(root))])
    assert startup_lines(third.report, in_channels=1)[-1].startswith("note: 2 files read by their content, not ")
    assert {name.split("/")[0] for name in opened} == {folders["1001"].name, folders["1005"].name}

    # A damaged cache file is ignored: every file is read again, and the user sees the same.
    (cache,) = (tmp_path / "user-cache" / "carotid" / "file-digests").glob("*.json")
    cache.write_text('{"version": 3, "root": ', encoding="utf-8")
    fourth, opened = start(root, label)
    assert len(opened) == 8 * 2 + LINKS + 1 and fourth.frames == third.frames
    assert fourth.report["files_read_by_content"] == third.report["files_read_by_content"]
