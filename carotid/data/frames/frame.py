"""`Frame`, the record every stage after discovery passes on: the file, the frame's number inside it, the
person and the label."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Frame:
    """One 2-D image of a person: `index` numbers the frames of a multi-frame file (0 for a single image)."""

    path: str  # absolute path of the file
    person_id: str
    label: int  # class index (0 where unlabelled, as in predict)
    index: int = 0
