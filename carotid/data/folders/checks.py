"""Person folders that cannot be trained as they are: a person's folder dragged into another's, a folder holding
only DICOM of another modality (a CT or MR series). Each is an error naming the folder and the fix."""

from __future__ import annotations

import os

from carotid.core.errors import UserError
from carotid.core.text import printable
from carotid.data.folders.frame_counts import FrameCounts
from carotid.data.folders.matching import Matching, nested_person_folder


def check_modalities(no_images: list[str], files_of: dict[str, list[str]], counted: FrameCounts) -> None:
    """A person whose folder holds DICOM of another modality and no ultrasound frame is an error, not left out."""
    for person in no_images:
        other = [rel for rel in files_of[person] if rel in counted.other_modality]
        if other:
            raise UserError(
                f"person {printable(person)}'s folder holds no ultrasound frame, only DICOM of modality "
                f"{', '.join(sorted({counted.other_modality[r] for r in other}))} (e.g. {printable(other[0])})",
                "put the person's ultrasound frames in the folder, or remove the person's row from the sheet",
            )


def check_nested(files_of: dict[str, list[str]], matching: Matching, root_dir: str) -> None:
    nested = nested_person_folder(files_of, matching.rows_without_folder)
    if nested is not None:
        path, sheet_id = nested
        outer = path.split("/", 1)[0]
        raise UserError(
            f"folder {printable(path)} inside person {printable(outer)}'s folder is named like sheet ID "
            f"'{sheet_id}', which has no folder of its own: its frames would be trained as {printable(outer)}'s",
            f"move it to {os.path.join(root_dir, printable(path.rsplit('/', 1)[1]))} (a person folder dragged "
            "into another), or rename it if it is not that person",
        )
