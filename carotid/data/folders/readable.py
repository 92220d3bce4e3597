"""Proving frames readable without opening every file up front.

At start-up `check_sample` decodes a bounded sample (SAMPLE frames spread evenly over all of them, every
frame of a small dataset) through the real decoder: a broken decoder set-up or a dataset of colour or
crushed frames shows before training, at a cost that does not grow with the dataset. Every other frame
is proven when it is first decoded (cache build, training, evaluation): the datasets return a status
per frame (`carotid.data.frames.decode` flags, 0 = not decodable) and `decode_summary` turns the statuses a
run gathered into the lists of data_report.json and metrics.json, with each failure's reason.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from carotid.core.text import plural, printable
from carotid.data.folders.discovery import bounded_map, spread_evenly
from carotid.data.frames.decode import COLOUR, LOW_RANGE, OK, SEEN, decode_frames
from carotid.data.frames.frame import Frame
from carotid.data.frames.preprocessing import Preprocessing

SAMPLE = 64  # frames decoded at start-up: every frame of a small dataset, a fixed cost for a large one
REASONS_MAX = 200  # failures whose reason is found by decoding them again; the rest are listed without one
CHECK_PREPROCESSING = Preprocessing(32, 3, "stretch", "auto")  # flags do not depend on size or resize mode


@dataclass
class SampleCheck:
    checked: int = 0
    colour: int = 0
    low_range: int = 0
    failed: dict[tuple[str, int], str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "frames_checked": self.checked,
            "colour_frames": self.colour,
            "low_range_frames": self.low_range,
            "failed": len(self.failed),
        }


def check_sample(root_dir: str, frames: dict[str, list[tuple[str, int]]], size: int = SAMPLE) -> SampleCheck:
    """Decode `size` frames spread evenly over all persons' frames (all of them when there are fewer)."""
    everything = [frame for person in sorted(frames) for frame in frames[person]]
    by_file: dict[str, list[int]] = defaultdict(list)
    for rel, index in spread_evenly(everything, size):
        by_file[rel].append(index)
    result = SampleCheck()
    files = list(by_file.items())
    # On the reader threads, one file each: the decoders release the interpreter's lock, so the sample costs the
    # first batch a fraction of its decoding time on a multi-core machine (PERFORMANCE.md, the first step).
    decoded = bounded_map(
        lambda item: decode_frames(os.path.join(root_dir, item[0]), item[1], CHECK_PREPROCESSING), files, _workers()
    )
    for (rel, indices), outcomes in zip(files, decoded):
        for index, outcome in zip(indices, outcomes):
            result.checked += 1
            if isinstance(outcome, str):
                result.failed[(rel, index)] = outcome
            else:
                result.colour += bool(outcome[1] & COLOUR)
                result.low_range += bool(outcome[1] & LOW_RANGE)
    return result


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(8, cpus))


def failure_reason(frame: Frame, prep: Preprocessing) -> str:
    """Why a frame that failed in a loader fails (decoded again, in this process)."""
    outcome = decode_frames(frame.path, [frame.index], prep)[0]
    return outcome if isinstance(outcome, str) else "decoded now, failed when it was read (file changed or I/O error)"


def decode_summary(frames: list[Frame], status: np.ndarray, prep: Preprocessing) -> dict:
    """Counts and the list of undecodable frames from per-frame statuses (SEEN | flags; SEEN absent = never read)."""
    status = np.asarray(status, dtype=np.int64)
    seen = (status & SEEN) > 0
    failed = np.flatnonzero(seen & ((status & OK) == 0))
    unreadable = []
    for k, i in enumerate(failed):
        frame = frames[i]
        reason = failure_reason(frame, prep) if k < REASONS_MAX else "not decoded again (too many failures)"
        unreadable.append({"path": frame.path, "frame": frame.index, "person_id": frame.person_id, "reason": reason})
    return {
        "frames": int(seen.sum()),
        "decoded": int((seen & ((status & OK) > 0)).sum()),
        "colour_frames": int((seen & ((status & COLOUR) > 0)).sum()),
        "low_range_frames": int((seen & ((status & LOW_RANGE) > 0)).sum()),
        "unreadable": unreadable,
    }


