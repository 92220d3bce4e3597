"""The decoded-frame cache: exact pixels, rebuilds after changes, interrupted and racing builds, a 2-process run."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from PIL import Image
from torch.utils.data import default_collate

from carotid.data.cache import dataset as cache
from carotid.data.cache import index as cache_index
from carotid.data.frames.decode import load_frame
from carotid.data.loaders import FrameDataset
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from tests.conftest import FAST, make_data, only_run_dir, run_module, subprocess_env


def items_of(root: Path, label: Path, sample: int = 64) -> list:
    return collect_persons(str(root), read_labels(str(label)), None, sample=sample).frames_of()


def add_jpegs(root: Path, seed: int = 0) -> None:
    """One 120x90 JPEG per person beside the PNGs (big enough that Pillow's draft mode reduces it)."""
    rng = np.random.default_rng(seed)
    for person in sorted(p for p in root.iterdir() if p.is_dir()):
        pixels = rng.integers(0, 256, (90, 120), dtype=np.uint8)
        Image.fromarray(pixels, mode="L").save(person / "extra.jpg", quality=85)


def index_of(folder: Path) -> dict:
    return json.loads((folder / cache_index.INDEX).read_text(encoding="utf-8"))


@pytest.fixture()
def data(tmp_path) -> tuple[Path, Path]:
    root, label = make_data(tmp_path / "frames", persons=4, frames=3)
    add_jpegs(root)
    return root, label


@pytest.mark.parametrize("in_channels", [1, 3])
def test_cached_frames_equal_the_uncached_path(tmp_path, data, in_channels):
    items = items_of(*data)
    assert {Path(f.path).suffix for f in items} == {".png", ".jpg"}
    cached = cache.cached_dataset(items, 32, in_channels, cache_dir=tmp_path / "cache")
    uncached = FrameDataset(items, 32, in_channels)
    assert (cached.paths, cached.labels, cached.person_ids) == (uncached.paths, uncached.labels, uncached.person_ids)
    for i in range(len(uncached)):
        frame, label, index, readable = cached[i]
        expected = uncached[i]
        assert frame.dtype == torch.uint8 and torch.equal(frame, expected[0])
        assert (label, index, readable) == expected[1:] == (uncached.labels[i], i, True)
    batch = [5, 0, len(items) - 1, 3]
    from_cache = cache.collate_frames(cached.__getitems__(batch))
    from_files = default_collate([uncached[i] for i in batch])
    for ours, theirs in zip(from_cache, from_files):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(default_collate(cached.__getitems__(batch)), from_files))


def test_default_cache_dir_is_per_user_and_keyed(tmp_path, data, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    items = items_of(*data)
    small = cache.cached_dataset(items, 32, 1)
    one_person = cache.cached_dataset([it for it in items if it.person_id == items[0].person_id], 32, 1)
    larger = cache.cached_dataset(items, 40, 1)
    assert small.folder.parent == tmp_path / "xdg" / "carotid"
    assert one_person.folder == small.folder  # a one-person split still maps to its dataset's cache
    assert larger.folder != small.folder and larger.folder.name.endswith("-40px-1ch")


def test_changed_files_are_decoded_again_and_unchanged_ones_reused(tmp_path, data):
    root, label = data
    items = items_of(root, label)
    first = cache.cached_dataset(items, 32, 1, cache_dir=tmp_path / "cache")
    before = index_of(first.folder)["frames"]
    edited, touched = Path(items[0].path), Path(items[1].path)
    Image.fromarray(np.full((36, 48), 200, dtype=np.uint8), mode="L").save(edited)  # new content (and mtime)
    stamp = touched.stat()
    os.utime(touched, ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 5_000_000_000))  # same bytes, newer mtime
    again = cache.cached_dataset(items, 32, 1, cache_dir=tmp_path / "cache")
    after = index_of(again.folder)["frames"]
    assert torch.equal(again[0][0], torch.from_numpy(load_frame(str(edited), 32, 1)))
    assert int(again[0][0][:, 4:28].float().mean()) == 200  # letterboxed: 48x36 → 32x24 between black bands
    rel = [f.path[len(str(root)) + 1 :] for f in items]
    assert after[rel[0]]["0"][0] == after[rel[1]]["0"][0] != before[rel[0]]["0"][0]  # both decoded again, new shard
    assert all(after[r] == before[r] for r in rel[2:])  # the rest reused as they were
    for i in range(len(items)):
        assert torch.equal(again[i][0], FrameDataset(items, 32, 1)[i][0])


def test_frames_that_fail_to_decode_are_left_out_aligned(tmp_path, data):
    root, label = data
    broken = root / sorted(p.name for p in root.iterdir() if p.is_dir())[1] / "extra.jpg"
    jpeg = broken.read_bytes()
    broken.write_bytes(jpeg[: jpeg.index(b"\xff\xda") + 40])  # the header still opens; the pixels are gone
    items = items_of(root, label, sample=0)  # as in a large dataset, where the start-up sample missed it
    assert str(broken) in {f.path for f in items}
    with pytest.warns(UserWarning, match="1 frame.*could not be decoded"):
        cached = cache.cached_dataset(items, 32, 1, cache_dir=tmp_path / "cache")
    kept = [it for it in items if it.path != str(broken)]
    assert len(cached) == len(kept) and list(cached.excluded) == [(str(broken), 0)]
    assert cached.frames == kept
    assert (cached.paths, cached.labels, cached.person_ids) == (
        [f.path for f in kept],
        [f.label for f in kept],
        [f.person_id for f in kept],
    )
    for i, path in enumerate(f.path for f in kept):
        assert torch.equal(cached[i][0], torch.from_numpy(load_frame(path, 32, 1)))
    with pytest.warns(UserWarning):  # the failure is remembered: not decoded again while the file is unchanged
        cache.cached_dataset(items, 32, 1, cache_dir=tmp_path / "cache")
    assert len(index_of(cached.folder)["shards"]) == 1


