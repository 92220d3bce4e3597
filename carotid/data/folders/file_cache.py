"""What a start knows of the files below a dataset root: one `stat` a file, taken once and shared by the frame
counts (carotid.data.folders.frame_counts) and the shared-files check (carotid.data.folders.sharing), and what
was read from files' contents, kept between runs so that a later start reads only new or changed files.

`FileCache` is one file per dataset root in the user's cache folder. It holds each compared file's digests
(carotid.data.folders.twins), keyed by the file's path, size, mtime (ns) and inode; and, per group of files (up
to 1,024 of one person's files), what their first bytes say of their kind where that is not what their names
say, keyed by a fingerprint of every file's path, size, mtime and inode in the group: a file added, removed,
renamed or rewritten changes it, and the whole group is read again. The cache is a hint, never a source of
truth: an entry that does not match the files as they are now is not used, and an unreadable, foreign (another
root, another format) or malformed cache file is ignored as a whole. It is replaced atomically (a kill leaves
the old file or the new one), and only by a start that read at least CACHE_MIN_FILES files."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from carotid.core.files import atomic_write_text
from carotid.data.cache.index import default_cache_dir
from carotid.data.folders.discovery import bounded_map

CACHE_MIN_FILES = 2000  # a start that read fewer files writes nothing (reading them again is cheaper)
CACHE_VERSION = 3  # 3: the kinds of groups of files beside the digests
GROUP_FILES = 1024  # files of one person a group (and a chunk of stats)
MAX_GROUPS = 100_000  # kinds of groups kept (this run's first): other subsets of persons, within a bound
# A stat slower than this (a network file system's round trip) is worth the reader threads; a local one
# (~2 µs) is not: there the threads add only the hand-offs of the interpreter's lock (200,000 files on
# 2 cores: 0.58 s on 8 threads against 0.37 s in one, PERFORMANCE.md).
SLOW_STAT_S = 20e-6


class FileKey(NamedTuple):
    """A file as the digests see it: its path relative to the root and what says it has not changed."""

    rel: str
    size: int
    mtime_ns: int
    inode: int


# One file's stat as the checks use it: (inode, device, size, mtime_ns); None where the file cannot be stat'ed.
Stat = tuple[int, int, int, int]


@dataclass
class FileCache:
    """Digests: {rel: [size, mtime_ns, inode, head, whole]} (saved as columns: a few times faster to parse than a
    list per file); kinds: {group fingerprint: {rel: the suffix its first bytes say}} (only files whose content is
    another kind than their name's)."""

    path: Path | None
    entries: dict[str, list] = field(default_factory=dict)
    kinds: dict[str, dict] = field(default_factory=dict)
    computed: int = 0  # digests read from disk in this run
    kinds_read: int = 0  # first bytes read in this run
    touched: set[str] = field(default_factory=set)  # files whose digests this run asked for (kept when saved)
    groups_seen: list[str] = field(default_factory=list)  # fingerprints of this run's groups (kept first)
    _written_at: int = 0

    @classmethod
    def load(cls, root_dir: str, cache_dir: str | Path | None) -> FileCache:
        real = os.path.realpath(root_dir)
        name = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        path = Path(cache_dir or default_cache_dir()) / "file-digests" / f"{name}.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["version"] != CACHE_VERSION or saved["root"] != real:
                return cls(path)
            stat, kinds = saved["stat"], saved["kinds"]
            if not isinstance(kinds, dict) or not all(isinstance(v, dict) for v in kinds.values()):
                return cls(path)
            columns = zip(stat[0::3], stat[1::3], stat[2::3], saved["head"], saved["whole"], strict=True)
            return cls(path, {rel: list(entry) for rel, entry in zip(saved["rel"], columns, strict=True)}, kinds)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls(path)

    def save(self, root_dir: str, min_files: int = CACHE_MIN_FILES) -> None:
        """Writes the cache when this run read at least `min_files` files (then the next start reads none of
        them) and read more since it last wrote, keeping the digests of the files this run compared and the
        kinds of this run's groups first. Failing to write is not an error: the next start reads again."""
        read = self.computed + self.kinds_read
        if self.path is None or read < min_files or read == self._written_at:
            return
        rels = [rel for rel in self.entries if rel in self.touched]
        rows = [self.entries[rel] for rel in rels]
        order = dict.fromkeys(self.groups_seen + list(self.kinds))
        kinds = {fp: self.kinds[fp] for fp in list(order)[:MAX_GROUPS] if fp in self.kinds}
        body = {
            "version": CACHE_VERSION,
            "root": os.path.realpath(root_dir),
            "rel": rels,
            "stat": [v for row in rows for v in row[:3]],
            "head": [row[3] for row in rows],
            "whole": [row[4] for row in rows],
            "kinds": kinds,
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(body, separators=(",", ":")))
            self._written_at = read
        except OSError:
            pass


@dataclass
class FileFacts:
    """One stat of every file of `files_of` (per person, in the order of its files), the groups' fingerprints,
    and the cache of earlier runs on this root."""

    root_dir: str
    stats: dict[str, list[Stat | None]]
    groups: list[tuple[str, list[str]]]  # (fingerprint, files)
    cache: FileCache

    @classmethod
    def gather(cls, root_dir: str, files_of: dict[str, list[str]], cache_dir: str | Path | None = None) -> FileFacts:
        chunks = [
            (p, files[i : i + GROUP_FILES]) for p, files in files_of.items() for i in range(0, len(files), GROUP_FILES)
        ]
        stats: dict[str, list[Stat | None]] = {p: [] for p in files_of}
        groups = []
        root_fd = os.open(root_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            for (person, part), found in zip(chunks, _all_stats(root_fd, [part for _, part in chunks])):
                stats[person] += found
                groups.append((_fingerprint(part, found), part))
        finally:
            os.close(root_fd)
        return cls(root_dir, stats, groups, FileCache.load(root_dir, cache_dir))

    def known_kinds(self, codes: frozenset[str]) -> tuple[set[str], dict[str, str]]:
        """(the files of the groups no earlier run read as they are now, {file: the suffix its first bytes say}
        of the other groups' files whose content is another kind than their name's). A group whose entry holds
        anything but one of `codes` counts as unknown."""
        unknown: set[str] = set()
        misnamed: dict[str, str] = {}
        for fingerprint, files in self.groups:
            entry = self.cache.kinds.get(fingerprint)
            if entry is None or not all(isinstance(code, str) and code in codes for code in entry.values()):
                unknown.update(files)
            elif entry:
                names = set(files)
                misnamed.update((rel, code) for rel, code in entry.items() if rel in names)
        return unknown, misnamed

    def remember_kinds(self, read: dict[str, str | None]) -> None:
        """Keeps what this run read of files' first bytes ({file: suffix, "" as named, None: could not be read})
        for each group it read; a group with a file that could not be read is not kept (read again next time)."""
        self.cache.kinds_read += len(read)
        for fingerprint, files in self.groups:
            self.cache.groups_seen.append(fingerprint)
            found = [(rel, read[rel]) for rel in files if rel in read]
            if found and all(code is not None for _, code in found):
                self.cache.kinds[fingerprint] = {rel: code for rel, code in found if code}

    def save(self) -> None:
        self.cache.save(self.root_dir)


def _fingerprint(files: list[str], stats: list[Stat | None]) -> str:
    """A group's key: its files' paths, and each one's size, mtime, inode and device. Python's hash of a tuple of
    ints is the same in every process of one interpreter version (only str and bytes hashes are salted); another
    version gives another value, which only reads the group again."""
    names = hashlib.blake2b("\0".join(files).encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
    return f"{names}{hash(tuple(stats)) & 0xFFFFFFFFFFFFFFFF:016x}"


def _all_stats(root_fd: int, chunks: list[list[str]]) -> Iterator[list[Stat | None]]:
    """Each chunk's stats, in order: the first in this thread, timed; the rest in this thread too where
    that was fast, on the reader threads where it was not."""
    if not chunks:
        return
    started = time.perf_counter()
    first = _stats(root_fd, chunks[0])
    yield first
    if time.perf_counter() - started < SLOW_STAT_S * len(first):
        for part in chunks[1:]:
            yield _stats(root_fd, part)
    else:
        yield from bounded_map(lambda part: _stats(root_fd, part), chunks[1:])


def _stats(root_fd: int, part: list[str]) -> list[Stat | None]:
    # Relative to an open root folder: the kernel then resolves only the file's own path (~30% less time
    # a file than a full path, PERFORMANCE.md).
    out: list[Stat | None] = []
    append, stat = out.append, os.stat
    for rel in part:
        try:
            st = stat(rel, dir_fd=root_fd)
        except OSError:
            append(None)
            continue
        append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
    return out
