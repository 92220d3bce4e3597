"""Persons sharing frame files: the same file reached from several persons' folders (a linked folder or file,
a hard link) or identical content in them (a copied frame or folder). One `stat` per file (shared with the
frame counts: carotid.data.folders.file_cache); contents are
compared only where sizes collide (carotid.data.folders.twins). What a group means (the same person under
two IDs, or boilerplate held by many) is decided by the caller, carotid.data.folders.audit."""

from __future__ import annotations

from collections import defaultdict

from carotid.data.folders import twins
from carotid.data.folders.file_cache import FileFacts


def shared_files(
    root_dir: str, files_of: dict[str, list[str]], cache_dir: str | None = None, facts: FileFacts | None = None
) -> list[list[tuple[str, str]]]:
    """[[(person, file), ...], ...]: one list per file reached from several persons (a linked folder or file, a
    hard link) or per content held by several persons' files (identical copies).

    One stat per file (`facts`, taken once for the frame counts and this check; carotid.data.folders.file_cache);
    contents are compared only for distinct files whose size another one shares (carotid.data.folders.twins: a
    prefix signature, the whole file only where that is shared, both cached between runs). Memory: one entry per
    distinct file (its first path, no copies), lists only where sizes collide."""
    facts = facts or FileFacts.gather(root_dir, files_of, cache_dir)
    owner: dict[tuple, tuple[str, str]] = {}  # (device, inode) → its first (person, file)
    linked: dict[tuple, dict[str, str]] = {}  # inodes reached from several persons: {person: file}
    first_of_size: dict[int, tuple] = {}
    same_size: dict[int, list] = {}  # sizes held by several distinct files: (inode key, mtime) of each
    for person, files in files_of.items():
        for rel, stat in zip(files, facts.stats[person]):
            if stat is None:
                continue
            key = stat[:2]  # (inode, device)
            first = owner.get(key)
            if first is None:
                owner[key] = (person, rel)
                size = stat[2]
                other = first_of_size.get(size)
                if other is None:
                    first_of_size[size] = (key, stat[3])
                else:
                    same_size.setdefault(size, [other]).append((key, stat[3]))
            elif first[0] != person:
                linked.setdefault(key, {first[0]: first[1]}).setdefault(person, rel)
    found = [list(holders.items()) for holders in linked.values()]
    key_of = {owner[key][1]: key for keys in same_size.values() for key, _ in keys}
    candidates = [
        [twins.FileKey(owner[key][1], size, mtime, key[0]) for key, mtime in keys] for size, keys in same_size.items()
    ]
    for same in twins.equal_groups(root_dir, candidates, cache=facts.cache):
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
