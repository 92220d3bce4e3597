"""Frames → batches: the on-the-fly Dataset, the cached one's entry point, and loaders with owned RNGs."""

from __future__ import annotations

import atexit
import os
import signal
import weakref

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, WeightedRandomSampler

from carotid.data.cache.dataset import cached_dataset
from carotid.data.frames.decode import decode_frame, decode_frames
from carotid.data.frames.frame import Frame
from carotid.data.frames.kinds import kind_by_name
from carotid.data.frames.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, Preprocessing


class FrameDataset(Dataset):
    """(uint8 frame tensor (C, S, S), class index, sample index, status) per frame.

    Frames stay uint8 until they reach the training device, where transforms.py augments and
    normalises whole batches. `status` is the decoder's flags (carotid.data.frames.decode: OK, COLOUR,
    LOW_RANGE); a frame that cannot be decoded comes back as zeros with status 0."""

    def __init__(
        self,
        frames: list[Frame],
        image_size: int,
        in_channels: int,
        resize: str = DEFAULT_RESIZE,
        crop: str = DEFAULT_CROP,
    ):
        self.frames = frames
        self.paths = [f.path for f in frames]
        self.labels = [f.label for f in frames]
        self.person_ids = [f.person_id for f in frames]
        self.image_size = image_size
        self.in_channels = in_channels
        self.prep = Preprocessing(image_size, in_channels, resize, crop)
        self._video: tuple[str, dict] = ("", {})  # the last video's decoded frames (see _from_video)
        self._video_frames: dict[str, list[int]] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        frame = self.frames[index]
        try:
            if _sequential(frame.path):
                pixels, status = self._from_video(frame)
            else:
                pixels, status = decode_frame(frame.path, frame.index, self.prep)
            tensor = torch.from_numpy(pixels)
        except Exception:  # noqa: BLE001 - a corrupt frame must not stop a run; the caller reports it
            tensor, status = torch.zeros(self.in_channels, self.image_size, self.image_size, dtype=torch.uint8), 0
        return tensor, self.labels[index], index, status

    def _from_video(self, frame: Frame) -> tuple:
        """A video is decoded from its start (exact frame numbers), so all of its frames this dataset holds
        are decoded in that one pass and kept until another file is read: in evaluation order each video
        is decoded once. Shuffled training reads a video per frame: --cache avoids that."""
        path, decoded = self._video
        if path != frame.path:
            if self._video_frames is None:
                self._video_frames = {}
                for f in self.frames:
                    if _sequential(f.path):
                        self._video_frames.setdefault(f.path, []).append(f.index)
            indices = self._video_frames[frame.path]
            decoded = dict(zip(indices, decode_frames(frame.path, indices, self.prep)))
            self._video = (frame.path, decoded)
        outcome = decoded[frame.index]
        if isinstance(outcome, str):
            raise ValueError(outcome)
        return outcome


def _sequential(path: str) -> bool:
    kind = kind_by_name(path)
    return kind is not None and kind.sequential


def frame_dataset(
    frames: list[Frame],
    image_size: int,
    in_channels: int,
    *,
    resize: str = DEFAULT_RESIZE,
    crop: str = DEFAULT_CROP,
    cache: bool = False,
    cache_dir: str | None = None,
    accelerator=None,
) -> Dataset:
    """The Dataset of a split: frames decoded on the fly, or sliced from the decoded-frame cache."""
    if cache:
        return cached_dataset(
            frames, image_size, in_channels, resize=resize, crop=crop, cache_dir=cache_dir, accelerator=accelerator
        )
    return FrameDataset(frames, image_size, in_channels, resize, crop)


def ignore_stop_signals(worker_id: int) -> None:
    # Slurm and Ctrl-C signal the whole process group: workers keep serving batches while the main
    # process finishes its step and saves a checkpoint.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# Loaders whose worker processes must be stopped before the interpreter exits (see stop_workers_at_exit).
_STOP_AT_EXIT: weakref.WeakSet = weakref.WeakSet()


def stop_workers(loader) -> None:
    """Stop the persistent worker processes of a loader (or of the DataLoader an Accelerate loader wraps).

    torch has no public call for this; `_iterator` holds the persistent pool and `_shutdown_workers` is
    what its own `__del__` runs."""
    base = getattr(loader, "base_dataloader", loader)
    iterator = getattr(base, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
        base._iterator = None


def stop_workers_at_exit(loader):
    """Register `loader` (as returned by make_loader, accelerator.prepare or skip_first_batches) so its
    workers are stopped at exit if it is still alive then (held by a reference cycle, e.g. through the
    Accelerator). Otherwise the process would hang for ever on exit: multiprocessing's exit handler
    terminate()s daemonic children with SIGTERM, which these workers ignore, and then waits for them."""
    if getattr(loader, "num_workers", 0) > 0:
        if not _STOP_AT_EXIT:
            import multiprocessing.util  # noqa: F401 - registers its exit handler, which must run after ours

            atexit.unregister(_stop_registered_workers)
            atexit.register(_stop_registered_workers)  # exit handlers run last-registered first
        _STOP_AT_EXIT.add(loader)
    return loader


def _stop_registered_workers() -> None:
    for loader in list(_STOP_AT_EXIT):
        stop_workers(loader)


def default_workers() -> int:
    """4 workers hide decoding behind a GPU step; never more than the CPUs this process may use."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int | None,
    seed: int,
    balanced: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose shuffling comes from its own generators (reseeded per epoch by `EpochSeeds`).

    Owning the generators (not the global RNG) makes the order a function of (seed, epoch) only, so a
    resumed run can skip to the exact batch where it stopped."""
    num_workers = default_workers() if num_workers is None else num_workers
    sampler_generator = torch.Generator().manual_seed(seed)
    if not train:
        sampler = SequentialSampler(dataset)
    elif balanced:
        labels = np.asarray(dataset.labels)
        per_class = np.bincount(labels)
        weights = torch.as_tensor(1.0 / per_class[labels], dtype=torch.double)
        sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=sampler_generator)
    else:
        sampler = RandomSampler(dataset, generator=sampler_generator)
    if getattr(dataset, "slices_in_process", False):
        # Cached frames: slicing a memory map in this process is ~10x faster than shipping the same
        # batch from worker processes (docs/PERFORMANCE.md), so no workers.
        num_workers = 0
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate_fn", None),
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # On a GPU (pinned memory) the workers decode while the device computes: 4 batches queued a worker
        # hide a slow one. On a CPU they share its cores with the step, and a deeper queue than torch's 2 only
        # makes the first step wait for more decoding (PERFORMANCE.md, the first step).
        prefetch_factor=(4 if pin_memory else 2) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # worker seeds come from here, not the global RNG
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    return stop_workers_at_exit(loader)


class EpochSeeds:
    """The generators behind a loader's order and its workers' seeds, reseeded at each epoch.

    The same generator objects survive `accelerator.prepare` and `skip_first_batches`, so seeding them
    makes an epoch's order a function of (seed, epoch) alone, on every rank and after a resume."""

    def __init__(self, loader: DataLoader, seed: int):
        candidates = (getattr(loader.sampler, "generator", None), loader.generator)
        self.generators = [g for g in candidates if g is not None]
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        for i, generator in enumerate(self.generators):
            # One distinct seed per (run seed, epoch, generator); 100_003 is a prime larger than any epoch count,
            # so no two (seed, epoch) pairs share a stream.
            generator.manual_seed(self.seed * 100_003 + epoch * 2 + i)
