"""Single images read by Pillow (PNG, JPEG, BMP): one frame per file, EXIF orientation applied."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from carotid.data.frames.kinds.base import FileKind, Probe, Source, bit_range, check_finite, scale_to_uint8


class ImageKind(FileKind):
    name = "image"
    suffixes = frozenset({"png", "jpg", "jpeg", "bmp"})
    single_frame = True

    def probe(self, path: str) -> Probe:
        return Probe(self.name, 1)  # not opened: a single image is proven readable when first decoded

    def read(self, path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
        for index in indices:
            try:
                pixels = _pillow_pixels(path, index, draft_size)
            except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad files
                yield err
                continue
            yield Source(pixels)


def _pillow_pixels(path: str, index: int, draft_size: int | None) -> np.ndarray:
    if draft_size is not None:
        try:
            return _open_pillow(path, index, draft_size)
        except Exception:  # noqa: BLE001 - draft() breaks e.g. lossless JPEG at small sizes: decode in full instead
            pass
    return _open_pillow(path, index, None)


def _open_pillow(path: str, index: int, draft_size: int | None) -> np.ndarray:
    with Image.open(path) as image:
        if index:
            image.seek(index)
        if draft_size is not None and image.format == "JPEG":
            # Decode at a reduced DCT scale that still covers the target (2-4x faster for 800x600 → 224).
            image.draft(image.mode, (draft_size, draft_size))
        image.load()
        image = ImageOps.exif_transpose(image)
        return pillow_to_uint8(image)


def pillow_to_uint8(image: Image.Image) -> np.ndarray:
    """uint8 grey (H, W) or RGB (H, W, 3); 16/32-bit grey scaled by the bit depth it actually uses."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return scale_to_uint8(np.asarray(image, dtype=np.int64), *bit_range(np.asarray(image)))
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        check_finite(array)  # before min/max: one NaN makes both NaN
        return scale_to_uint8(array, float(array.min()), float(array.max()))
    if image.mode in ("L", "RGB"):
        return np.array(image, dtype=np.uint8)
    if image.mode in ("1", "P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        grey = image.mode in ("1", "L", "LA") or (image.mode in ("P", "PA") and _grey_palette(image))
        return np.array(image.convert("L" if grey else "RGB"), dtype=np.uint8)
    raise ValueError(f"unsupported pixel mode {image.mode}")


def _grey_palette(image: Image.Image) -> bool:
    palette = np.frombuffer(image.palette.tobytes(), dtype=np.uint8) if image.palette else np.zeros(0, np.uint8)
    rgb = palette[: len(palette) // 3 * 3].reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())
