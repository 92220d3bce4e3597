"""Persons sharing frame files: the same file reached from several persons' folders (a linked folder or file,
a hard link) or identical content in them (a copied frame or folder). One `stat` per file; contents are
compared only where sizes collide (carotid.data.folders.twins). What a group means (the same person under
two IDs, or boilerplate held by many) is decided by the caller, carotid.data.folders.audit."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator

from carotid.data.folders import twins
from carotid.data.folders.discovery import bounded_map

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


def linked_persons(groups: list[list[tuple[str, str]]]) -> list[dict]:
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
