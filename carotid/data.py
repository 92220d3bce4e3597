"""Finding each person's frames, the per-person cap, the person-level split, the Dataset and its loaders."""

from __future__ import annotations

import math
import os
import signal
import unicodedata
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, WeightedRandomSampler

from carotid.errors import UserError
from carotid.labels import LabelTable

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "bmp", "tif", "tiff"})
SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    # Hidden files include macOS "._frame.png" companions, which are not images.
    return not name.startswith(".") and name.rpartition(".")[2].lower() in IMAGE_SUFFIXES


def _walk_images(folder: str, prefix: str, out: list[str], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> None:
    # os.scandir reuses the directory entry's type, so no extra stat per file; the inner loop is kept to
    # plain string tests because on a warm 100,000-file tree it is the cost beside the kernel's (PERFORMANCE.md).
    names, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if name[0] == ".":  # hidden, including macOS "._frame.png" companions
                continue
            if entry.is_dir(follow_symlinks=False):
                folders.append(name)
            elif name.rpartition(".")[2].lower() in suffixes:
                names.append(name)
    out += [prefix + name for name in names]
    for name in folders:
        _walk_images(os.path.join(folder, name), f"{prefix}{name}/", out)


def frames_below(folder: str | Path, prefix: str = "") -> list[str]:
    """Sorted image paths under `folder` (sub-folders included, hidden ones skipped), as prefix + relative path."""
    frames: list[str] = []
    _walk_images(str(folder), prefix, frames)
    return sorted(frames)


def discover_frames(root_dir: str | Path) -> dict[str, list[str]]:
    """{person_id: sorted frame paths relative to root_dir} for every sub-folder of root_dir."""
    root = Path(root_dir)
    if not root.exists():
        raise UserError(f"root dir not found: {root}", "check the --root-dir path")
    if not root.is_dir():
        raise UserError(f"root dir is not a folder: {root}", "--root-dir must be the folder holding one sub-folder per person")
    persons: dict[str, list[str]] = {}
    loose_images = 0
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # a symlinked person folder is followed
                persons[entry.name.strip()] = frames_below(entry.path, f"{entry.name}/")
            elif is_image_name(entry.name):
                loose_images += 1
    if not persons:
        found = f" (it holds {loose_images} images directly)" if loose_images else ""
        raise UserError(f"root dir {root} has no person folders{found}", "put each person's frames in a sub-folder named by their ID")
    return persons


def spread_evenly(frames: list[str], n: int | None) -> list[str]:
    """n frames spread evenly over the sorted list (the middle of n equal stretches), deterministic."""
    if n is None or len(frames) <= n:
        return list(frames)
    return [frames[(2 * i + 1) * len(frames) // (2 * n)] for i in range(n)]


def check_header(path: str) -> str | None:
    """None if Pillow recognises the file as an image, else the reason. Reads the header only."""
    try:
        with Image.open(path) as image:
            width, height = image.size
        if width < 1 or height < 1:
            return "empty image"
        return None
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
        return f"{type(err).__name__}: {err}"


def find_unreadable(root_dir: str, frames: list[str], workers: int = 16) -> dict[str, str]:
    """{relative path: reason} for frames Pillow cannot open; threads hide file-system latency."""
    paths = [os.path.join(root_dir, f) for f in frames]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(check_header, paths, chunksize=64))
    return {f: r for f, r in zip(frames, reasons) if r is not None}


def _first(ids, k: int = 5) -> dict:
    ids = sorted(ids)
    return {"count": len(ids), "first": ids[:k]}


# ---------------------------------------------------------------------------------------------
# Persons, frames and the split
# ---------------------------------------------------------------------------------------------


@dataclass
class DataManifest:
    """Everything a run needs to know about its data; plain types, so it can be broadcast and saved."""

    root_dir: str
    class_names: list[str]
    person_labels: dict[str, int]
    frames: dict[str, list[str]]
    splits: dict[str, list[str]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    def items(self, split: str | None = None) -> list[tuple[str, int, str]]:
        """[(absolute frame path, class index, person_id)] of a split (all persons when None)."""
        persons = sorted(self.frames) if split is None else self.splits[split]
        return [(os.path.join(self.root_dir, f), self.person_labels[p], p) for p in persons for f in self.frames[p]]

    def left_out_notes(self) -> list[str]:
        """One line per kind of person left out (no folder, no sheet row, no image), with the first IDs."""
        return [f"{self.report[key]['count']} {key.replace('_', ' ')} left out, e.g. {self.report[key]['first']}"
                for key in ("persons_without_folder", "folders_without_label", "persons_without_images")
                if self.report[key]["count"]]

    def counts(self, split: str) -> dict[str, dict[str, int]]:
        persons = {c: 0 for c in self.class_names}
        images = {c: 0 for c in self.class_names}
        for p in self.splits[split]:
            name = self.class_names[self.person_labels[p]]
            persons[name] += 1
            images[name] += len(self.frames[p])
        return {"persons": persons, "images": images}


def collect_persons(root_dir: str, table: LabelTable, max_imgs_per_person: int | None,
                    persons: list[str] | None = None) -> DataManifest:
    """Match folders with sheet rows, cap each person's frames and drop unreadable ones.

    `persons` restricts the result to those IDs (e.g. one split of a finished run)."""
    # Folder names copied from macOS are NFD; sheet IDs are read as NFC (labels.normalize_id).
    found = {unicodedata.normalize("NFC", person): frames for person, frames in discover_frames(root_dir).items()}
    sheet_ids, folder_ids = set(table.labels), set(found)
    if not sheet_ids & folder_ids:
        raise UserError(
            f"none of the {len(sheet_ids)} person IDs in the label sheet matches a folder in {root_dir} "
            f"(sheet: {', '.join(sorted(sheet_ids)[:3])}…; folders: {', '.join(sorted(folder_ids)[:3])}…)",
            "the folder names must be the IDs of the sheet's ID column (check --id-column)",
        )
    wanted = sorted(sheet_ids & folder_ids)
    if persons is not None:
        missing = sorted(set(persons) - set(wanted))
        if missing:
            raise UserError(f"{len(missing)} person(s) of the split are not in the data: {', '.join(missing[:5])}",
                            "use the same --root-dir and --label-excel as the training run")
        wanted = sorted(persons)
    no_images = [p for p in wanted if not found[p]]
    if len(no_images) == len(wanted):
        raise UserError(
            f"none of the {len(wanted)} labelled person folders in {root_dir} holds an image file "
            f"(e.g. {wanted[0]}/; looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            "put each person's frames (png, jpg, bmp, tif) in their folder or a sub-folder of it",
        )
    capped = {p: spread_evenly(found[p], max_imgs_per_person) for p in wanted if found[p]}
    all_frames = [f for frames in capped.values() for f in frames]
    unreadable = find_unreadable(root_dir, all_frames)
    frames: dict[str, list[str]] = {}
    for person, person_frames in capped.items():
        readable = [f for f in person_frames if f not in unreadable]
        if not readable:
            example = person_frames[0]
            raise UserError(
                f"person '{person}': all {len(person_frames)} images are unreadable (e.g. {example}: {unreadable[example]})",
                "replace the files, or remove the folder or its row from the sheet",
            )
        frames[person] = readable
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable image(s) skipped, e.g. {next(iter(unreadable))}; see data_report.json",
                      stacklevel=2)
    class_index = table.class_index
    report = {
        "root_dir": str(root_dir),
        "label_file": {"sheet": table.sheet, "id_column": table.id_column, "label_column": table.label_column,
                       "notes": table.notes},
        "persons_in_sheet": len(sheet_ids),
        "person_folders": len(folder_ids),
        "persons_without_folder": _first(sheet_ids - folder_ids),
        "folders_without_label": _first(folder_ids - sheet_ids),
        "persons_without_images": _first(no_images),
        "images_found": sum(len(found[p]) for p in capped),
        "images_used": sum(len(f) for f in frames.values()),
        "max_imgs_per_person": max_imgs_per_person,
        "unreadable_images": [{"path": p, "reason": r} for p, r in sorted(unreadable.items())],
    }
    return DataManifest(str(root_dir), list(table.class_names), {p: class_index[table.labels[p]] for p in frames},
                        frames, report=report)


def _count(ratio: float, n: int) -> int:
    return 0 if ratio == 0 else max(1, math.floor(ratio * n + 0.5))


def _split_off(ids: list[str], labels: list[int], size: int, seed: int, notes: list[str], what: str):
    if size == 0:
        return ids, []
    try:
        keep, out = train_test_split(ids, test_size=size, stratify=labels, random_state=seed)
    except ValueError as err:
        notes.append(f"{what} split not stratified by label ({err}); persons were split at random")
        keep, out = train_test_split(ids, test_size=size, random_state=seed)
    return keep, out


def split_persons(person_labels: dict[str, int], train_ratio: float, val_ratio: float, test_ratio: float,
                  seed: int) -> tuple[dict[str, list[str]], list[str]]:
    """Person-level split, stratified by label where every class has enough persons.

    Returns ({"train", "val", "test": sorted person IDs}, notes about stratification)."""
    ids = sorted(person_labels)
    n = len(ids)
    n_test, n_val = _count(test_ratio, n), _count(val_ratio, n)
    if n - n_test - n_val < 1:
        raise UserError(f"{n} person(s) are too few for train/val/test ratios {train_ratio}/{val_ratio}/{test_ratio}",
                        "add persons, or set --val-ratio / --test-ratio to 0")
    notes: list[str] = []
    rest, test = _split_off(ids, [person_labels[p] for p in ids], n_test, seed, notes, "test")
    train, val = _split_off(rest, [person_labels[p] for p in rest], n_val, seed, notes, "validation")
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}, notes


# ---------------------------------------------------------------------------------------------
# Frames → tensors
# ---------------------------------------------------------------------------------------------


def load_frame(path: str, image_size: int, in_channels: int) -> np.ndarray:
    """Decode one frame into a uint8 array (C, S, S). The cache stores exactly this array."""
    mode = "L" if in_channels == 1 else "RGB"
    with Image.open(path) as image:
        # JPEG: decode at a reduced DCT scale that still covers the target size (2-4x faster for 800x600 → 224).
        image.draft(mode, (image_size, image_size))
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16/32-bit frames (some DICOM exports): scale the full range to 0..255 instead of clipping.
            array = np.asarray(image, dtype=np.float64)
            high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
            image = Image.fromarray(np.clip(array * (255.0 / high), 0, 255).astype(np.uint8))
        image = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)  # a copy: torch wants writable memory
    return np.ascontiguousarray(array[None] if in_channels == 1 else array.transpose(2, 0, 1))


