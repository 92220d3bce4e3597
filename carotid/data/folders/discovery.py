"""Finding each person's frames: one sub-folder of --root-dir per person, frame files anywhere below it.

Each frame found is a `Frame` (carotid.data.frames.frame). The walk only lists names, without opening a
file; how many frames each file holds is read afterwards (carotid.data.folders.frame_counts). `bounded_map`
reads many files on threads at a memory that does not grow with their number.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from carotid.core.errors import UserError
from carotid.data.frames.kinds import (
    BY_SUFFIX,
    FRAME_SUFFIXES,
    is_archive,
    is_unhandled,
    kind_of,
    may_sniff,
)


def is_image_name(name: str) -> bool:
    """A name read as frames by its suffix (hidden files, such as macOS "._frame.png" companions, are not)."""
    return not name.startswith(".") and name.rpartition(".")[2].lower() in FRAME_SUFFIXES


def is_frame_file(path: str) -> bool:
    """A file read as frames: by its suffix, or for a name that says nothing (IM0000) by its content, as the
    reader decides (hidden files never). Only a regular file (or a link to one): a FIFO or a device is never opened."""
    return not os.path.basename(path).startswith(".") and os.path.isfile(path) and kind_of(path) is not None


def _unreadable_folder(folder: str, root: bool = False) -> UserError:
    elsewhere = "" if root else ", or move it out of the data folder"
    return UserError(
        f"cannot read folder {folder} (permission denied)",
        f"give your user read access to it (chmod -R u+rX){elsewhere}",
    )


PATH_MAX = 4096  # Linux; a longer path cannot be opened (ENAMETOOLONG)


def _too_long(folder: str) -> UserError:
    return UserError(
        f"the path of folder {folder} ({len(os.fsencode(folder))} bytes) with the names in it is longer than the "
        f"system allows ({PATH_MAX} bytes)",
        "move the data to a shorter path, or shorten the names of its nested folders",
    )


def _check_length(folder: str, names: list[str]) -> None:
    # Byte lengths only where the characters come near the limit (a character is at most 4 bytes).
    if names and len(folder) > PATH_MAX // 8:
        longest = max(len(os.fsencode(name)) for name in names)
        if len(os.fsencode(folder)) + 1 + longest >= PATH_MAX:
            raise _too_long(folder)


def _follows(test: Callable[[], bool]) -> bool:
    """A DirEntry test through a link; False for a link loop (ELOOP) or a dangling link."""
    try:
        return test()
    except OSError:
        return False


def _walk(
    folder: str, prefix: str, out: list[str], unhandled: list[str], seen: set[tuple[int, int]], special: list[str]
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
                framed = name.rpartition(".")[2].lower() in BY_SUFFIX or may_sniff(name)
                if entry.is_file(follow_symlinks=False):  # a regular file (most entries): one test, no stat
                    if framed:
                        names.append(name)  # a name that says nothing is decided by content (count_frames)
                    elif is_unhandled(name) or is_archive(name):  # named in data_report.json (archives apart)
                        unhandled.append(prefix + name)
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(name)
                elif entry.is_symlink() and _follows(entry.is_dir):  # a linked sub-folder: followed once (below)
                    folders.append(name)
                elif framed:
                    if _follows(entry.is_file):  # a link to a regular file
                        names.append(name)
                    else:  # a FIFO, a device, a socket or a link loop: opening it could block for ever
                        special.append(prefix + name)
                elif is_unhandled(name) or is_archive(name):
                    unhandled.append(prefix + name)
    except PermissionError:
        raise _unreadable_folder(folder) from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise _too_long(folder) from None
        raise
    _check_length(folder, names + folders)
    out += [prefix + name for name in names]
    for name in folders:
        path = os.path.join(folder, name)
        # A folder reached twice (a link to a parent makes a loop, a link to a sibling a duplicate) is read once.
        info = os.stat(path)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        _walk(path, f"{prefix}{name}/", out, unhandled, seen, special)


def frames_below(
    folder: str | Path, prefix: str = "", unhandled: list[str] | None = None, special: list[str] | None = None
) -> list[str]:
    """Sorted frame-file paths under `folder` (sub-folders and linked sub-folders included, hidden ones
    skipped), as prefix + relative path; image-like files that are not read go to `unhandled`, names of frames
    that are no regular file (a FIFO, a device, a link loop: never opened) to `special`."""
    files: list[str] = []
    try:
        info = os.stat(folder)
    except PermissionError:
        raise _unreadable_folder(str(folder)) from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            raise _too_long(str(folder)) from None
        raise
    seen = {(info.st_dev, info.st_ino)}
    _walk(str(folder), prefix, files, [] if unhandled is None else unhandled, seen, [] if special is None else special)
    return sorted(files)


def discover_frames(
    root_dir: str | Path, unhandled: list[str] | None = None, special: list[str] | None = None
) -> dict[str, list[str]]:
    """{folder name: sorted frame-file paths relative to root_dir} for every sub-folder of root_dir.

    Names are kept exactly as on disk: '3006' and '3006 ' are two folders (folders.matching refuses them)."""
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
            listed = [(entry.name, entry.path, _follows(entry.is_dir)) for entry in entries]
    except PermissionError:
        raise _unreadable_folder(str(root), root=True) from None
    for name, path, is_dir in listed:
        if name.startswith("."):
            continue
        if is_dir:  # a symlinked person folder is followed
            persons[name] = frames_below(path, f"{name}/", unhandled, special)
        elif is_image_name(name):
            loose_images += 1
        elif is_archive(name) and unhandled is not None:  # e.g. a person's folder left as 1001.zip
            unhandled.append(name)
    if not persons:
        archives = sum(1 for name, _, is_dir in listed if not is_dir and is_archive(name))
        found = f" (it holds {loose_images} images directly)" if loose_images else ""
        found += f" (it holds {archives} archive(s), which are not read: unpack them)" if archives else ""
        raise UserError(
            f"root dir {root} has no person folders{found}",
            "put each person's frames in a sub-folder named by their ID",
        )
    return persons


# ---------------------------------------------------------------------------------------------
# Reading many files
# ---------------------------------------------------------------------------------------------


def bounded_map(fn: Callable, items: Iterable, workers: int = 8, window: int = 256) -> Iterator:
    """fn over items in threads, in order, with at most `window` calls queued: memory stays constant
    however many items there are (Executor.map would queue them all at once)."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def spread_evenly(frames: list, n: int | None) -> list:
    """n frames spread evenly over the sorted list (the middle of n equal stretches), deterministic."""
    if n is None or len(frames) <= n:
        return list(frames)
    return [frames[(2 * i + 1) * len(frames) // (2 * n)] for i in range(n)]


def _first(ids, k: int = 5) -> dict:
    ids = sorted(ids)
    return {"count": len(ids), "first": ids[:k]}