def dataset_decoding(dataset, status: np.ndarray, prep: Preprocessing) -> dict:
    """`decode_summary` of a dataset's frames, with the frames its cache build found undecodable first."""
    summary = decode_summary(dataset.frames, status, prep)
    cached = [
        {"path": path, "frame": index, "reason": reason, "found_at": "cache build"}
        for (path, index), reason in getattr(dataset, "excluded", {}).items()
    ]
    return summary | {"unreadable": cached + summary["unreadable"]}


def startup_lines(report: dict, in_channels: int) -> list[str]:
    """The start-up block's lines about the frames: kinds, multi-frame files, the check, colour, crop."""
    files = report.get("files_by_kind", {})
    kinds = ", ".join(  # frames and files counted apart: a multi-frame DICOM is one file of many frames
        f"{kind}: {plural(n, 'frame')} in {plural(files.get(kind, 0), 'file')}"
        for kind, n in sorted(report.get("frames_by_kind", {}).items())
    )
    lines = [
        f"frames: {report['images_found']} in {plural(report['files_found'], 'file')} ({kinds}); "
        f"{plural(report.get('multi_frame_files', 0), 'multi-frame file')}; {report['images_used']} used"
    ]
    check = report.get("start_up_check")
    if check:
        lines.append(
            f"check: {check['frames_checked']} frames decoded at start (the rest when first read): "
            f"{check['failed']} failed, {check['colour_frames']} colour, "
            f"{check['low_range_frames']} with a tiny grey range"
        )
        if check["colour_frames"] and in_channels == 1:
            lines.append(
                f"warning: {check['colour_frames']} of the {check['frames_checked']} checked frames are colour and are "
                "converted to grey (--in-channels 1); colour Doppler is a different input: consider --in-channels 3"
            )
        if check["low_range_frames"]:
            lines.append(
                f"warning: {check['low_range_frames']} checked frame(s) use under 16 grey levels (blank, or "
                "crushed by their intensity range); see data_report.json after the run"
            )
    if report.get("dicom_colour_frames"):
        lines.append(
            f"note: {report['dicom_colour_frames']} DICOM frame(s) are stored as colour (RGB, YBR or palette); "
            "a frame counts as colour above only where it shows colour"
        )
    if report.get("dicom_files_with_ultrasound_region"):
        lines.append(
            f"note: {report['dicom_files_with_ultrasound_region']} DICOM file(s) name an ultrasound imaging region: "
            "--crop auto uses it"
        )
    lines += [f"note: {note}" for note in misnamed_note(report.get("files_read_by_content"))]
    unhandled = report.get("unhandled_files") or {"count": 0}
    if unhandled["count"]:
        lines.append(
            f"warning: {unhandled['count']} file(s) look like images but are not read, e.g. "
            f"{', '.join(unhandled['first'][:3])} (listed in data_report.json)"
        )
    return lines


def misnamed_note(misnamed: dict | None) -> list[str]:
    """The note on files read as another kind than their name says (a DICOM named .jpg; data_report.json
    "files_read_by_content"): others' tools go by the name."""
    if not misnamed or not misnamed["count"]:
        return []
    first, many = misnamed["first"][0], misnamed["count"] > 1
    path = first["path"]
    renamed = path.rpartition("/")[2].rpartition(".")[0] + first["rename_to"]
    listed = '; all listed in data_report.json "files_read_by_content"' if many else ""
    its, it = ("their", "them") if many else ("its", "it")
    return [
        f"{plural(misnamed['count'], 'file')} read by {its} content, not {its} name (e.g. {printable(path)} "
        f"is a {first['content']} file{listed}) — rename {it} (e.g. to {printable(renamed)}) so that other tools "
        f"read {it} too"
    ]


def summary_line(split: str, summary: dict) -> str:
    return (
        f"{split}: {plural(len(summary['unreadable']), 'frame')} could not be decoded, {summary['colour_frames']} "
        f"colour, {summary['low_range_frames']} with a tiny grey range, of {summary['frames']} read"
    )
