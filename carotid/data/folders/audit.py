"""What the start-up block warns about the files themselves (beyond the sheet and the matching): persons
sharing frame files (found by carotid.data.folders.sharing), a person holding a large share of the frames,
names that are not UTF-8, archives that are not read, DICOM headers that claim more frames than the file
holds. Each check returns warning texts (data_report.json "warnings", printed as `warning:` lines) and what
it found."""

from __future__ import annotations

from carotid.core.text import is_utf8, plural, printable
from carotid.data.folders.boilerplate import boilerplate_warning, split_boilerplate
from carotid.data.folders.file_cache import FileFacts
from carotid.data.folders.frame_counts import FrameCounts
from carotid.data.folders.sharing import linked_persons, shared_files, shared_warning
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
    facts: FileFacts | None = None,
) -> tuple[dict, list[str]]:
    """(data_report.json keys, warnings) of the checks below, for the persons in `files_of` (`unhandled`:
    their image-like files not read and the archives, root-level ones included; `facts`: their stats, taken
    once)."""
    archives, warnings = archive_warning(unhandled)
    unhandled = [u for u in unhandled if u not in archives]
    sharing = shared_files(root_dir, {p: files_of[p] for p in frames}, facts=facts)
    boilerplate, copies = split_boilerplate(sharing, frames)
    shared = linked_persons(copies)
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
