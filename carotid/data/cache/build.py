"""Building the decoded-frame cache (see `carotid.data.cache.dataset` for its layout and guarantees).

Owns the build (the folder, lock and index are `carotid.data.cache.index`): stale frames are
decoded in worker processes that pwrite into a new shard, which is fsynced and renamed before the index
is replaced atomically. A worker task is whole files, so a cine loop is read once for all its frames.
"""

import os
import shutil
import signal
import uuid
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from carotid.core.errors import UserError
from carotid.data.cache.index import (
    INDEX,
    LOCK,
    check_shards,
    commit,
    locked,
    read_index,
    shard_path,
    stale,
    stat_key,
)
from carotid.data.frames.decode import decode_frames
from carotid.data.frames.frame import Frame
from carotid.data.frames.preprocessing import Preprocessing

SHARD_BYTES = 1 << 30  # a build commits after each shard, so a kill loses at most this much work
CHUNK = 32  # frames per worker task: large enough to hide the task overhead, small enough for a smooth bar
SERIAL_BELOW = 2 * CHUNK  # smaller builds decode in-process: starting workers would cost more


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------


Task = tuple[str, list[int], list[int]]  # (file, its frame numbers, the shard rows they go to)


def decode_rows(shard: str, offset: int, tasks: list[Task], prep: Preprocessing) -> dict[int, int | str]:
    """Decode whole files into their rows of a shard file; {row: flags, or the reason it failed}.

    Each file is read once for all of its frames. pwrite, not a writable memmap: a full disk is then an
    OSError here instead of a SIGBUS."""
    outcome: dict[int, int | str] = {}
    fd = os.open(shard, os.O_WRONLY)
    try:
        for path, indices, rows in tasks:
            for row, result in zip(rows, decode_frames(path, indices, prep)):
                if isinstance(result, str):
                    outcome[row] = result
                    continue
                pixels, flags = result
                os.pwrite(fd, pixels.tobytes(), offset + row * pixels.nbytes)
                outcome[row] = flags
    finally:
        os.close(fd)
    return outcome


def file_tasks(paths: list[str], indices: list[int]) -> list[tuple[Task, int]]:
    """The rows 0..n-1 grouped by file (a file's frames are adjacent after sorting), as (task, frames)."""
    tasks: list[tuple[Task, int]] = []
    for row, (path, index) in enumerate(zip(paths, indices)):
        if tasks and tasks[-1][0][0] == path:
            tasks[-1][0][1].append(index)
            tasks[-1][0][2].append(row)
            tasks[-1] = (tasks[-1][0], tasks[-1][1] + 1)
        else:
            tasks.append(((path, [index], [row]), 1))
    return tasks


def chunked(tasks: list[tuple[Task, int]]) -> list[tuple[list[Task], int]]:
    """Whole files packed into chunks of about CHUNK frames (a long cine loop is one chunk of its own)."""
    chunks: list[tuple[list[Task], int]] = []
    for task, n in tasks:
        if chunks and chunks[-1][1] < CHUNK:
            chunks[-1][0].append(task)
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + n)
        else:
            chunks.append(([task], n))
    return chunks


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
    indices: list[int],
    prep: Preprocessing,
    bar: tqdm,
) -> dict[int, int | str]:
    """Fill a shard file, in the pool's processes when there is one; {row: flags or failure reason}."""
    chunks = chunked(file_tasks(paths, indices))
    outcome: dict[int, int | str] = {}
    if pool is None:
        for tasks, n in chunks:
            outcome.update(decode_rows(str(shard), offset, tasks, prep))
            bar.update(n)
        return outcome
    pending = {pool.submit(decode_rows, str(shard), offset, tasks, prep): n for tasks, n in chunks}
    try:
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                outcome.update(future.result())
                bar.update(pending.pop(future))
    finally:
        for future in pending:
            future.cancel()
    return outcome


