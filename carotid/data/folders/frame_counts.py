"""Frames per file: how many frames each file found by discovery (carotid.data.folders.discovery) holds, read from
as little of it as possible.

`count_frames` reads the header of the files that may hold several frames (TIFF, DICOM, video, and suffix-less
files that may be DICOM), a bounded number at a time, and of a file named as a single image only its first
bytes: a cine loop named .jpg is counted as the DICOM it is. Single images are proven readable when they are
first decoded. What the headers said (`FrameCounts`) feeds the frame lists, the checks and data_report.json.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat

from carotid.core.library_words import reading
from carotid.data.folders.discovery import bounded_map
from carotid.data.folders.file_cache import FileFacts
from carotid.data.frames.decode import describe_error
from carotid.data.frames.kinds import (
    CONTENT_BY_SUFFIX,
    FileKind,
    content_in,
    content_of,
    head_of,
    kind_by_name,
    reading_kind,
)


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
            return list(zip(files, repeat(0)))  # single-image files only: the common case, one pass in C
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


def count_frames(root_dir: str, files: Iterable[str], facts: FileFacts | None = None) -> FrameCounts:
    """Frames per file for `files` (relative to root_dir). A file named as a single image is opened for its first
    bytes only, and not at all where `facts` holds them from an earlier run on the file as it is now."""
    result = FrameCounts()
    to_probe: list[str] = []
    singles: dict[FileKind, list[str]] = {}  # files named as single images, by their kind
    target_of: dict[str, list[str]] = {}  # by the text after a file name's last dot: the list its files go to
    for rel in files:
        # The kind depends only on the suffix: asked once per distinct suffix, not once per file (at
        # 100,000s of files the per-file lookup was a visible part of start-up, PERFORMANCE.md).
        _, dot, tail = rel.rpartition(".")
        if not dot or "/" in tail:  # no dot in the file's own name: no suffix
            to_probe.append(rel)
            continue
        target = target_of.get(tail)
        if target is None:
            kind = kind_by_name(rel)
            is_single = kind is not None and kind.single_frame
            target = target_of[tail] = singles.setdefault(kind, []) if is_single else to_probe
        target.append(rel)
    # A file named as a single image is still read by its content: a cine loop named .jpg is probed for its frames.
    misnamed = _misnamed(root_dir, singles, facts)
    single = Counter({kind.name: len(rels) for kind, rels in singles.items()})
    for rel in sorted(misnamed):
        result.misnamed[rel] = misnamed[rel]
        to_probe.append(rel)
        single[kind_by_name(rel).name] -= 1
    single = +single  # kinds all of whose files were another kind are not counted
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


def _misnamed(root_dir: str, singles: dict[FileKind, list[str]], facts: FileFacts | None) -> dict[str, str]:
    """{file: the suffix its first bytes say} of the files named as single images whose content is another kind:
    as an earlier run read them where `facts` knows their group as it is now, else read (and kept in `facts`)."""
    unknown, known = facts.known_kinds(frozenset(CONTENT_BY_SUFFIX)) if facts is not None else (None, {})
    # Only what an earlier run can have kept: files named as single images (a hand-edited cache gives nothing away).
    misnamed = {rel: code for rel, code in known.items() if getattr(kind_by_name(rel), "single_frame", False)}
    if unknown is None:
        missing = [(rel, kind) for kind, rels in singles.items() for rel in rels]
    else:  # on a start after an unchanged one, no group is unknown: no file is opened
        missing = [(rel, kind) for kind, rels in singles.items() for rel in rels if rel in unknown] if unknown else []
    codes: dict[str, str | None] = {}  # the suffix its first bytes say, "" for the name's kind, None: not read
    for (rel, kind), content in zip(missing, _contents(root_dir, [rel for rel, _ in missing])):
        codes[rel] = None if content is UNREAD else "" if content is None or content[0] is kind else content[1]
    if facts is not None:
        facts.remember_kinds(codes)
    misnamed.update((rel, code) for rel, code in codes.items() if code)
    return misnamed


UNREAD = object()  # a file whose first bytes could not be read (kept by no cache: read again next time)


def _contents(root_dir: str, files: list[str]) -> Iterator:
    """`content_in` each file's first bytes (UNREAD where it cannot be read), in order, 256 files a chunk: the
    first chunk in this thread, timed; the rest in this thread too where that was fast, on the reader threads
    where it was not."""
    chunks = [files[i : i + 256] for i in range(0, len(files), 256)]
    if not chunks:
        return
    # Opened relative to the open root folder: 0.32 against 0.45 CPU s for 200,000 files here (PERFORMANCE.md).
    root_fd = os.open(root_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def read(chunk: list[str]) -> list:
        heads = [head_of(rel, root_fd) for rel in chunk]
        return [UNREAD if head is None else content_in(head) for head in heads]

    try:
        started = time.perf_counter()
        yield from read(chunks[0])
        fast = time.perf_counter() - started < SLOW_READ_S * len(chunks[0])
        for found in map(read, chunks[1:]) if fast else bounded_map(read, chunks[1:]):
            yield from found
    finally:
        os.close(root_fd)
