"""Building the decoded-frame cache (see `carotid.data.cache` for its layout and guarantees).

Owns the cache folder's name and lock, the index (the commit point) and the build: stale frames are
decoded in worker processes that pwrite into a new shard, which is fsynced and renamed before the index
is replaced atomically.
"""

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
from tqdm.auto import tqdm

from carotid.data.decode import load_frame
from carotid.data.discovery import Frame
from carotid.errors import UserError
from carotid.files import atomic_write_bytes

FORMAT, VERSION = "carotid-frame-cache", 1
DECODER = f"Pillow {PIL.__version__}"  # a new Pillow may resize differently: its frames are decoded afresh
INDEX, LOCK = "index.json", ".lock"
SHARD_BYTES = 1 << 30  # a build commits after each shard, so a kill loses at most this much work
CHUNK = 32  # frames per worker task: large enough to hide the task overhead, small enough for a smooth bar
SERIAL_BELOW = 2 * CHUNK  # smaller builds decode in-process: starting workers would cost more


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


def cache_folder(cache_dir: str | Path | None, root: str, image_size: int, in_channels: int) -> Path:
    """<cache_dir>/<root name>-<hash of the real root path>-<S>px-<C>ch."""
    real = os.path.realpath(root)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(real))[:40] or "root"
    digest = hashlib.sha1(real.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / f"{name}-{digest}-{image_size}px-{in_channels}ch"


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


def empty_index(image_size: int, in_channels: int) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "decoder": DECODER,
        "image_size": image_size,
        "in_channels": in_channels,
        "shards": {},
        "frames": {},
        "failed": {},
    }


