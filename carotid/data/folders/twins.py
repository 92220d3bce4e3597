"""Which files have the same content, reading as little as possible (the mechanism of the shared-files check,
carotid.data.folders.sharing; carotid.data.folders.audit decides what a group of equal files means).

Files are compared only within a size (the caller groups them by their stat), by a cheap signature first —
the SHA-256 of their first 8 KiB — and whole only where that signature is shared. Each digest is kept
between runs in the user's cache folder, keyed by the file's path, size, mtime and inode, so a later start
reads only files that are new or changed. The cache is written only when the check read enough files for
re-reading them to cost more than loading the cache (CACHE_MIN_FILES); it is a hint, never a source of
truth: an entry whose key does not match the file now is ignored, and an unreadable cache is ignored."""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from carotid.core.files import atomic_write_text
from carotid.data.cache.index import default_cache_dir
from carotid.data.folders.discovery import bounded_map

HEAD_BYTES = 1 << 13  # the cheap signature: the hash of a file's first 8 KiB
HEAD_HEX, WHOLE_HEX = 16, 32  # digests kept (64 bits filter candidates; 128 bits decide equality)
CACHE_MIN_FILES = 2000  # digests of fewer files are recomputed each start (cheaper than reading the cache)
CACHE_VERSION = 2


class FileKey(NamedTuple):
    """A file as the check sees it: its path relative to the root and what says it has not changed."""

    rel: str
    size: int
    mtime_ns: int
    inode: int


@dataclass
class DigestCache:
    """The digests of earlier runs on one dataset root: {rel: [size, mtime_ns, inode, head, whole]}, saved as
    columns (one list per field: a few times faster to parse than a list per file)."""

    path: Path | None
    entries: dict[str, list] = field(default_factory=dict)
    computed: int = 0  # digests read from disk in this run

    @classmethod
    def load(cls, root_dir: str, cache_dir: str | Path | None) -> DigestCache:
        real = os.path.realpath(root_dir)
        name = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        path = Path(cache_dir or default_cache_dir()) / "file-digests" / f"{name}.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved["version"] != CACHE_VERSION or saved["root"] != real:
                return cls(path)
            stat = saved["stat"]
            columns = zip(stat[0::3], stat[1::3], stat[2::3], saved["head"], saved["whole"], strict=True)
            return cls(path, {rel: list(entry) for rel, entry in zip(saved["rel"], columns, strict=True)})
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path)

    def digests(self, root_dir: str, keys: list[FileKey], whole: bool) -> list[str | None]:
        """The digest of each file of `keys` (None: unreadable): saved by an earlier run for the file as it is
        now, or read, in chunks on the reader threads (a task per file would cost more in the thread pool than
        reading an 8 KiB prefix)."""
        slot = 4 if whole else 3
        entries = [self.entries.get(key.rel) for key in keys]
        out = [entry[slot] if _matches(entry, key) else None for entry, key in zip(entries, keys)]
        missing = [k for k, digest in enumerate(out) if digest is None]
        chunks = [missing[i : i + 256] for i in range(0, len(missing), 256)]
        limit = None if whole else HEAD_BYTES
        read = bounded_map(lambda c: [_digest(os.path.join(root_dir, keys[k].rel), limit) for k in c], chunks)
        for part, digests in zip(chunks, read):
            for k, digest in zip(part, digests):
                key, entry = keys[k], entries[k]
                if not _matches(entry, key):
                    entry = self.entries[key.rel] = [key.size, key.mtime_ns, key.inode, None, None]
                entry[slot] = out[k] = digest
        self.computed += len(missing)
        return out

    def save(self, root_dir: str, keep: set[str], min_files: int = CACHE_MIN_FILES) -> None:
        """Writes the cache when this run read at least `min_files` files (then the next start reads none of
        them), keeping only the entries of `keep` (the files that are still candidates). Failing to write is
        not an error: the next start recomputes."""
        if self.path is None or self.computed < min_files:
            return
        rels = [rel for rel in self.entries if rel in keep]
        rows = [self.entries[rel] for rel in rels]
        body = {
            "version": CACHE_VERSION,
            "root": os.path.realpath(root_dir),
            "rel": rels,
            "stat": [v for row in rows for v in row[:3]],
            "head": [row[3] for row in rows],
            "whole": [row[4] for row in rows],
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps(body, separators=(",", ":")))
        except OSError:
            pass


def _matches(entry, key: FileKey) -> bool:
    """Whether a saved entry is of this file as it is now (a hand-edited or foreign cache only misses)."""
    return isinstance(entry, list) and len(entry) == 5 and entry[:3] == [key.size, key.mtime_ns, key.inode]


def _digest(path: str, limit: int | None) -> str | None:
    try:
        with open(path, "rb") as handle:
            if limit is not None:
                return hashlib.sha256(handle.read(limit)).hexdigest()[:HEAD_HEX]
            return hashlib.file_digest(handle, "sha256").hexdigest()[:WHOLE_HEX]
    except OSError:
        return None


def equal_groups(
    root_dir: str,
    candidates: list[list[FileKey]],
    cache_dir: str | Path | None = None,
    min_cached: int = CACHE_MIN_FILES,
    cache: DigestCache | None = None,
) -> list[list[FileKey]]:
    """The groups of ≥ 2 files of identical content within each list of `candidates` (distinct files of one
    size each): the prefix signature first, the whole file only for those still equal; unreadable files are
    in no group. `cache`: one already loaded (default: this root's in `cache_dir`)."""
    if not candidates:
        return []
    cache = cache or DigestCache.load(root_dir, cache_dir)
    groups = candidates
    for whole in (False, True):
        keys = [key for group in groups for key in group]
        digest_of = dict(zip(keys, cache.digests(root_dir, keys, whole)))
        refined = []
        for group in groups:
            by_digest: dict[str, list[FileKey]] = defaultdict(list)
            for key in group:
                if digest_of[key] is not None:
                    by_digest[digest_of[key]].append(key)
            refined += [g for g in by_digest.values() if len(g) > 1]
        groups = refined
    cache.save(root_dir, {key.rel for group in candidates for key in group}, min_cached)
    return groups
