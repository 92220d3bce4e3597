"""Where the decoded-frame cache lives and what it holds (see `carotid.data.cache.dataset` for its guarantees).

Owns the cache folder's name and lock, and the index: `index.json` names every cached frame's shard and
row with the size and mtime of the file it came from, and replacing it atomically is a build's commit point.
"""

import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_bytes
from carotid.data.frames.decode import DECODE_VERSION
from carotid.data.frames.frame import Frame
from carotid.data.frames.preprocessing import Preprocessing

FORMAT, VERSION = "carotid-frame-cache", 2  # 2: frames keyed by file and frame number, with their flags


def _versions(*packages: str) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} -")
    return ", ".join(found)


# A new decoder (Pillow's resize, pydicom's colour conversion, a new carotid decode) may give other pixels:
# its frames are decoded afresh.
DECODER = f"carotid decode {DECODE_VERSION}; " + _versions("pillow", "pydicom", "av", "pylibjpeg")
INDEX, LOCK = "index.json", ".lock"


# ---------------------------------------------------------------------------------------------
# Where the cache lives
# ---------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """The per-user cache folder (XDG convention), so runs of one user share their caches."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "carotid"


def dataset_root(frames: list[Frame]) -> str:
    """The folder that holds the person folders; a split of one person still maps to the dataset's root."""
    root = os.path.commonpath(list({os.path.dirname(os.path.abspath(f.path)) for f in frames}))
    persons = {f.person_id for f in frames}
    if len(persons) == 1:
        folder = Path(root)
        while folder.name.strip() != next(iter(persons)) and folder != folder.parent:
            folder = folder.parent
        if folder != folder.parent:
            root = str(folder.parent)
    return root


def cache_folder(cache_dir: str | Path | None, root: str, prep: Preprocessing) -> Path:
    """<cache_dir>/<root name>-<hash of the real root path>-<resize>-<crop>-<S>px-<C>ch."""
    real = os.path.realpath(root)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(real))[:40] or "root"
    digest = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    folder = f"{name}-{digest}-{prep.tag()}-{prep.image_size}px-{prep.in_channels}ch"
    return Path(cache_dir or default_cache_dir()) / folder


@contextmanager
def locked(folder: Path, exclusive: bool):
    """Hold folder/.lock; yields False where it cannot be taken (read-only folder, no flock on the mount)."""
    try:
        handle = open(folder / LOCK, "a+b")
    except OSError:
        yield False
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------


IDENTITY = ("format", "version", "decoder", "image_size", "in_channels", "resize", "crop")


def empty_index(prep: Preprocessing) -> dict:
    """frames: {file: {frame number: [shard, row, size, mtime, flags]}}; failed: {file: {frame: [size, mtime,
    reason]}} (frame numbers as strings: JSON keys)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "decoder": DECODER,
        "image_size": prep.image_size,
        "in_channels": prep.in_channels,
        "resize": prep.resize,
        "crop": prep.crop,
        "shards": {},
        "frames": {},
        "failed": {},
    }


def read_index(folder: Path, prep: Preprocessing) -> dict:
    """The committed index; an empty one when there is none or it was written for another format or decoder."""
    expected = empty_index(prep)
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return expected
    if any(index.get(k) != expected[k] for k in IDENTITY):
        return expected
    return index


def commit(folder: Path, index: dict) -> None:
    """Replace index.json atomically: the one moment a build becomes visible."""
    # ASCII with \\u escapes: a file name that is not UTF-8 (lone surrogates) is written and read back alike.
    atomic_write_bytes(folder / INDEX, json.dumps(index, separators=(",", ":"), ensure_ascii=True).encode("ascii"))


def shard_path(folder: Path, shard: str) -> Path:
    return folder / f"frames-{shard}.npy"


def check_shards(folder: Path, index: dict) -> None:
    """Forget shards that are missing or of the wrong shape (deleted or damaged by hand)."""
    frame_shape = (index["in_channels"], index["image_size"], index["image_size"])
    for shard, rows in list(index["shards"].items()):
        try:
            array = np.load(shard_path(folder, shard), mmap_mode="r")
            ok = array.dtype == np.uint8 and array.shape == (rows, *frame_shape)
        except (OSError, ValueError):
            ok = False
        if not ok:
            del index["shards"][shard]
    kept = {}
    for rel, frames in index["frames"].items():
        frames = {k: v for k, v in frames.items() if v[0] in index["shards"]}
        if frames:
            kept[rel] = frames
    index["frames"] = kept


def stat_key(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file, (-1, -1) when it is missing: a frame is stale when this changes."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def lookup(index: dict, section: str, rel: str, frame: int):
    return index[section].get(rel, {}).get(str(frame))


def stale(index: dict, frames: list[Frame], rels: list[str], keys: dict[str, tuple[int, int]]) -> list[int]:
    """Positions of the frames to decode: not cached, or cached (or failed) for another version of the file."""
    todo, seen = [], set()
    for i, (frame, rel) in enumerate(zip(frames, rels)):
        key, at = keys[rel], (rel, frame.index)
        hit, miss = lookup(index, "frames", rel, frame.index), lookup(index, "failed", rel, frame.index)
        if at in seen or (hit is not None and tuple(hit[2:4]) == key) or (miss is not None and tuple(miss[:2]) == key):
            continue
        seen.add(at)
        todo.append(i)
    return todo
