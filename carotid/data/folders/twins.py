"""Which files have the same content, reading as little as possible (the mechanism of the shared-files check,
carotid.data.folders.sharing; carotid.data.folders.audit decides what a group of equal files means).

Files are compared only within a size (the caller groups them by their stat), by a cheap signature first —
the SHA-256 of their first 8 KiB — and whole only where that signature is shared. Each digest is kept
between runs in the root's file cache (carotid.data.folders.file_cache), keyed by the file's path, size, mtime
and inode, so a later start reads only files that are new or changed; an entry whose key does not match the
file now is ignored."""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from pathlib import Path

from carotid.data.folders.discovery import bounded_map
from carotid.data.folders.file_cache import CACHE_MIN_FILES, FileCache, FileKey

HEAD_BYTES = 1 << 13  # the cheap signature: the hash of a file's first 8 KiB
HEAD_HEX, WHOLE_HEX = 16, 32  # digests kept (64 bits filter candidates; 128 bits decide equality)


def digests(cache: FileCache, root_dir: str, keys: list[FileKey], whole: bool) -> list[str | None]:
    """The digest of each file of `keys` (None: unreadable): saved by an earlier run for the file as it is now,
    or read, in chunks on the reader threads (a task per file would cost more in the thread pool than reading
    an 8 KiB prefix)."""
    slot = 4 if whole else 3
    cache.touched.update(key.rel for key in keys)
    entries = [cache.entries.get(key.rel) for key in keys]
    out = [entry[slot] if _matches(entry, key) else None for entry, key in zip(entries, keys)]
    missing = [k for k, digest in enumerate(out) if digest is None]
    chunks = [missing[i : i + 256] for i in range(0, len(missing), 256)]
    limit = None if whole else HEAD_BYTES
    read = bounded_map(lambda c: [_digest(os.path.join(root_dir, keys[k].rel), limit) for k in c], chunks)
    for part, found in zip(chunks, read):
        for k, digest in zip(part, found):
            key, entry = keys[k], entries[k]
            if not _matches(entry, key):
                entry = cache.entries[key.rel] = [key.size, key.mtime_ns, key.inode, None, None]
            entry[slot] = out[k] = digest
    cache.computed += len(missing)
    return out


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
    cache: FileCache | None = None,
) -> list[list[FileKey]]:
    """The groups of ≥ 2 files of identical content within each list of `candidates` (distinct files of one
    size each): the prefix signature first, the whole file only for those still equal; unreadable files are
    in no group. `cache`: one already loaded (default: this root's in `cache_dir`)."""
    if not candidates:
        return []
    cache = cache or FileCache.load(root_dir, cache_dir)
    groups = candidates
    for whole in (False, True):
        keys = [key for group in groups for key in group]
        digest_of = dict(zip(keys, digests(cache, root_dir, keys, whole)))
        refined = []
        for group in groups:
            by_digest: dict[str, list[FileKey]] = defaultdict(list)
            for key in group:
                if digest_of[key] is not None:
                    by_digest[digest_of[key]].append(key)
            refined += [g for g in by_digest.values() if len(g) > 1]
        groups = refined
    cache.save(root_dir, min_cached)
    return groups