def read_index(folder: Path, image_size: int, in_channels: int) -> dict:
    """The committed index; an empty one when there is none or it was written for another format or decoder."""
    try:
        index = json.loads((folder / INDEX).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return empty_index(image_size, in_channels)
    expected = empty_index(image_size, in_channels)
    if any(index.get(k) != expected[k] for k in ("format", "version", "decoder", "image_size", "in_channels")):
        return expected
    return index


def commit(folder: Path, index: dict) -> None:
    """Replace index.json atomically: the one moment a build becomes visible."""
    atomic_write_bytes(folder / INDEX, json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


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
    index["frames"] = {rel: v for rel, v in index["frames"].items() if v[0] in index["shards"]}


def stat_key(path: str) -> tuple[int, int]:
    """(size, mtime in ns) of a file, (-1, -1) when it is missing: a frame is stale when this changes."""
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1
    return st.st_size, st.st_mtime_ns


def stale(index: dict, rels: list[str], keys: list[tuple[int, int]]) -> list[int]:
    """Positions of the frames to decode: not cached, or cached (or failed) for another version of the file."""
    todo, seen = [], set()
    for i, (rel, key) in enumerate(zip(rels, keys)):
        hit, miss = index["frames"].get(rel), index["failed"].get(rel)
        if rel in seen or (hit is not None and tuple(hit[2:]) == key) or (miss is not None and tuple(miss[:2]) == key):
            continue
        seen.add(rel)
        todo.append(i)
    return todo


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


def decode_rows(
    shard: str, offset: int, start: int, paths: list[str], image_size: int, in_channels: int
) -> list[tuple[int, str]]:
    """Decode frames into rows start, start+1, … of a shard file; returns (row, reason) of the failures.

    pwrite, not a writable memmap: a full disk is then an OSError here instead of a SIGBUS."""
    failures = []
    fd = os.open(shard, os.O_WRONLY)
    try:
        for k, path in enumerate(paths):
            try:
                frame = load_frame(path, image_size, in_channels)
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
                failures.append((start + k, f"{type(err).__name__}: {err}"))
                continue
            os.pwrite(fd, frame.tobytes(), offset + (start + k) * frame.nbytes)
    finally:
        os.close(fd)
    return failures


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group: the parent stops the build and cleans up, workers just finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def decode_shard(
    pool: ProcessPoolExecutor | None,
    shard: Path,
    offset: int,
    paths: list[str],
    image_size: int,
    in_channels: int,
    bar: tqdm,
) -> dict[int, str]:
    """Fill a shard file, in the pool's processes when there is one; {row: reason} of the failures."""
    chunks = [(start, paths[start : start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    failures: dict[int, str] = {}
    if pool is None:
        for start, part in chunks:
            failures.update(decode_rows(str(shard), offset, start, part, image_size, in_channels))
            bar.update(len(part))
        return failures
    pending = {
        pool.submit(decode_rows, str(shard), offset, start, part, image_size, in_channels): len(part)
        for start, part in chunks
    }
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                failures.update(future.result())
                bar.update(pending.pop(future))
    finally:
        for future in pending:
            future.cancel()
    return failures


def write_shard(
    folder: Path, pool, paths: list[str], image_size: int, in_channels: int, bar: tqdm
) -> tuple[str, dict[int, str]]:
    """A new complete shard under its final name (temporary name, fsync, rename); (shard id, failures)."""
    shard = uuid.uuid4().hex[:12]
    tmp, final = folder / f".frames-{shard}.tmp.npy", shard_path(folder, shard)
    try:
        array = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), in_channels, image_size, image_size)
        )
        offset = array.offset
        del array  # workers write through their own file descriptors
        failures = decode_shard(pool, tmp, offset, paths, image_size, in_channels, bar)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return shard, failures


def check_space(folder: Path, frames: int, frame_bytes: int) -> None:
    """Fail before hours of decoding, not after, when the disk cannot hold the new frames."""
    needed, free = frames * frame_bytes, shutil.disk_usage(folder).free
    if needed > free:
        raise UserError(
            f"the frame cache needs {needed / 2**30:.1f} GiB more in {folder}, but {free / 2**30:.1f} GiB are free",
            "free some space or pass --cache-dir on a larger disk",
        )


def collect_garbage(folder: Path, index: dict) -> None:
    """Drop shards with no live frame and files no committed index names (an interrupted build's). Lock held."""
    live = Counter(v[0] for v in index["frames"].values())
    dead = [s for s in index["shards"] if not live[s]]
    if dead:
        for shard in dead:
            del index["shards"][shard]
        commit(folder, index)
    keep = {shard_path(folder, s).name for s in index["shards"]} | {INDEX, LOCK}
    for path in folder.iterdir():
        if path.name not in keep and (path.name.startswith(("frames-", ".frames-", f".{INDEX}.tmp"))):
            path.unlink(missing_ok=True)


def build(
    folder: Path,
    index: dict,
    paths: list[str],
    rels: list[str],
    keys: list[tuple[int, int]],
    image_size: int,
    in_channels: int,
    show_progress: bool,
) -> None:
    """Decode `paths` into new shards, committing the index after each, with all cores and a progress bar."""
    frame_bytes = in_channels * image_size * image_size
    check_space(folder, len(paths), frame_bytes)
    per_shard = max(1, SHARD_BYTES // frame_bytes)
    workers = min(cpu_count(), -(-len(paths) // CHUNK))
    pool = (
        ProcessPoolExecutor(workers, initializer=_ignore_sigint) if workers > 1 and len(paths) >= SERIAL_BELOW else None
    )
    try:
        with tqdm(
            total=len(paths),
            desc=f"caching frames ({image_size}px)",
            unit="frame",
            dynamic_ncols=True,
            disable=None if show_progress else True,
        ) as bar:
            for start in range(0, len(paths), per_shard):
                stop = min(start + per_shard, len(paths))
                shard, failures = write_shard(folder, pool, paths[start:stop], image_size, in_channels, bar)
                index["shards"][shard] = stop - start
                for row, i in enumerate(range(start, stop)):
                    if row in failures:
                        index["frames"].pop(rels[i], None)
                        index["failed"][rels[i]] = [*keys[i], failures[row]]
                    else:
                        index["failed"].pop(rels[i], None)
                        index["frames"][rels[i]] = [shard, row, *keys[i]]
                commit(folder, index)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def relative_paths(frames: list[Frame], root: str) -> list[str]:
    prefix = root if root.endswith(os.sep) else root + os.sep
    return [os.path.abspath(f.path)[len(prefix) :] for f in frames]


def update_cache(
    folder: Path, frames: list[Frame], rels: list[str], image_size: int, in_channels: int, show_progress: bool = True
) -> None:
    """Make the cache hold every frame of `frames` at its current size and mtime. One builder at a time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the frame cache folder {folder} ({err.strerror})", "pass a writable --cache-dir"
        ) from None
    with locked(folder, exclusive=True) as have_lock:
        index = read_index(folder, image_size, in_channels)
        check_shards(folder, index)
        paths = [f.path for f in frames]
        with ThreadPoolExecutor(16) as pool:  # threads hide file-system latency (NFS) for large datasets
            keys = list(pool.map(stat_key, paths, chunksize=256))
        todo = stale(index, rels, keys)
        if todo:
            try:
                build(
                    folder,
                    index,
                    [paths[i] for i in todo],
                    [rels[i] for i in todo],
                    [keys[i] for i in todo],
                    image_size,
                    in_channels,
                    show_progress,
                )
            except PermissionError as err:
                raise UserError(
                    f"cannot write the frame cache in {folder} ({err.strerror})", "pass a writable --cache-dir"
                ) from None
        if have_lock:  # without the lock a racing builder may own those files
            collect_garbage(folder, index)
