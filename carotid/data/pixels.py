"""What every file kind's reader shares: the header record (`Probe`), one frame as read (`Source`), the
DICOM preamble test and the linear scaling of wider intensities onto uint8."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def has_dicom_preamble(path: str) -> bool:
    """True when bytes 128-131 are b'DICM' (the DICOM Part 10 file header)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Probe:
    """What a file's header says: its kind, frame count and (DICOM) whether its frames are colour."""

    kind: str
    frames: int
    colour: bool | None = None
    region: bool = False  # names an ultrasound imaging region (used by --crop auto)


@dataclass
class Source:
    """One frame as read: uint8 (H, W) grey or (H, W, 3) RGB, and the imaging region (x0, y0, x1, y1) if named."""

    pixels: np.ndarray
    region: tuple[int, int, int, int] | None = None


def bit_range(array: np.ndarray) -> tuple[float, float]:
    """(0, 2^bits - 1) for the fewest bits ≥ 8 that hold the frame's maximum: 12-bit data in a 16-bit file is
    scaled by 4095, not 65535 (which would leave it 16 grey levels)."""
    high = int(array.max()) if array.size else 0
    if int(array.min()) < 0:
        return float(array.min()), float(max(high, 1))
    bits = max(8, high.bit_length())
    return 0.0, float(2**bits - 1)


def scale_to_uint8(array: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map [low, high] linearly onto 0..255 (rounded, clipped)."""
    span = max(high - low, 1e-12)
    return np.clip(np.rint((array.astype(np.float64) - low) * (255.0 / span)), 0, 255).astype(np.uint8)
