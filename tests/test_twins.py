"""carotid.data.folders.twins: equal content found by a prefix signature and a whole-file hash, cached between runs by
path, size, mtime and inode, and never trusted over the file as it is now."""

from __future__ import annotations

import json
import os

from carotid.data.folders import file_cache, twins


def keys_of(root, names):
    out = []
    for name in names:
        st = os.stat(root / name)
        out.append(twins.FileKey(name, st.st_size, st.st_mtime_ns, st.st_ino))
    return out


def write(root, name, data: bytes):
    (root / name).write_bytes(data)


def groups_of(root, names, cache_dir, cache=None):
    found = twins.equal_groups(str(root), [keys_of(root, names)], cache_dir, min_cached=0, cache=cache)
    return sorted(sorted(k.rel for k in g) for g in found)


def test_equal_content_is_grouped_and_a_shared_prefix_alone_is_not(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    head = os.urandom(twins.HEAD_BYTES)
    write(root, "a.png", head + b"tail-1")
    write(root, "b.png", head + b"tail-1")  # a copy
    write(root, "c.png", head + b"tail-2")  # same size and first 8 KiB, different end
    write(root, "d.png", os.urandom(twins.HEAD_BYTES + 6))
    assert groups_of(root, ["a.png", "b.png", "c.png", "d.png"], cache_dir) == [["a.png", "b.png"]]


def test_a_second_start_reads_no_file_and_a_changed_file_is_read_again(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    body = os.urandom(20_000)
    for name in ("a.png", "b.png", "c.png"):
        write(root, name, body if name != "c.png" else os.urandom(20_000))
    names = ["a.png", "b.png", "c.png"]
    first = file_cache.FileCache.load(str(root), cache_dir)
    assert groups_of(root, names, cache_dir, first) == [["a.png", "b.png"]]
    assert first.computed == 5  # three prefixes, then the two files that share theirs, whole
    saved = json.loads(next((cache_dir / "file-digests").glob("*.json")).read_text(encoding="utf-8"))
    assert sorted(saved["rel"]) == names and saved["root"] == os.path.realpath(root)

    again = file_cache.FileCache.load(str(root), cache_dir)
    assert groups_of(root, names, cache_dir, again) == [["a.png", "b.png"]]
    assert again.computed == 0

    # c.png rewritten in place with a's content (same size): its mtime moved, so it is read again, not trusted.
    write(root, "c.png", body)
    st = os.stat(root / "c.png")
    os.utime(root / "c.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = file_cache.FileCache.load(str(root), cache_dir)
    assert groups_of(root, names, cache_dir, third) == [["a.png", "b.png", "c.png"]]
    assert third.computed == 2  # c.png's prefix and its whole content


def test_a_small_check_writes_no_cache_and_a_broken_cache_is_ignored(tmp_path):
    root, cache_dir = tmp_path / "data", tmp_path / "cache"
    root.mkdir()
    for name in ("a.png", "b.png"):
        write(root, name, b"same bytes")
    found = twins.equal_groups(str(root), [keys_of(root, ["a.png", "b.png"])], cache_dir)
    assert [sorted(k.rel for k in g) for g in found] == [["a.png", "b.png"]]
    assert not (cache_dir / "file-digests").exists()  # 4 reads: under CACHE_MIN_FILES

    path = file_cache.FileCache.load(str(root), cache_dir).path
    path.parent.mkdir(parents=True)
    path.write_text("{not json", encoding="utf-8")
    assert groups_of(root, ["a.png", "b.png"], cache_dir) == [["a.png", "b.png"]]
    # A cache of another root, or one whose entry does not match the file, gives nothing away either.
    other = {"version": file_cache.CACHE_VERSION, "root": "/elsewhere", "rel": ["a.png"], "stat": [10, 0, 0]}
    path.write_text(json.dumps(other | {"head": ["x"], "whole": ["x"]}), encoding="utf-8")
    assert file_cache.FileCache.load(str(root), cache_dir).entries == {}
    path.write_text(json.dumps(other | {"root": os.path.realpath(root), "head": [], "whole": []}), encoding="utf-8")
    assert file_cache.FileCache.load(str(root), cache_dir).entries == {}  # columns of unequal length
