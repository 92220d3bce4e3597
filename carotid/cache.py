"""The decoded-frame cache: every frame decoded and resized once into memory-mapped uint8 shards.

One cache folder per (dataset root, image size, channels) under --cache-dir (default
$XDG_CACHE_HOME/carotid or ~/.cache/carotid):

    index.json        the commit point: each frame's shard and row, keyed by its path relative to the
                      root and its file size and mtime; frames that failed to decode, with the reason
    frames-<id>.npy   uint8 arrays (N, C, S, S) in .npy format, read with np.load(mmap_mode="r")
    .lock             fcntl.flock: one builder at a time; readers hold it shared while they open

A build decodes only frames that are new or changed, in worker processes that pwrite into a new
shard under a temporary name; the shard is fsynced and renamed, and only then is index.json replaced
(atomically). A kill at any moment leaves the old index naming complete shards; the next builder
deletes whatever the index does not name. Rows of changed frames stay in their shard until no live
frame is left in it; delete the folder to reclaim that space.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import uuid
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from carotid.checkpoint import atomic_write_bytes
from carotid.data import load_frame
from carotid.errors import UserError

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


def dataset_root(items: list[tuple[str, int, str]]) -> str:
    """The folder that holds the person folders; a split of one person still maps to the dataset's root."""
    root = os.path.commonpath(list({os.path.dirname(os.path.abspath(p)) for p, _, _ in items}))
    persons = {q for _, _, q in items}
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
    return {"format": FORMAT, "version": VERSION, "decoder": DECODER, "image_size": image_size,
            "in_channels": in_channels, "shards": {}, "frames": {}, "failed": {}}


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


def decode_rows(shard: str, offset: int, start: int, paths: list[str], image_size: int,
                in_channels: int) -> list[tuple[int, str]]:
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


def decode_shard(pool: ProcessPoolExecutor | None, shard: Path, offset: int, paths: list[str], image_size: int,
                 in_channels: int, bar: tqdm) -> dict[int, str]:
    """Fill a shard file, in the pool's processes when there is one; {row: reason} of the failures."""
    chunks = [(start, paths[start:start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    failures: dict[int, str] = {}
    if pool is None:
        for start, part in chunks:
            failures.update(decode_rows(str(shard), offset, start, part, image_size, in_channels))
            bar.update(len(part))
        return failures
    pending = {pool.submit(decode_rows, str(shard), offset, start, part, image_size, in_channels): len(part)
               for start, part in chunks}
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


def write_shard(folder: Path, pool, paths: list[str], image_size: int, in_channels: int, bar: tqdm) -> tuple[str, dict[int, str]]:
    """A new complete shard under its final name (temporary name, fsync, rename); (shard id, failures)."""
    shard = uuid.uuid4().hex[:12]
    tmp, final = folder / f".frames-{shard}.tmp.npy", shard_path(folder, shard)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), in_channels, image_size, image_size))
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
        raise UserError(f"the frame cache needs {needed / 2**30:.1f} GiB more in {folder}, but {free / 2**30:.1f} GiB are free",
                        "free some space or pass --cache-dir on a larger disk")


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


