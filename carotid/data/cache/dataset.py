"""The decoded-frame cache: every frame decoded and resized once into memory-mapped uint8 shards.

One cache folder per (dataset root, resize and crop, image size, channels) under --cache-dir (default
$XDG_CACHE_HOME/carotid or ~/.cache/carotid):

    index.json        the commit point: each frame's shard, row and decode flags, keyed by its file's path
                      relative to the root and its frame number, with the file's size and mtime; frames
                      that failed to decode, with the reason
    frames-<id>.npy   uint8 arrays (N, C, S, S) in .npy format, read with np.load(mmap_mode="r")
    .lock             fcntl.flock: one builder at a time; readers hold it shared while they open

A build decodes only frames that are new or changed, in worker processes that pwrite into a new
shard under a temporary name; the shard is fsynced and renamed, and only then is index.json replaced
(atomically). A kill at any moment leaves the old index naming complete shards; the next builder
deletes whatever the index does not name. Rows of changed frames stay in their shard until no live
frame is left in it; delete the folder to reclaim that space.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from torch.utils.data import Dataset, default_collate

from carotid.core.errors import UserError
from carotid.core.text import plural
from carotid.data.cache.build import relative_paths, update_cache
from carotid.data.cache.index import (
    cache_folder,
    dataset_root,
    default_cache_dir,
    locked,
    lookup,
    read_index,
    shard_path,
)
from carotid.data.frames.frame import Frame
from carotid.data.frames.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, Preprocessing

# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------


class CachedFrameDataset(Dataset):
    """FrameDataset's items and attributes, sliced from memory-mapped shards instead of decoded.

    `excluded` maps the frames left out (they failed to decode), as (path, frame number), to the reason;
    `status` holds each kept frame's decode flags, as FrameDataset returns them."""

    slices_in_process = True  # make_loader: no worker processes, see docs/PERFORMANCE.md

    @staticmethod
    def collate_fn(batch):
        """make_loader's collate_fn for this dataset: batches arrive stacked already."""
        return collate_frames(batch)

    def __init__(
        self,
        folder: Path,
        shards: list[str],
        shard_of: np.ndarray,
        row_of: np.ndarray,
        status: np.ndarray,
        frames: list[Frame],
        image_size: int,
        in_channels: int,
        excluded: dict[tuple[str, int], str],
    ):
        self.folder, self.shards = folder, shards
        self.shard_of, self.row_of, self.status = shard_of, row_of, status
        self.frames = frames
        self.paths = [f.path for f in frames]
        self.labels = [f.label for f in frames]
        self.person_ids = [f.person_id for f in frames]
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
        return torch.from_numpy(frame), self.labels[index], index, int(self.status[index])

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
        stacked = [
            frames,
            torch.as_tensor([self.labels[i] for i in indices]),
            torch.as_tensor(indices, dtype=torch.int64),
            torch.from_numpy(self.status[positions]),
        ]
        return FrameBatch([(frames[k], self.labels[i], i, int(self.status[i])) for k, i in enumerate(indices)], stacked)


class FrameBatch(list):
    """One batch as the list of samples default_collate expects, also carrying it already stacked, so
    `collate_frames` can pass it on without copying every frame a second time.

    A list subclass because DataLoader hands `__getitems__`'s return value to the collate function as is,
    and anything else that receives a batch (e.g. a user's own collate) still sees the plain samples."""

    def __init__(self, samples: list[tuple], stacked: list[torch.Tensor]):
        super().__init__(samples)
        self.stacked = stacked


def collate_frames(batch):
    """A DataLoader collate_fn for any frame dataset: cached batches pass through, others go to default_collate.

    Besides the copy it saves, it keeps torch.stack's thread pool out of the loader (OpenMP threads that
    stall when the cores are shared with other processes)."""
    return batch.stacked if isinstance(batch, FrameBatch) else default_collate(batch)


def open_dataset(folder: Path, index: dict, frames: list[Frame], rels: list[str], prep: Preprocessing):
    """The dataset of the frames in `frames` that the index holds, in their order."""
    shards = sorted({v[0] for rel in set(rels) for v in index["frames"].get(rel, {}).values()})
    number = {s: k for k, s in enumerate(shards)}
    kept, shard_of, row_of, status, excluded = [], [], [], [], {}
    for frame, rel in zip(frames, rels):
        hit = lookup(index, "frames", rel, frame.index)
        miss = lookup(index, "failed", rel, frame.index)
        if hit is not None:
            kept.append(frame)
            shard_of.append(number[hit[0]])
            row_of.append(hit[1])
            status.append(hit[4])
        elif miss is not None:
            excluded[(frame.path, frame.index)] = miss[2]
        else:
            raise RuntimeError(
                f"the frame cache in {folder} lacks {frame.path}: another build replaced its index without a "
                f"lock; use a --cache-dir on a file system with flock (a local disk)"
            )
    return CachedFrameDataset(
        folder,
        shards,
        np.asarray(shard_of, dtype=np.int64),
        np.asarray(row_of, dtype=np.int64),
        np.asarray(status, dtype=np.int64),
        kept,
        prep.image_size,
        prep.in_channels,
        excluded,
    )


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
        outcomes = gather_object([outcome])
    if error is not None:
        raise error
    for other in outcomes:
        if other[0] == "user":
            raise UserError(other[1], other[2])
        if other[0] == "crash":
            raise RuntimeError(f"building the frame cache failed on another process: {other[1]}")


def cached_dataset(
    frames: list[Frame],
    image_size: int,
    in_channels: int,
    *,
    resize: str = DEFAULT_RESIZE,
    crop: str = DEFAULT_CROP,
    cache_dir: str | Path | None = None,
    accelerator=None,
) -> CachedFrameDataset:
    """The Dataset of `frames` read from the decoded-frame cache, built or updated first where needed.

    With an accelerator, the main process of each node builds (under the folder's lock, so nodes
    sharing a file system build once) while the other ranks wait; then every rank opens the same
    committed index. Frames that fail to decode are left out, with a warning."""
    if not frames:
        return CachedFrameDataset(
            Path(cache_dir or default_cache_dir()),
            [],
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            [],
            image_size,
            in_channels,
            {},
        )
    prep = Preprocessing(image_size, in_channels, resize, crop)
    root = dataset_root(frames)
    folder = cache_folder(cache_dir, root, prep)
    rels = relative_paths(frames, root)
    builder = accelerator is None or accelerator.is_local_main_process
    outcome, error = _attempt(lambda: update_cache(folder, frames, rels, prep)) if builder else (("ok",), None)
    agree(accelerator, outcome, error)
    with locked(folder, exclusive=False):  # no builder may collect a shard between reading the index and mapping it
        dataset = open_dataset(folder, read_index(folder, prep), frames, rels, prep)
    if not len(dataset):
        (path, _), reason = next(iter(dataset.excluded.items()))
        raise UserError(
            f"none of the {len(frames)} frames could be decoded (e.g. {path}: {reason})",
            "check the image files, or train without --cache to see each error",
        )
    if dataset.excluded and (accelerator is None or accelerator.is_main_process):
        (path, _), reason = next(iter(dataset.excluded.items()))
        warnings.warn(
            f"{plural(len(dataset.excluded), 'frame')} could not be decoded and are left out of the cached dataset, "
            f"e.g. {path}: {reason}",
            stacklevel=2,
        )
    return dataset
