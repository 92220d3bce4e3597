"""Bags of a person's frames, for person models (--person-model attention|mean).

Training: a step takes as many persons as bring about `--batch-size` frames (`persons_per_step`), each with up to
`--bag-size` of its frames drawn at random.
`BagSampler` yields (person, seed) items in a random order from its own generator (reseeded per epoch by
`EpochSeeds`), by default stratified: the classes dealt in their shares, so a step of a few persons is not all
one class (`--stratified-steps`; measured in docs/EVALUATION.md). Which persons and which frames a step holds is
a function of (seed, epoch, step): a resumed run skips to the exact step. `BagDataset` turns an item into the
person's frames, read from any frame dataset by index (decoded on the fly or sliced from the cache), and
`BagDataset.collate_fn` concatenates a step's persons with a `bag` vector naming each frame's person, so all of
them go through the encoder together.

Evaluation: `PersonBags.shard` gives each process whole persons, and `frame_loader` reads their frames in
order, a chunk at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from carotid.data.loaders import default_workers, ignore_stop_signals, stop_workers_at_exit

MIN_PERSONS_PER_STEP = 2  # one person's frames alone: the encoder's BatchNorm learns a shortcut from them


def persons_per_step(batch_size: int, bag_size: int, frame_counts: list[int]) -> int:
    """Persons in a training step of about `batch_size` frames, when persons have these frame counts: batch_size over
    the mean frames a person brings (at most bag_size), rounded, and at least 2, so that BatchNorm never normalises
    within one person (issue 23). A fixed number (not a frame budget filled person by person), so every process
    makes the same number of steps."""
    if not frame_counts:
        return MIN_PERSONS_PER_STEP
    mean_frames = sum(min(n, bag_size) for n in frame_counts) / len(frame_counts)
    return max(MIN_PERSONS_PER_STEP, round(batch_size / mean_frames))


class PersonBags:
    """Each person's frame indices in a frame dataset (in dataset order), persons in sorted ID order."""

    def __init__(self, frames: Dataset):
        ids = np.asarray(frames.person_ids, dtype=str)
        self.person_ids, inverse = np.unique(ids, return_inverse=True)
        inverse = inverse.ravel()
        order = np.argsort(inverse, kind="stable")
        self.frames = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(self.person_ids)))[:-1])
        self.labels = [int(frames.labels[f[0]]) for f in self.frames]

    def __len__(self) -> int:
        return len(self.person_ids)

    def shard(self, rank: int, world: int) -> list[int]:
        """The persons process `rank` of `world` evaluates: every world-th one, so each is evaluated once and
        the processes get nearly equal numbers of persons."""
        return list(range(rank, len(self), world))


class BagSampler(Sampler):
    """(person, seed) items: persons in a random order (or drawn by inverse class frequency with replacement
    when balanced), stratified when asked (`stratified_order`), each with a seed for drawing its frames;
    everything from `generator`."""

    def __init__(
        self,
        labels: list[int],
        balanced: bool = False,
        generator: torch.Generator | None = None,
        stratified: bool = False,
    ):
        self.labels, self.balanced, self.stratified = np.asarray(labels), balanced, stratified
        self.generator = generator or torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        n = len(self.labels)
        if self.balanced:
            weights = torch.as_tensor(1.0 / np.bincount(self.labels)[self.labels], dtype=torch.double)
            order = torch.multinomial(weights, n, replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator)
        if self.stratified:
            order = stratified_order(order, self.labels, self.generator)
        seeds = torch.randint(0, 2**62, (n,), generator=self.generator)
        yield from zip(order.tolist(), seeds.tolist())


