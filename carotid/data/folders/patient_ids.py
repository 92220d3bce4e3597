"""DICOM files whose header names another person of the sheet (PatientID '1002' in 1001's folder): a study
filed under the wrong person, trained with the folder's label. Warned with both persons; PatientIDs that name
no one of the sheet (hospital numbers, anonymised exports) say nothing and are not warned about."""

from __future__ import annotations

from carotid.core.text import printable
from carotid.data.folders.matching import EXAMPLES, id_key


def other_person_warning(
    files_of: dict[str, list[str]], sheet_id_of: dict[str, str], sheet_ids: list[str], patient_ids: dict[str, str]
) -> list[str]:
    """The warning on files in a person's folder whose PatientID is another sheet ID (person → their files,
    person → their sheet ID, every sheet ID, file → its header's PatientID)."""
    if not patient_ids:  # no DICOM header named anyone (image files only): nothing to compare
        return []
    by_key = {id_key(sheet_id): sheet_id for sheet_id in sheet_ids}
    found = []
    for person, files in sorted(files_of.items()):
        own = id_key(sheet_id_of[person])
        for rel in files:
            if rel not in patient_ids:
                continue
            other = by_key.get(id_key(patient_ids[rel]))
            if other is not None and id_key(other) != own:
                found.append(
                    f"{printable(rel)} in {person}'s folder has PatientID '{patient_ids[rel]}', the sheet's {other}"
                )
    if not found:
        return []
    return [
        f"{len(found)} DICOM file(s) name another person of the sheet in their header (e.g. "
        f"{'; '.join(found[:EXAMPLES])}): they are trained as the folder's person — move each to its person's "
        "folder, or correct the PatientID if the folder is right"
    ]
