"""Finding each person's frames: one sub-folder of --root-dir per person, image files anywhere below it.

`Frame` is the record every later stage passes on: the file, the frame's number inside it, the person
and the label. Discovery only lists file names (no file is opened here).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from carotid.errors import UserError

IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "bmp", "tif", "tiff"})


@dataclass(frozen=True, slots=True)
class Frame:
    """One 2-D image of a person: `index` numbers the frames of a multi-frame file (0 for a single image)."""

    path: str  # absolute path of the file
    person_id: str
    label: int  # class index (0 where unlabelled, as in predict)
    index: int = 0


def is_image_name(name: str) -> bool:
    # Hidden files include macOS "._frame.png" companions, which are not images.
    return not name.startswith(".") and name.rpartition(".")[2].lower() in IMAGE_SUFFIXES


def _unreadable_folder(folder: str) -> UserError:
    return UserError(
        f"cannot read folder {folder} (permission denied)",
        "give your user read access to it (chmod -R u+rX), or move it out of the data folder",
    )


def _walk_images(
    folder: str, prefix: str, out: list[str], seen: set[tuple[int, int]], suffixes: frozenset[str] = IMAGE_SUFFIXES
) -> None:
    # os.scandir reuses the directory entry's type, so no extra stat per file; the inner loop is kept to
    # plain string tests because on a warm 100,000-file tree it is the cost beside the kernel's (PERFORMANCE.md).
    names, folders = [], []
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":  # hidden, including macOS "._frame.png" companions
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                elif entry.is_symlink() and entry.is_dir():  # a linked sub-folder: followed once (see below)
                    folders.append(name)
                elif name.rpartition(".")[2].lower() in suffixes:
                    names.append(name)
    except PermissionError:
        raise _unreadable_folder(folder) from None
    out += [prefix + name for name in names]
    for name in folders:
        path = os.path.join(folder, name)
        # A folder reached twice (a link to a parent makes a loop, a link to a sibling a duplicate) is read once.
        info = os.stat(path)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        _walk_images(path, f"{prefix}{name}/", out, seen)


def frames_below(folder: str | Path, prefix: str = "") -> list[str]:
    """Sorted image paths under `folder` (sub-folders and linked sub-folders included, hidden ones skipped),
    as prefix + relative path."""
    frames: list[str] = []
    try:
        info = os.stat(folder)
    except PermissionError:
        raise _unreadable_folder(str(folder)) from None
    _walk_images(str(folder), prefix, frames, {(info.st_dev, info.st_ino)})
    return sorted(frames)


def discover_frames(root_dir: str | Path) -> dict[str, list[str]]:
    """{folder name: sorted frame paths relative to root_dir} for every sub-folder of root_dir.

    Names are kept exactly as on disk: '3006' and '3006 ' are two folders (carotid.data.matching refuses them)."""
    root = Path(root_dir)
    if not root.exists():
        raise UserError(f"root dir not found: {root}", "check the --root-dir path")
    if not root.is_dir():
        raise UserError(
            f"root dir is not a folder: {root}", "--root-dir must be the folder holding one sub-folder per person"
        )
    persons: dict[str, list[str]] = {}
    loose_images = 0
    try:
        with os.scandir(root) as entries:
            listed = [(entry.name, entry.path, entry.is_dir()) for entry in entries]
    except PermissionError:
        raise _unreadable_folder(str(root)) from None
    for name, path, is_dir in listed:
        if name.startswith("."):
            continue
        if is_dir:  # a symlinked person folder is followed
            persons[name] = frames_below(path, f"{name}/")
        elif is_image_name(name):
            loose_images += 1
    if not persons:
        found = f" (it holds {loose_images} images directly)" if loose_images else ""
        raise UserError(
            f"root dir {root} has no person folders{found}",
            "put each person's frames in a sub-folder named by their ID",
        )
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
