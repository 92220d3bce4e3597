"""What every file kind shares: the reader base class (`FileKind`), the header record (`Probe`), one frame as
read (`Source`), the DICOM preamble test and the linear scaling of wider intensities onto uint8.

A kind says which names are its own (`suffixes`), whether it can recognise a file by content when the name
says nothing (`sniff`), how many frames a file holds from its header alone (`probe`) and how it reads the
frames asked for, opening the file once (`read`). Callers branch on its properties, never on its name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np


@dataclass(frozen=True, slots=True)
class Probe:
    """What a file's header says: its kind, frame count and (DICOM) whether its frames are colour."""

    kind: str
    frames: int
    colour: bool | None = None
    region: bool = False  # names an ultrasound imaging region (used by --crop auto)
    claimed: int | None = None  # the header's frame count where the file holds fewer (`frames` are those found)
    modality: str | None = None  # DICOM: the header's Modality ("US", "CT", …), or from the SOP class
    patient_id: str | None = None  # DICOM: the header's PatientID, where it has one


@dataclass
class Source:
    """One frame as read: uint8 (H, W) grey or (H, W, 3) RGB, and the imaging region (x0, y0, x1, y1) if named."""

    pixels: np.ndarray
    region: tuple[int, int, int, int] | None = None


class FileKind:
    """One kind of frame file. Subclasses set the class attributes and implement `probe` and `read`."""

    name: ClassVar[str]  # the kind's name in reports and data_report.json ("image", "dicom", …)
    suffixes: ClassVar[frozenset[str]]  # lower-case suffixes that are this kind's, without the dot
    single_frame: ClassVar[bool] = False  # one frame per file: counted without opening the file
    sequential: ClassVar[bool] = False  # frames decode from the start: read all wanted frames in one pass

    def sniff(self, path: str) -> bool:
        """True when the content says the file is this kind (asked only for names without a known suffix)."""
        return False

    def probe(self, path: str) -> Probe | None:
        """The header: frame count and more; None when the file holds no image. Raises with the reason."""
        raise NotImplementedError

    def read(self, path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
        """One Source (or the exception that stopped it) per index, in order; the file opened once.
        `draft_size` allows a decoder to decode at a reduced scale that still covers that size."""
        raise NotImplementedError


def has_dicom_preamble(path: str) -> bool:
    """True when bytes 128-131 are b'DICM' (the DICOM Part 10 file header)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def bit_range(array: np.ndarray) -> tuple[float, float]:
    """(0, 2^bits - 1) for the fewest bits ≥ 8 that hold the frame's maximum: 12-bit data in a 16-bit file is
    scaled by 4095, not 65535 (which would leave it 16 grey levels)."""
    high = int(array.max()) if array.size else 0
    if int(array.min()) < 0:
        return float(array.min()), float(max(high, 1))
    bits = max(8, high.bit_length())
    return 0.0, float(2**bits - 1)


def check_finite(array: np.ndarray) -> None:
    """Float pixels must all be finite: a NaN or infinity would reach the model as an arbitrary grey level,
    so the frame is unreadable, with the count as its reason."""
    if array.dtype.kind in "fc":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise ValueError(f"{bad} of {array.size} pixel values are not finite (NaN or infinite)")


def scale_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (rounded, clipped); non-finite values raise (`check_finite`)."""
    check_finite(array)
    span = max(high - low, 1e-12)
    return np.clip(np.rint((array.astype(np.float64) - low) * (255.0 / span)), 0, 255).astype(np.uint8)
