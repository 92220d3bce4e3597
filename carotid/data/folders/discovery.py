"""Finding each person's frames: one sub-folder of --root-dir per person, frame files anywhere below it.

Each frame found is a `Frame` (carotid.data.frames.frame). The walk only lists names; `count_frames` then
reads the header of the files that may hold several frames (TIFF, DICOM, video, and suffix-less files that
may be DICOM), a bounded number at a time, and of a file named as a single image only its first bytes (a
cine loop named .jpg is counted as the DICOM it is): single-image files are proven readable when they are
first decoded.
"""

from __future__ import annotations

import errno
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from carotid.core.errors import UserError
from carotid.core.library_words import reading
from carotid.data.frames.decode import describe_error
from carotid.data.frames.kinds import (
    BY_SUFFIX,
    FRAME_SUFFIXES,
    FileKind,
    content_of,
    is_archive,
    is_unhandled,
    kind_by_name,
    kind_of,
    may_sniff,
    reading_kind,
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
# Frames per file
# ---------------------------------------------------------------------------------------------


@dataclass
class FrameCounts:
    """What the headers of the multi-frame-capable files said. Memory: one entry per such file only."""

    counts: dict[str, int] = field(default_factory=dict)  # files holding other than one frame
    unreadable: dict[str, str] = field(default_factory=dict)  # header could not be read: the reason
    not_images: list[str] = field(default_factory=list)  # DICOM files without pixel data (DICOMDIR, reports)
    skipped: set[str] = field(default_factory=set)  # not frames: not_images and names no kind claims by content
    short: dict[str, tuple[int, int]] = field(default_factory=dict)  # (header's frame count, frames found)
    files_by_kind: Counter = field(default_factory=Counter)
    frames_by_kind: Counter = field(default_factory=Counter)
    dicom_colour_frames: int = 0
    dicom_files_with_region: int = 0
    other_modality: dict[str, str] = field(default_factory=dict)  # DICOM of another modality (CT, MR, …): left out
    frames_by_modality: Counter = field(default_factory=Counter)  # DICOM frames per header Modality
    patient_ids: dict[str, str] = field(default_factory=dict)  # DICOM files' header PatientID
    misnamed: dict[str, str] = field(default_factory=dict)  # read as another kind than named: the right suffix

    def frames_of(self, files: Iterable[str]) -> list[tuple[str, int]]:
        """(file, frame number) of every frame of `files`, in order; unreadable and non-image files left out."""
        if not (self.unreadable or self.skipped or self.other_modality or self.counts):
            return [(rel, 0) for rel in files]  # single-image files only: the common case, kept to one pass
        out: list[tuple[str, int]] = []
        for rel in files:
            if rel in self.unreadable or rel in self.skipped or rel in self.other_modality:
                continue
            frames = self.counts.get(rel, 1)
            if frames == 1:
                out.append((rel, 0))
            else:
                out += [(rel, k) for k in range(frames)]
        return out


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


def _probe(path: str):
    """The header's Probe; None for a file that holds no image (or, named by nothing, is no kind's by
    content); the reason as text when the header cannot be read."""
    try:
        kind = reading_kind(path)  # a PNG named .dcm is probed as the image it is
        with reading(path):  # a library's warning meanwhile names this file
            return None if kind is None else kind.probe(path)
    except Exception as err:  # noqa: BLE001 - a damaged header is reported, not fatal
        return describe_error(err)


# DICOM frames read as ultrasound: US, and the modalities an ultrasound machine's screen captures carry (OT other,
# SC secondary capture, XC external camera), or none named. A CT, MR or X-ray series is left out, named.
KEPT_MODALITIES = frozenset({"US", "IVUS", "OT", "SC", "XC", None})


def count_frames(root_dir: str, files: Iterable[str]) -> FrameCounts:
    """Frames per file for `files` (relative to root_dir); single-image files are counted without opening."""
    result = FrameCounts()
    to_probe = []
    single: Counter = Counter()
    singles: list[tuple[str, FileKind]] = []
    kinds: dict[str, FileKind | None] = {}  # by the text after a file name's last dot
    for rel in files:
        # The kind depends only on the suffix: asked once per distinct suffix, not once per file (at
        # 100,000s of files the per-file lookup was a visible part of start-up, PERFORMANCE.md).
        _, dot, tail = rel.rpartition(".")
        if not dot or "/" in tail:  # no dot in the file's own name: no suffix
            kind = None
        elif tail in kinds:
            kind = kinds[tail]
        else:
            kind = kinds[tail] = kind_by_name(rel)
        if kind is not None and kind.single_frame:
            singles.append((rel, kind))
        else:
            to_probe.append(rel)
    # A file named as a single image is still read by its content: a cine loop named .jpg is probed for its frames.
    for (rel, kind), content in zip(singles, _contents(root_dir, [rel for rel, _ in singles])):
        if content is not None and content[0] is not kind:
            result.misnamed[rel] = content[1]
            to_probe.append(rel)
        else:
            single[kind.name] += 1
    result.files_by_kind.update(single)
    result.frames_by_kind.update(single)
    # Threads hide file-system latency (NFS); header parsing itself holds the GIL.
    for rel, found in zip(to_probe, bounded_map(_probe, (os.path.join(root_dir, r) for r in to_probe))):
        if isinstance(found, str):
            result.unreadable[rel] = found
        elif found is None:
            if kind_by_name(rel) is None:  # named by nothing and no kind's by content: not a frame file
                result.skipped.add(rel)
            else:
                result.not_images.append(rel)
                result.skipped.add(rel)
        elif found.modality not in KEPT_MODALITIES:
            result.other_modality[rel] = found.modality
            result.frames_by_modality[found.modality] += found.frames
        else:
            named = kind_by_name(rel)
            if named is not None and named.name != found.kind and rel not in result.misnamed:  # a PNG named .dcm
                content = content_of(os.path.join(root_dir, rel))
                result.misnamed[rel] = content[1] if content else found.kind
            if found.kind == "dicom":
                result.frames_by_modality[found.modality or "not named"] += found.frames
                if found.patient_id is not None:
                    result.patient_ids[rel] = found.patient_id
            result.files_by_kind[found.kind] += 1
            result.frames_by_kind[found.kind] += found.frames
            if found.frames != 1:
                result.counts[rel] = found.frames
            if found.claimed is not None:
                result.short[rel] = (found.claimed, found.frames)
            result.dicom_colour_frames += found.frames if found.colour else 0  # only DICOM headers say
            result.dicom_files_with_region += found.region
    return result


# A read of a file's first bytes slower than this (a network file system's round trip) is worth the reader
# threads; a local one (~3 µs) is not: 100,000 files on 2 busy cores took 0.29 s in one thread, 0.57 s on 8.
SLOW_READ_S = 20e-6


def _contents(root_dir: str, files: list[str]) -> Iterator:
    """`content_of` each file, in order, 256 files a chunk: the first chunk in this thread, timed; the rest in
    this thread too where that was fast, on the reader threads where it was not."""
    chunks = [files[i : i + 256] for i in range(0, len(files), 256)]

    def read(chunk: list[str]) -> list:
        return [content_of(os.path.join(root_dir, rel)) for rel in chunk]

    if not chunks:
        return
    started = time.perf_counter()
    yield from read(chunks[0])
    fast = time.perf_counter() - started < SLOW_READ_S * len(chunks[0])
    for found in map(read, chunks[1:]) if fast else bounded_map(read, chunks[1:]):
        yield from found


def spread_evenly(frames: list, n: int | None) -> list:
    """n frames spread evenly over the sorted list (the middle of n equal stretches), deterministic."""
    if n is None or len(frames) <= n:
        return list(frames)
    return [frames[(2 * i + 1) * len(frames) // (2 * n)] for i in range(n)]


def _first(ids, k: int = 5) -> dict:
    ids = sorted(ids)
    return {"count": len(ids), "first": ids[:k]}