SLOW_BUILD = """
import sys, time
from carotid.data import loaders, manifest
from carotid.data.cache import build as cache_build
from carotid.data.cache import dataset as cache
from carotid.data.sheet.labels import read_labels
cache_build.SHARD_BYTES = 4 * 32 * 32  # commit every 4 frames
decode = cache_build.decode_frames
def slow(path, indices, prep):
    time.sleep(0.15 * len(indices))
    return decode(path, indices, prep)
cache_build.decode_frames = slow
items = manifest.collect_persons(sys.argv[1], read_labels(sys.argv[2]), None).frames_of()
cache.cached_dataset(items, 32, 1, cache_dir=sys.argv[3])
"""


def test_a_killed_build_is_never_used_and_its_committed_shards_are_kept(tmp_path, data):
    root, label = data
    command = [sys.executable, "-c", SLOW_BUILD, str(root), str(label), str(tmp_path / "cache")]
    build = subprocess.Popen(command, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and build.poll() is None:
            folders = list((tmp_path / "cache").glob("*"))
            if folders and (folders[0] / cache_index.INDEX).exists() and list(folders[0].glob(".frames-*.tmp.npy")):
                break
            time.sleep(0.02)
        assert build.poll() is None, build.stderr.read()[-2000:]
        build.send_signal(signal.SIGKILL)  # mid-way: one shard committed, the next half written
    finally:
        build.kill()
        build.wait()
    folder = folders[0]
    committed = index_of(folder)
    items = items_of(root, label)
    assert 0 < len(committed["frames"]) < len(items)
    assert list(folder.glob(".frames-*.tmp.npy"))
    cached = cache.cached_dataset(items, 32, 1, cache_dir=tmp_path / "cache")
    final = index_of(folder)
    assert all(final["frames"][rel] == where for rel, where in committed["frames"].items())  # reused, not redone
    assert not list(folder.glob(".*tmp*"))  # the half-written shard is gone
    assert sorted(p.name for p in folder.glob("frames-*.npy")) == sorted(f"frames-{s}.npy" for s in final["shards"])
    for i in range(len(items)):
        assert torch.equal(cached[i][0], FrameDataset(items, 32, 1)[i][0])


def _build_in_child(items, cache_dir, barrier, results) -> None:
    barrier.wait()
    results.put(len(cache.cached_dataset(items, 32, 1, cache_dir=cache_dir)))


def test_racing_builders_build_once(tmp_path, data):
    items = items_of(*data)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    children = [
        context.Process(target=_build_in_child, args=(items, tmp_path / "cache", barrier, results)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [c.exitcode for c in children] == [0, 0]
    assert [results.get(timeout=5) for _ in children] == [len(items)] * 2
    (folder,) = (tmp_path / "cache").iterdir()
    assert len(index_of(folder)["shards"]) == 1 and len(list(folder.glob("frames-*.npy"))) == 1


def test_evaluation_is_identical_cached_and_uncached(tmp_path, data):
    from carotid.core.predict import predict_loader
    from carotid.data.frames.transforms import NORMALIZATION, eval_preset
    from carotid.data.loaders import frame_dataset, make_loader
    from carotid.model.registry import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1).eval()
    preset = eval_preset(**NORMALIZATION[1])
    accelerator = Accelerator(cpu=True)
    items = items_of(*data)
    outputs = []
    for use_cache in (False, True):
        dataset = frame_dataset(
            items, 32, 1, cache=use_cache, cache_dir=str(tmp_path / "cache"), accelerator=accelerator
        )
        loader = accelerator.prepare(make_loader(dataset, 4, train=False, num_workers=0, seed=0))
        outputs.append(predict_loader(model, loader, accelerator, preset))
    plain, cached = outputs
    assert len(cached["probs"]) == len(items)
    for key in plain:
        np.testing.assert_array_equal(cached[key], plain[key])


@pytest.mark.slow
def test_two_ranks_build_one_cache_in_a_real_launch(tmp_path):
    root, label = make_data(tmp_path / "frames", persons=8, frames=4)
    cache_dir = tmp_path / "cache"
    result = run_module(
        "carotid.train",
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp_path / "out"),
        "--epochs",
        "1",
        "--cache",
        "--cache-dir",
        str(cache_dir),
        *FAST,
        nproc=2,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "out")
    assert (run_dir / "models" / "final_model.pth").exists() and (run_dir / "eval_test_best" / "metrics.json").exists()
    (folder,) = cache_dir.iterdir()
    index = index_of(folder)
    assert len(index["frames"]) == 8 * 4 and not index["failed"]
    assert sorted(p.name for p in folder.iterdir() if p.name != cache_index.LOCK) == sorted(
        [cache_index.INDEX] + [f"frames-{s}.npy" for s in index["shards"]]
    )  # no temporary or duplicate shard
    assert len(index["shards"]) <= 3  # at most one build per split (train, val, test), none repeated by rank 1
    items = items_of(root, label)
    reopened = cache.cached_dataset(items, 32, 1, cache_dir=cache_dir)
    assert len(index_of(folder)["shards"]) == len(index["shards"])  # nothing left to build
    for i in range(len(items)):
        assert torch.equal(reopened[i][0], FrameDataset(items, 32, 1)[i][0])