class FrameDataset(Dataset):
    """(uint8 frame tensor (C, S, S), class index, sample index, readable flag) per frame.

    Frames stay uint8 until they reach the training device, where transforms.py augments and
    normalises whole batches; a frame that cannot be decoded comes back as zeros with flag False."""

    def __init__(self, items: list[tuple[str, int, str]], image_size: int, in_channels: int):
        self.paths = [p for p, _, _ in items]
        self.labels = [c for _, c, _ in items]
        self.person_ids = [q for _, _, q in items]
        self.image_size = image_size
        self.in_channels = in_channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            frame = torch.from_numpy(load_frame(self.paths[index], self.image_size, self.in_channels))
            ok = True
        except Exception:  # noqa: BLE001 - a corrupt frame must not stop a run; the caller reports it
            frame = torch.zeros(self.in_channels, self.image_size, self.image_size, dtype=torch.uint8)
            ok = False
        return frame, self.labels[index], index, ok


def frame_dataset(items: list[tuple[str, int, str]], image_size: int, in_channels: int, *, cache: bool = False,
                  cache_dir: str | None = None, accelerator=None) -> Dataset:
    """The Dataset of a split: frames decoded on the fly, or sliced from the decoded-frame cache."""
    if cache:
        from carotid.cache import cached_dataset

        return cached_dataset(items, image_size, in_channels, cache_dir=cache_dir, accelerator=accelerator)
    return FrameDataset(items, image_size, in_channels)


def _ignore_stop_signals(worker_id: int) -> None:
    # Slurm and Ctrl-C signal the whole process group: workers keep serving batches while the main
    # process finishes its step and saves a checkpoint.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int, seed: int,
                balanced: bool = False, drop_last: bool = False, pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffling comes from its own generators (reseeded per epoch by `EpochSeeds`).

    Owning the generators (not the global RNG) makes the order a function of (seed, epoch) only, so a
    resumed run can skip to the exact batch where it stopped."""
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
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=getattr(dataset, "collate_fn", None),
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        prefetch_factor=4 if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),  # worker seeds come from here, not the global RNG
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None,
    )


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
            generator.manual_seed(self.seed * 100_003 + epoch * 2 + i)