def write_shard(
    folder: Path, pool, paths: list[str], indices: list[int], prep: Preprocessing, bar: tqdm
) -> tuple[str, dict[int, int | str]]:
    """A new complete shard under its final name (temporary name, fsync, rename); (shard id, outcomes)."""
    shard = uuid.uuid4().hex[:12]
    tmp, final = folder / f".frames-{shard}.tmp.npy", shard_path(folder, shard)
    try:
        array = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(paths), prep.in_channels, prep.image_size, prep.image_size)
        )
        offset = array.offset
        del array  # workers write through their own file descriptors
        outcome = decode_shard(pool, tmp, offset, paths, indices, prep, bar)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return shard, outcome


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
    live = Counter(v[0] for frames in index["frames"].values() for v in frames.values())
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
    frames: list[Frame],
    rels: list[str],
    keys: dict[str, tuple[int, int]],
    prep: Preprocessing,
    show_progress: bool,
) -> None:
    """Decode `frames` into new shards, committing the index after each, with all cores and a progress bar."""
    frame_bytes = prep.in_channels * prep.image_size * prep.image_size
    check_space(folder, len(frames), frame_bytes)
    per_shard = max(1, SHARD_BYTES // frame_bytes)
    workers = min(cpu_count(), -(-len(frames) // CHUNK))
    pool = (
        ProcessPoolExecutor(workers, initializer=_ignore_sigint)
        if workers > 1 and len(frames) >= SERIAL_BELOW
        else None
    )
    try:
        with tqdm(
            total=len(frames),
            desc=f"caching frames ({prep.image_size}px)",
            unit="frame",
            dynamic_ncols=True,
            disable=None if show_progress else True,
        ) as bar:
            for start in range(0, len(frames), per_shard):
                stop = min(start + per_shard, len(frames))
                part = frames[start:stop]
                shard, outcome = write_shard(folder, pool, [f.path for f in part], [f.index for f in part], prep, bar)
                index["shards"][shard] = stop - start
                for row, i in enumerate(range(start, stop)):
                    rel, number = rels[i], str(frames[i].index)
                    result = outcome[row]
                    if isinstance(result, str):
                        index["frames"].get(rel, {}).pop(number, None)
                        index["failed"].setdefault(rel, {})[number] = [*keys[rel], result]
                    else:
                        index["failed"].get(rel, {}).pop(number, None)
                        index["frames"].setdefault(rel, {})[number] = [shard, row, *keys[rel], result]
                commit(folder, index)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def relative_paths(frames: list[Frame], root: str) -> list[str]:
    prefix = root if root.endswith(os.sep) else root + os.sep
    return [os.path.abspath(f.path)[len(prefix) :] for f in frames]


def update_cache(
    folder: Path, frames: list[Frame], rels: list[str], prep: Preprocessing, show_progress: bool = True
) -> None:
    """Make the cache hold every frame of `frames` at its file's current size and mtime. One builder at a time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot create the frame cache folder {folder} ({err.strerror})", "pass a writable --cache-dir"
        ) from None
    with locked(folder, exclusive=True) as have_lock:
        index = read_index(folder, prep)
        check_shards(folder, index)
        files = list(dict.fromkeys(zip(rels, (f.path for f in frames))))  # each file once, in order
        with ThreadPoolExecutor(16) as pool:  # threads hide file-system latency (NFS) for large datasets
            keys = dict(zip((rel for rel, _ in files), pool.map(stat_key, [p for _, p in files], chunksize=256)))
        todo = stale(index, frames, rels, keys)
        # A file's frames side by side, so one worker reads a cine loop once for all of them.
        todo.sort(key=lambda i: (rels[i], frames[i].index))
        if todo:
            try:
                build(folder, index, [frames[i] for i in todo], [rels[i] for i in todo], keys, prep, show_progress)
            except PermissionError as err:
                raise UserError(
                    f"cannot write the frame cache in {folder} ({err.strerror})", "pass a writable --cache-dir"
                ) from None
        if have_lock:  # without the lock a racing builder may own those files
            collect_garbage(folder, index)
