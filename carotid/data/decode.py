"""Turning a file into pixels: one function per file kind → a uint8 (C, S, S) array."""

from __future__ import annotations

import numpy as np
from PIL import Image


def load_frame(path: str, image_size: int, in_channels: int) -> np.ndarray:
    """Decode one frame into a uint8 array (C, S, S). The cache stores exactly this array."""
    mode = "L" if in_channels == 1 else "RGB"
    with Image.open(path) as image:
        # JPEG: decode at a reduced DCT scale that still covers the target size (2-4x faster for 800x600 → 224).
        image.draft(mode, (image_size, image_size))
        if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            # 16/32-bit frames (some DICOM exports): scale the full range to 0..255 instead of clipping.
            array = np.asarray(image, dtype=np.float64)
            high = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
            image = Image.fromarray(np.clip(array * (255.0 / high), 0, 255).astype(np.uint8))
        image = image.convert(mode).resize((image_size, image_size), Image.Resampling.BILINEAR)
        array = np.array(image, dtype=np.uint8)  # a copy: torch wants writable memory
    return np.ascontiguousarray(array[None] if in_channels == 1 else array.transpose(2, 0, 1))
