"""Files identical in many persons' folders (a calibration frame, a logo, a hospital's test pattern): boilerplate,
not one person's frames under several IDs. They are left out of training and of the same-frames (twin) check,
named in a warning and listed in data_report.json "boilerplate_files"."""

from __future__ import annotations

from carotid.core.text import plural, printable

# A file identical in this many persons' folders is boilerplate (a calibration frame, a logo), not the same
# person twice: a copied or linked folder joins two persons. Twin-grouping on it would make everyone one group.
BOILERPLATE_PERSONS = 3


def split_boilerplate(groups: list[list[tuple[str, str]]], frames: dict[str, list]) -> tuple[list, list]:
    """(boilerplate, twins) of `shared_files`' groups. A content held by BOILERPLATE_PERSONS or more persons is
    boilerplate, unless it is all some holder has (three copies of one folder are one person thrice)."""
    many = [g for g in groups if len({p for p, _ in g}) >= BOILERPLATE_PERSONS]
    files = {f for g in many for _, f in g}
    emptied = {p for p, person_frames in frames.items() if all(rel in files for rel, _ in person_frames)}
    boilerplate = [g for g in many if not {p for p, _ in g} & emptied]
    kept = {id(g) for g in boilerplate}
    return boilerplate, [g for g in groups if id(g) not in kept]


def without_boilerplate(frames: dict[str, list], boilerplate: list[dict]) -> dict[str, list]:
    """Each person's frames less the boilerplate files (data_report.json "boilerplate_files")."""
    left_out = {f for g in boilerplate for f in g["files"]}
    if not left_out:
        return frames
    return {p: [f for f in person_frames if f[0] not in left_out] for p, person_frames in frames.items()}


def boilerplate_warning(boilerplate: list[list[tuple[str, str]]]) -> list[str]:
    if not boilerplate:
        return []
    copies = sum(len(g) for g in boilerplate)
    first = max(boilerplate, key=len)
    return [
        f"{plural(len(boilerplate), 'file')} identical in {BOILERPLATE_PERSONS} or more persons' folders "
        f"({copies} copies; e.g. {printable(first[0][1])}, in {len({p for p, _ in first})} persons) left out of "
        "training and of the same-frames check: boilerplate (a calibration frame, a logo), not one person's "
        'frames under two IDs (listed in data_report.json "boilerplate_files"); remove them from the person '
        "folders to silence this"
    ]
