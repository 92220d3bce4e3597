"""Finding frames, the per-person cap, unreadable images, the person-level split, decoding."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from carotid.core.errors import UserError
from carotid.data.folders.discovery import discover_frames, spread_evenly
from carotid.data.frames.decode import load_frame
from carotid.data.frames.frame import Frame
from carotid.data.loaders import FrameDataset
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from carotid.data.split import split_persons
from tests.conftest import write_xlsx


def image(path, size=(40, 30), mode="L", value=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    array = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(array, mode=mode).save(path, format=fmt)
    return path


def test_discovery_is_recursive_case_insensitive_and_ignores_other_files(tmp_path):
    image(tmp_path / "p1" / "a.png")
    image(tmp_path / "p1" / "seq" / "deeper" / "b.JPG")
    image(tmp_path / "p1" / "c.TiFF", fmt="TIFF")
    image(tmp_path / "p1" / "d.bmp")
    image(tmp_path / "p1" / "e.jpeg")
    (tmp_path / "p1" / "notes.txt").write_text("not an image")
    (tmp_path / "p1" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "p1" / "._a.png").write_bytes(b"\0\5\26\7")  # macOS resource fork, not an image
    image(tmp_path / "p1" / ".hidden" / "x.png")
    image(tmp_path / "p2" / "z.png")
    (tmp_path / "empty_person").mkdir()
    image(tmp_path / "loose.png")  # not in a person folder
    found = discover_frames(tmp_path)
    assert found == {
        "p1": ["p1/a.png", "p1/c.TiFF", "p1/d.bmp", "p1/e.jpeg", "p1/seq/deeper/b.JPG"],
        "p2": ["p2/z.png"],
        "empty_person": [],
    }


def test_discovery_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="root dir not found"):
        discover_frames(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        discover_frames(tmp_path / "file")
    image(tmp_path / "flat" / "a.png")
    with pytest.raises(UserError, match="no person folders .*1 images directly"):
        discover_frames(tmp_path / "flat")


def test_spread_evenly_keeps_n_frames_over_the_whole_sequence():
    frames = [f"f{i:02d}" for i in range(10)]
    assert spread_evenly(frames, 3) == ["f01", "f05", "f08"]
    assert (
        spread_evenly(frames, 10) == frames
        and spread_evenly(frames, 50) == frames
        and spread_evenly(frames, None) == frames
    )
    picked = spread_evenly([f"f{i:04d}" for i in range(1000)], 7)
    assert len(set(picked)) == 7 and picked == sorted(picked)
    assert picked[0] < "f0100" and picked[-1] > "f0900"  # not the first 7


def make_tree(tmp_path, persons: dict[str, tuple[str, int]]):
    for i, (person, (_, n)) in enumerate(persons.items()):
        for k in range(n):  # distinct pixels per person: one frame in 3 folders would be boilerplate
            image(tmp_path / "root" / person / f"frame_{k:03d}.png", value=k * 10 + 3 * i)
    rows = [["patient_id", "label"]] + [[p, c] for p, (c, _) in persons.items()]
    return tmp_path / "root", read_labels(write_xlsx(tmp_path / "label.xlsx", rows))


def test_collect_persons_caps_reports_and_skips_unreadable(tmp_path):
    root, table = make_tree(tmp_path, {"a": ("n", 6), "b": ("p", 3), "c": ("n", 2)})
    (root / "b" / "frame_001.png").write_bytes(b"truncated garbage")
    image(tmp_path / "root" / "stranger" / "x.png")
    rows = [["patient_id", "label"], ["a", "n"], ["b", "p"], ["c", "n"], ["ghost", "p"]]
    table = read_labels(write_xlsx(tmp_path / "label.xlsx", rows))
    manifest = collect_persons(str(root), table, max_imgs_per_person=3)
    assert "1 unreadable image skipped (listed in data_report.json)" in manifest.report["warnings"]
    assert manifest.frames["a"] == [("a/frame_001.png", 0), ("a/frame_003.png", 0), ("a/frame_005.png", 0)]
    assert manifest.frames["b"] == [("b/frame_000.png", 0), ("b/frame_002.png", 0)]
    assert manifest.report["unreadable_images"][0] | {"reason": ""} == {
        "path": "b/frame_001.png",
        "frame": 0,
        "reason": "",
        "found_at": "start-up check",
    }
    assert manifest.report["persons_without_folder"] == {"count": 1, "first": ["ghost"]}
    assert manifest.report["folders_without_label"] == {"count": 1, "first": ["stranger"]}
    assert manifest.person_labels == {"a": 0, "b": 1, "c": 0}
    json.dumps(manifest.report)  # the report is written as data_report.json


def test_a_person_whose_images_are_all_unreadable_is_an_error(tmp_path):
    root, table = make_tree(tmp_path, {"a": ("n", 2), "b": ("p", 2)})
    for f in (root / "b").iterdir():
        f.write_bytes(b"not an image")
    with pytest.raises(UserError, match="person 'b': all 2 images are unreadable"):
        collect_persons(str(root), table, None)


def test_no_overlap_between_sheet_and_folders_is_an_error(tmp_path):
    root, _ = make_tree(tmp_path, {"a": ("n", 1), "b": ("p", 1)})
    table = read_labels(write_xlsx(tmp_path / "other.xlsx", [["id", "label"], ["x", "n"], ["y", "p"]]))
    with pytest.raises(UserError, match="none of the 2 person IDs"):
        collect_persons(str(root), table, None)


def labels_of(counts: dict[int, int]) -> dict[str, int]:
    return {f"p{c}_{i:03d}": c for c, n in counts.items() for i in range(n)}


def test_split_is_disjoint_complete_stratified_and_reproducible():
    labels = labels_of({0: 60, 1: 40})
    splits, notes = split_persons(labels, 0.5, 0.3, 0.2, seed=7)
    assert notes == []
    assert not (
        set(splits["train"]) & set(splits["val"])
        or set(splits["train"]) & set(splits["test"])
        or set(splits["val"]) & set(splits["test"])
    )
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(labels)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [50, 30, 20]
    for split, n in (("train", 50), ("val", 30), ("test", 20)):
        share = Counter(labels[p] for p in splits[split])[1] / n
        assert abs(share - 0.4) <= 0.05, (split, share)
    assert split_persons(labels, 0.5, 0.3, 0.2, seed=7)[0] == splits
    assert split_persons(labels, 0.5, 0.3, 0.2, seed=8)[0] != splits


def test_split_with_zero_val_or_test_and_too_few_persons():
    labels = labels_of({0: 5, 1: 5})
    splits, _ = split_persons(labels, 0.8, 0.0, 0.2, seed=0)
    assert splits["val"] == [] and len(splits["test"]) == 2
    splits, _ = split_persons(labels, 1.0, 0.0, 0.0, seed=0)
    assert len(splits["train"]) == 10
    with pytest.raises(UserError, match="too few"):
        split_persons(labels_of({0: 1, 1: 1}), 0.4, 0.3, 0.3, seed=0)


def test_split_falls_back_to_random_when_a_class_is_too_small():
    labels = labels_of({0: 20, 1: 1})
    splits, notes = split_persons(labels, 0.6, 0.2, 0.2, seed=0)
    assert notes and "not stratified" in notes[0]
    assert sorted(sum(splits.values(), [])) == sorted(labels)


def test_load_frame_gray_rgb_and_16_bit(tmp_path):
    gray = load_frame(str(image(tmp_path / "g.png", size=(80, 60))), 32, 1)
    assert gray.shape == (1, 32, 32) and gray.dtype == np.uint8 and gray.flags.writeable
    rgb = load_frame(str(image(tmp_path / "c.jpg", size=(80, 60), mode="RGB")), 32, 3)
    assert rgb.shape == (3, 32, 32)
    replicated = load_frame(str(image(tmp_path / "g2.png", value=100)), 16, 3, resize="stretch")
    assert (replicated == 100).all()  # a gray frame read as RGB repeats the gray value
    deep = tmp_path / "deep.png"
    Image.fromarray(np.tile(np.linspace(0, 65535, 40).astype(np.uint16), (30, 1))).save(deep)
    assert abs(int(load_frame(str(deep), 16, 1, resize="stretch").mean()) - 127) <= 2  # scaled, not clipped


def test_dataset_flags_a_frame_that_cannot_be_decoded(tmp_path):
    good = image(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(good.read_bytes()[:60])  # a valid header, truncated data
    dataset = FrameDataset([Frame(str(good), "a", 0), Frame(str(bad), "b", 1)], 32, 1)
    frame, label, index, ok = dataset[0]
    assert ok and frame.shape == (1, 32, 32) and (label, index) == (0, 0)
    frame, label, index, ok = dataset[1]
    assert not ok and frame.sum() == 0 and (label, index) == (1, 1)
