"""What the start-up block warns about the files themselves (beyond the sheet and the matching): persons
sharing frame files, a person holding a large share of the frames, names that are not UTF-8, archives
that are not read, DICOM headers that claim more frames than the file holds. Each check returns warning
texts (data_report.json "warnings", printed as `warning:` lines) and what it found."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator

from carotid.core.text import is_utf8, plural, printable
from carotid.data.folders import twins
from carotid.data.folders.boilerplate import boilerplate_warning, split_boilerplate
from carotid.data.folders.discovery import bounded_map
from carotid.data.folders.frame_counts import FrameCounts
from carotid.data.frames.kinds import is_archive

DOMINANT_SHARE = 0.2  # a person holding ≥ 20% of the frames, and ≥ 3x an even share, is named
DOMINANT_FACTOR = 3
CONTENT_NAMES = {"dcm": "DICOM", "png": "PNG", "jpg": "JPEG", "bmp": "BMP", "tif": "TIFF"}  # by the right suffix


def audit_files(
    root_dir: str,
    found: dict[str, list[str]],
    files_of: dict[str, list[str]],
    frames: dict[str, list],
    counted: FrameCounts,
    unhandled: list[str],
    unreadable: list[dict],
    cap: int | None = None,
) -> tuple[dict, list[str]]:
    """(data_report.json keys, warnings) of the checks below, for the persons in `files_of` (`unhandled`:
    their image-like files not read and the archives, root-level ones included)."""
    archives, warnings = archive_warning(unhandled)
    unhandled = [u for u in unhandled if u not in archives]
    boilerplate, copies = split_boilerplate(shared_files(root_dir, {p: files_of[p] for p in frames}), frames)
    shared = _linked_persons(copies)
    if unreadable:
        warnings.insert(0, f"{plural(len(unreadable), 'unreadable image')} skipped (listed in data_report.json)")
    names = list(found) + [f for files in files_of.values() for f in files] + unhandled
    warnings += (
        short_warning(counted) + modality_warning(counted) + boilerplate_warning(boilerplate) + shared_warning(shared)
    )
    warnings += dominant_warning(frames, cap)
    report = {
        "unhandled_files": _first(unhandled + counted.not_images, 20),
        "archives": _first(archives, 20),
        "persons_sharing_files": shared,
        # Left out of training and of the twin check; every copy listed, so nothing vanishes unsaid.
        "boilerplate_files": [
            {"persons": len({p for p, _ in g}), "example": g[0][1], "files": sorted(f for _, f in g)}
            for g in boilerplate
        ],
    }
    return report, warnings + non_utf8_warning(names)


def _first(items: list[str], k: int) -> dict:
    return {"count": len(items), "first": sorted(items)[:k]}


# ---------------------------------------------------------------------------------------------
# Accounting for every file
# ---------------------------------------------------------------------------------------------


def files_report(counted: FrameCounts) -> dict:
    """data_report.json's account of the frame files by kind; with "unreadable_images" (headers),
    "files_without_frames" and "other_modality_dicom" every file of files_found is in one of them."""
    without = sorted(counted.skipped)
    return {
        "files_without_frames": {
            "count": len(without),
            "first": without[:20],
            "why": "DICOM without an image (DICOMDIR, report, RT plan), or a file named without a suffix whose "
            "content is no frame kind's (no DICOM preamble)",
        },
        "dicom_frames_missing": [
            {"path": rel, "header_frames": claimed, "frames_found": held}
            for rel, (claimed, held) in sorted(counted.short.items())
        ],
        "frames_by_kind": dict(counted.frames_by_kind),
        "files_by_kind": dict(counted.files_by_kind),
        "multi_frame_files": len(counted.counts),
        "dicom_colour_frames": counted.dicom_colour_frames,
        "dicom_files_with_ultrasound_region": counted.dicom_files_with_region,
        "frames_by_modality": dict(counted.frames_by_modality),
        "other_modality_dicom": [{"path": rel, "modality": m} for rel, m in sorted(counted.other_modality.items())],
        "files_read_by_content": misnamed_report(counted),
    }


def misnamed_report(counted: FrameCounts) -> dict:
    """data_report.json's files read as another kind than their name says, with the suffix to rename each to."""
    return {
        "count": len(counted.misnamed),
        "first": [
            {"path": rel, "content": CONTENT_NAMES.get(suffix, suffix.upper()), "rename_to": f".{suffix}"}
            for rel, suffix in sorted(counted.misnamed.items())[:20]
        ],
    }