def build(folder: Path, index: dict, paths: list[str], rels: list[str], keys: list[tuple[int, int]],
          image_size: int, in_channels: int, show_progress: bool) -> None:
    """Decode `paths` into new shards, committing the index after each, with all cores and a progress bar."""
    frame_bytes = in_channels * image_size * image_size
    check_space(folder, len(paths), frame_bytes)
    per_shard = max(1, SHARD_BYTES // frame_bytes)
    workers = min(cpu_count(), -(-len(paths) // CHUNK))
    pool = ProcessPoolExecutor(workers, initializer=_ignore_sigint) if workers > 1 and len(paths) >= SERIAL_BELOW else None
    try:
        with tqdm(total=len(paths), desc=f"caching frames ({image_size}px)", unit="frame", dynamic_ncols=True,
                  disable=None if show_progress else True) as bar:
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


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class CachedFrameDataset(Dataset):
    """FrameDataset's items and attributes, sliced from memory-mapped shards instead of decoded.

    `excluded` maps the frames left out (they failed to decode) to the reason."""

    slices_in_process = True  # make_loader: no worker processes, see docs/PERFORMANCE.md

    @staticmethod
    def collate_fn(batch):
        """make_loader's collate_fn for this dataset: batches arrive stacked already."""
        return collate_frames(batch)

    def __init__(self, folder: Path, shards: list[str], shard_of: np.ndarray, row_of: np.ndarray,
                 items: list[tuple[str, int, str]], image_size: int, in_channels: int, excluded: dict[str, str]):
        self.folder, self.shards = folder, shards
        self.shard_of, self.row_of = shard_of, row_of
        self.paths = [p for p, _, _ in items]
        self.labels = [c for _, c, _ in items]
        self.person_ids = [q for _, _, q in items]
        self.image_size, self.in_channels = image_size, in_channels
        self.excluded = excluded
        self.arrays = self.open_shards()

    def open_shards(self) -> list[np.ndarray]:
        return [np.load(shard_path(self.folder, s), mmap_mode="r") for s in self.shards]

    def __getstate__(self) -> dict:
        # A pickled memmap carries its whole contents: spawned workers reopen the files instead.
        return {k: v for k, v in self.__dict__.items() if k != "arrays"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.arrays = self.open_shards()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        frame = np.array(self.arrays[self.shard_of[index]][self.row_of[index]])  # a copy: the map is read-only
        return torch.from_numpy(frame), self.labels[index], index, True

    def __getitems__(self, indices: list[int]) -> FrameBatch:
        """A whole batch in one fancy-indexing read per shard (DataLoader calls this when it exists)."""
        positions = np.asarray(indices, dtype=np.int64)
        shards, rows = self.shard_of[positions], self.row_of[positions]
        array = np.empty((len(positions), self.in_channels, self.image_size, self.image_size), dtype=np.uint8)
        for shard in np.unique(shards):  # usually one shard: a single gather straight into the batch
            where = np.flatnonzero(shards == shard)
            if len(where) == len(positions):
                np.take(self.arrays[shard], rows, axis=0, out=array)
            else:
                array[where] = self.arrays[shard][rows[where]]
        frames = torch.from_numpy(array)
        stacked = [frames, torch.as_tensor([self.labels[i] for i in indices]), torch.as_tensor(indices, dtype=torch.int64),
                   torch.ones(len(indices), dtype=torch.bool)]
        return FrameBatch([(frames[k], self.labels[i], i, True) for k, i in enumerate(indices)], stacked)


class FrameBatch(list):
    """One batch as the list of samples default_collate expects, also carrying it already stacked, so
    `collate_frames` can pass it on without copying every frame a second time."""

    def __init__(self, samples: list[tuple], stacked: list[torch.Tensor]):
        super().__init__(samples)
        self.stacked = stacked


def collate_frames(batch):
    """A DataLoader collate_fn for any frame dataset: cached batches pass through, others go to default_collate.

    Besides the copy it saves, it keeps torch.stack's thread pool out of the loader (OpenMP threads that
    stall when the cores are shared with other processes)."""
    return batch.stacked if isinstance(batch, FrameBatch) else default_collate(batch)


def open_dataset(folder: Path, index: dict, items: list[tuple[str, int, str]], rels: list[str], image_size: int,
                 in_channels: int) -> CachedFrameDataset:
    """The dataset of the frames in `items` that the index holds, in the order of `items`."""
    shards = sorted({index["frames"][rel][0] for rel in rels if rel in index["frames"]})
    number = {s: k for k, s in enumerate(shards)}
    kept, shard_of, row_of, excluded = [], [], [], {}
    for item, rel in zip(items, rels):
        hit = index["frames"].get(rel)
        if hit is not None:
            kept.append(item)
            shard_of.append(number[hit[0]])
            row_of.append(hit[1])
        elif rel in index["failed"]:
            excluded[item[0]] = index["failed"][rel][2]
        else:
            raise RuntimeError(f"the frame cache in {folder} lacks {item[0]}: another build replaced its index without a "
                               f"lock; use a --cache-dir on a file system with flock (a local disk)")
    return CachedFrameDataset(folder, shards, np.asarray(shard_of, dtype=np.int64), np.asarray(row_of, dtype=np.int64),
                              kept, image_size, in_channels, excluded)


def relative_paths(items: list[tuple[str, int, str]], root: str) -> list[str]:
    prefix = root if root.endswith(os.sep) else root + os.sep
    return [os.path.abspath(p)[len(prefix):] for p, _, _ in items]


def update_cache(folder: Path, items: list[tuple[str, int, str]], rels: list[str], image_size: int, in_channels: int,
                 show_progress: bool = True) -> None:
    """Make the cache hold every frame of `items` at its current size and mtime. One builder at a time."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the frame cache folder {folder} ({err.strerror})", "pass a writable --cache-dir") from None
    with locked(folder, exclusive=True) as have_lock:
        index = read_index(folder, image_size, in_channels)
        check_shards(folder, index)
        paths = [p for p, _, _ in items]
        with ThreadPoolExecutor(16) as pool:  # threads hide file-system latency (NFS) for large datasets
            keys = list(pool.map(stat_key, paths, chunksize=256))
        todo = stale(index, rels, keys)
        if todo:
            try:
                build(folder, index, [paths[i] for i in todo], [rels[i] for i in todo], [keys[i] for i in todo],
                      image_size, in_channels, show_progress)
            except PermissionError as err:
                raise UserError(f"cannot write the frame cache in {folder} ({err.strerror})", "pass a writable --cache-dir") from None
        if have_lock:  # without the lock a racing builder may own those files
            collect_garbage(folder, index)


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def _attempt(fn) -> tuple[tuple, BaseException | None]:
    """Run fn; (outcome every rank can read, the exception to re-raise here)."""
    try:
        fn()
        return ("ok",), None
    except UserError as err:
        return ("user", err.what, err.fix), err
    except Exception as err:  # noqa: BLE001 - reported to every rank, then re-raised with its traceback
        return ("crash", repr(err)), err


def agree(accelerator, outcome: tuple, error: BaseException | None) -> None:
    """Every rank learns each builder's outcome (a collective, so it is also the barrier), and fails alike."""
    outcomes = [outcome]
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        outcomes = gather_object([outcome])
    if error is not None:
        raise error
    for other in outcomes:
        if other[0] == "user":
            raise UserError(other[1], other[2])
        if other[0] == "crash":
            raise RuntimeError(f"building the frame cache failed on another process: {other[1]}")


def cached_dataset(items: list[tuple[str, int, str]], image_size: int, in_channels: int, *,
                   cache_dir: str | Path | None = None, accelerator=None) -> CachedFrameDataset:
    """The Dataset of `items` read from the decoded-frame cache, built or updated first where needed.

    With an accelerator, the main process of each node builds (under the folder's lock, so nodes
    sharing a file system build once) while the other ranks wait; then every rank opens the same
    committed index. Frames that fail to decode are left out, with a warning."""
    if not items:
        return CachedFrameDataset(Path(cache_dir or default_cache_dir()), [], np.zeros(0, np.int64), np.zeros(0, np.int64),
                                  [], image_size, in_channels, {})
    root = dataset_root(items)
    folder = cache_folder(cache_dir, root, image_size, in_channels)
    rels = relative_paths(items, root)
    builder = accelerator is None or accelerator.is_local_main_process
    outcome, error = (_attempt(lambda: update_cache(folder, items, rels, image_size, in_channels)) if builder
                      else (("ok",), None))
    agree(accelerator, outcome, error)
    with locked(folder, exclusive=False):  # no builder may collect a shard between reading the index and mapping it
        dataset = open_dataset(folder, read_index(folder, image_size, in_channels), items, rels, image_size, in_channels)
    if not len(dataset):
        path, reason = next(iter(dataset.excluded.items()))
        raise UserError(f"none of the {len(items)} frames could be decoded (e.g. {path}: {reason})",
                        "check the image files, or train without --cache to see each error")
    if dataset.excluded and (accelerator is None or accelerator.is_main_process):
        path, reason = next(iter(dataset.excluded.items()))
        warnings.warn(f"{len(dataset.excluded)} frame(s) could not be decoded and are left out of the cached dataset, "
                      f"e.g. {path}: {reason}", stacklevel=2)
    return dataset