def stratified_order(order: torch.Tensor, labels: np.ndarray, generator: torch.Generator) -> torch.Tensor:
    """The same items reordered so that every stretch of k holds each class in about its share of them: each class
    keeps its order in `order`, its i-th of n_c members placed at (i + u_c) / n_c, u_c uniform in [0, 1).

    With a plain shuffle, a step of 4 persons of two balanced classes is all one class one time in 8, and in the
    measured runs the loss then chased the class prior step by step: the attention model sat at ln 2 for 20-40
    epochs, 2 runs of 10 never left it; stratified, every run left it within about 15 (docs/EVALUATION.md)."""
    classes = labels[order.numpy()]
    keys = torch.empty(len(order), dtype=torch.double)
    for c in np.unique(classes):
        members = torch.from_numpy(np.flatnonzero(classes == c))
        offset = torch.rand(1, generator=generator, dtype=torch.double)
        keys[members] = (torch.arange(len(members), dtype=torch.double) + offset) / len(members)
    return order[torch.argsort(keys, stable=True)]


def read_frames(frames: Dataset, indices) -> tuple:
    """(frames (k, C, S, S) uint8, labels, indices, statuses) of these items of a frame dataset, stacked."""
    indices = [int(i) for i in indices]
    fetch = getattr(frames, "__getitems__", None)
    items = fetch(indices) if fetch is not None else [frames[i] for i in indices]
    return tuple((getattr(frames, "collate_fn", None) or default_collate)(items))


class BagDataset(Dataset):
    """One person's bag per item (person, seed): up to `bag_size` of its frames, drawn without replacement with
    that seed (all of them, in order, when it has no more), as (frames, label, frame indices, statuses)."""

    def __init__(self, frames: Dataset, bag_size: int):
        self.frames, self.bag_size = frames, bag_size
        self.bags = PersonBags(frames)
        self.labels = self.bags.labels
        self.slices_in_process = getattr(frames, "slices_in_process", False)

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, item: tuple[int, int]):
        person, seed = item
        indices = self.bags.frames[person]
        if len(indices) > self.bag_size:
            indices = np.sort(np.random.default_rng(seed).choice(indices, self.bag_size, replace=False))
        pixels, _, index, status = read_frames(self.frames, indices)
        return pixels, self.labels[person], index, status

    @staticmethod
    def collate_fn(batch) -> tuple[torch.Tensor, ...]:
        """(frames (N, C, S, S), person labels (B,), frame indices (N,), statuses (N,), bag (N,) in 0..B-1)."""
        sizes = torch.tensor([len(item[2]) for item in batch])
        return (
            torch.cat([item[0] for item in batch]),
            torch.tensor([item[1] for item in batch], dtype=torch.int64),
            torch.cat([torch.as_tensor(item[2], dtype=torch.int64) for item in batch]),
            torch.cat([torch.as_tensor(item[3]) for item in batch]),
            torch.repeat_interleave(torch.arange(len(batch)), sizes),
        )


def make_bag_loader(
    dataset: BagDataset,
    persons_per_batch: int,
    *,
    num_workers: int | None,
    seed: int,
    balanced: bool = False,
    stratified: bool = False,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """The training loader of a person model: like make_loader's, with generators it owns (EpochSeeds)."""
    num_workers = 0 if dataset.slices_in_process else default_workers() if num_workers is None else num_workers
    sampler = BagSampler(dataset.labels, balanced, torch.Generator().manual_seed(seed), stratified)
    loader = DataLoader(
        dataset,
        batch_size=persons_per_batch,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=BagDataset.collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    return stop_workers_at_exit(loader)


def frame_loader(
    frames: Dataset, indices: list[int], batch_size: int, *, num_workers: int | None, pin_memory: bool = False
) -> DataLoader:
    """These frames of a dataset, in this order, `batch_size` at a time (an evaluation's chunks)."""
    num_workers = 0 if getattr(frames, "slices_in_process", False) else num_workers
    num_workers = default_workers() if num_workers is None else num_workers
    loader = DataLoader(
        frames,
        batch_size=batch_size,
        sampler=indices,
        num_workers=num_workers,
        collate_fn=getattr(frames, "collate_fn", None),
        pin_memory=pin_memory,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
    return loader