def unreadable_list(counted: FrameCounts, failed: dict) -> list[dict]:
    """data_report.json's unreadable frames: files whose header failed, frames the start-up check failed."""
    unreadable = [
        {"path": rel, "frame": None, "reason": reason, "found_at": "discovery (header)"}
        for rel, reason in sorted(counted.unreadable.items())
    ] + [
        {"path": rel, "frame": index, "reason": reason, "found_at": "start-up check"}
        for (rel, index), reason in sorted(failed.items())
    ]
    return unreadable


# ---------------------------------------------------------------------------------------------
# Persons sharing frame files (the same file through a link, or identical content)
# ---------------------------------------------------------------------------------------------


# A stat slower than this (a network file system's round trip) is worth the reader threads; a local one
# (~2 µs) is not: there the threads add only the hand-offs of the interpreter's lock (200,000 files on
# 2 cores: 0.58 s on 8 threads against 0.37 s in one, PERFORMANCE.md).
SLOW_STAT_S = 20e-6


def _all_stats(root_fd: int, chunks: list[tuple[str, list[str]]]) -> Iterator[list]:
    """Each chunk's stats, in order: the first in this thread, timed; the rest in this thread too where
    that was fast, on the reader threads where it was not."""
    if not chunks:
        return
    started = time.perf_counter()
    first = _stats(root_fd, chunks[0][1])
    yield first
    if time.perf_counter() - started < SLOW_STAT_S * len(first):
        for _, part in chunks[1:]:
            yield _stats(root_fd, part)
    else:
        yield from bounded_map(lambda c: _stats(root_fd, c[1]), chunks[1:])


def _stats(root_fd: int, part: list[str]) -> list:
    # Relative to an open root folder: the kernel then resolves only the file's own path (~30% less time
    # a file than a full path, PERFORMANCE.md).
    out = []
    for rel in part:
        try:
            out.append(os.stat(rel, dir_fd=root_fd))
        except OSError:
            out.append(None)
    return out


def shared_files(
    root_dir: str, files_of: dict[str, list[str]], chunk: int = 1024, cache_dir: str | None = None
) -> list[list[tuple[str, str]]]:
    """[[(person, file), ...], ...]: one list per file reached from several persons (a linked folder or file, a
    hard link) or per content held by several persons' files (identical copies).

    One stat per file (in chunks; on the reader threads where a stat is slow, as on a network file system:
    they hide its latency; ~2 µs a file on a local disk, PERFORMANCE.md); contents are compared only for
    distinct files whose size another one shares (carotid.data.folders.twins: a prefix signature, the whole
    file only where that is shared, both cached between runs). Memory: one entry per distinct file (its
    first path, no copies), lists only where sizes collide."""
    chunks = [(p, files[i : i + chunk]) for p, files in files_of.items() for i in range(0, len(files), chunk)]
    owner: dict[tuple, tuple[str, str]] = {}  # (device, inode) → its first (person, file)
    linked: dict[tuple, dict[str, str]] = {}  # inodes reached from several persons: {person: file}
    first_of_size: dict[int, tuple] = {}
    same_size: dict[int, list] = {}  # sizes held by several distinct files: (inode key, mtime) of each
    root_fd = os.open(root_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for (person, part), stats in zip(chunks, _all_stats(root_fd, chunks)):
            for rel, stat in zip(part, stats):
                if stat is None:
                    continue
                key = (stat.st_dev, stat.st_ino)
                first = owner.get(key)
                if first is None:
                    owner[key] = (person, rel)
                    size = stat.st_size
                    other = first_of_size.get(size)
                    if other is None:
                        first_of_size[size] = (key, stat.st_mtime_ns)
                    else:
                        same_size.setdefault(size, [other]).append((key, stat.st_mtime_ns))
                elif first[0] != person:
                    linked.setdefault(key, {first[0]: first[1]}).setdefault(person, rel)
    finally:
        os.close(root_fd)
    found = [list(holders.items()) for holders in linked.values()]
    key_of = {owner[key][1]: key for keys in same_size.values() for key, _ in keys}
    candidates = [
        [twins.FileKey(owner[key][1], size, mtime, key[1]) for key, mtime in keys] for size, keys in same_size.items()
    ]
    for same in twins.equal_groups(root_dir, candidates, cache_dir):
        keys = [key_of[fk.rel] for fk in same]
        group = [item for key in keys for item in linked.get(key, dict([owner[key]])).items()]
        if len({p for p, _ in group}) > 1:
            found.append(group)
    return found


def _linked_persons(groups: list[list[tuple[str, str]]]) -> list[dict]:
    """Union of persons over the groups of shared files, each with one example pair of files."""
    parent: dict[str, str] = {}

    def root(p: str) -> str:
        while parent.setdefault(p, p) != p:
            p = parent[p]
        return p

    example: dict[frozenset, list[str]] = {}
    for group in groups:
        persons = sorted({p for p, _ in group})
        for other in persons[1:]:
            parent[root(other)] = root(persons[0])
        first = {}
        for p, f in group:
            first.setdefault(p, f)
        example.setdefault(frozenset(persons), [first[persons[0]], first[persons[1]]])
    linked: dict[str, list[str]] = defaultdict(list)
    for p in parent:
        linked[root(p)].append(p)
    out = []
    for members in linked.values():
        members = sorted(members)
        pair = next((e for k, e in example.items() if k <= set(members)), [])
        out.append({"persons": members, "example": pair})
    return sorted(out, key=lambda g: g["persons"])


def shared_warning(shared: list[dict]) -> list[str]:
    if not shared:
        return []
    persons = sum(len(g["persons"]) for g in shared)
    first = shared[0]
    return [
        f"{persons} persons share frame files with another person ({len(shared)} group(s), e.g. "
        f"{', '.join(map(repr, first['persons'][:4]))}: {' and '.join(first['example'])} are the same file or "
        "identical): the same frames under two IDs? Each group is kept in one split (never train and test); "
        "check the folders (a copied or linked folder)"
    ]


# ---------------------------------------------------------------------------------------------
# The other checks
# ---------------------------------------------------------------------------------------------


def dominant_warning(frames: dict[str, list], cap: int | None) -> list[str]:
    """A person holding a large share of the frames dominates the image-level metrics."""
    total = sum(len(f) for f in frames.values())
    if len(frames) < 3 or not total:
        return []
    even = 1 / len(frames)
    big = sorted(
        (p for p, f in frames.items() if len(f) / total >= max(DOMINANT_SHARE, DOMINANT_FACTOR * even)),
        key=lambda p: -len(frames[p]),
    )
    if not big:
        return []
    shown = ", ".join(f"'{p}' {len(frames[p])} of {total} ({len(frames[p]) / total:.0%})" for p in big[:3])
    capped = f" (now --max-imgs-per-person {cap})" if cap else ""
    return [
        f"{len(big)} person(s) hold a large share of the frames: {shown}; image-level metrics are dominated by "
        f"them (person-level ones are not): --max-imgs-per-person caps each person's frames{capped}"
    ]


def non_utf8_warning(names: list[str]) -> list[str]:
    if all(map(str.isascii, names)):  # the common case, in one pass without a Python call a name
        return []
    bad = sorted({n for n in names if not is_utf8(n)})
    if not bad:
        return []
    return [
        f"{len(bad)} path(s) hold file or folder names that are not valid UTF-8 (e.g. "
        f"{', '.join(printable(n) for n in bad[:3])}): "
        "they are read, and written with their bytes as \\xNN in the run's files; to keep the names readable, "
        "rename them or unpack the archive with its encoding (unzip -O GBK)"
    ]


def archive_warning(unhandled: list[str]) -> tuple[list[str], list[str]]:
    """(archives, warnings): archives are never opened; a person's folder left as 1001.zip is not read."""
    archives = sorted(u for u in unhandled if is_archive(u))
    if not archives:
        return [], []
    return archives, [
        f"{len(archives)} archive(s) found and not read (e.g. {', '.join(map(printable, archives[:3]))}): "
        "unpack each into its person's folder (named by the ID) and remove the archive"
    ]


def modality_warning(
    counted: FrameCounts, use: str = 'not trained or evaluated (listed in data_report.json "other_modality_dicom")'
) -> list[str]:
    if not counted.other_modality:
        return []
    modalities = sorted(set(counted.other_modality.values()))
    rel, first = next(iter(sorted(counted.other_modality.items())))
    return [
        f"{plural(len(counted.other_modality), 'DICOM file')} of another modality than ultrasound left out "
        f"({', '.join(modalities)}; e.g. {printable(rel)}: Modality {first}), {use}: remove them from the person "
        "folders, or export only the ultrasound series"
    ]


def special_warning(special: list[str]) -> list[str]:
    """Names of frames that are no regular file (a FIFO, a device, a socket, a link loop): never opened, since
    reading one could block for ever or never end (/dev/zero)."""
    if not special:
        return []
    return [
        f"{plural(len(special), 'entry', 'entries')} named like frames but not a regular file skipped, never opened "
        f"(e.g. {', '.join(printable(s) for s in sorted(special)[:3])}): a named pipe, a device or a link that "
        "leads nowhere (a loop); replace each with the frame file it stands for, or remove it"
    ]


def short_warning(counted: FrameCounts) -> list[str]:
    if not counted.short:
        return []
    rel, (claimed, held) = next(iter(sorted(counted.short.items())))
    return [
        f"{len(counted.short)} DICOM file(s) hold fewer frames than their header claims (e.g. {printable(rel)}: "
        f"NumberOfFrames {claimed}, pixel data for {held}): the frames found are read (listed in data_report.json)"
    ]
