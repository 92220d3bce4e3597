"""Turning a file into frames: a file's frames (read by its kind, carotid.data.frames.kinds) → uint8 model input.

A frame is one 2-D image; a PNG/JPEG/BMP holds one, a TIFF one per page, a DICOM one per frame and a
video one per decoded picture. Every kind is read into a `Source` (uint8 grey or RGB, intensities already
scaled by the kind's own rules, and the imaging region when the file names one); one `preprocess` then
applies the crop, the channel count and the resize mode, the same for every kind. The result is a uint8
(C, S, S) array plus flags (colour source, tiny grey range): the cache stores exactly this array.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image

from carotid.core.library_words import reading
from carotid.data.frames.kinds import Source, kind_of, reading_kind
from carotid.data.frames.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, Preprocessing

DECODE_VERSION = 3  # bump when the pixels of any kind change: the frame cache then decodes afresh
# 3: NaN/infinite pixels make a frame unreadable (were black); DICOM holding fewer frames than claimed: those held

# Flags of a decoded frame (bits of the `status` the datasets return; 0 = could not be decoded).
OK, COLOUR, LOW_RANGE = 1, 2, 4
SEEN = 128  # set by whoever records statuses: the frame went through a loader (never drawn: 0, not a failure)
LOW_RANGE_LEVELS = 16  # a frame using ≤ 16 of 256 grey levels is near-constant or crushed: reported


def read_frames(path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
    """One Source (or the exception that stopped it) per index, in order; the file is opened once. A file is read
    as the kind its content says (a DICOM named .jpg: as DICOM, all its frames), else as its name says; where
    that kind cannot open it, as the other."""
    if not indices:
        return
    kind = reading_kind(path)
    first, rest = _opened(kind, path, indices, draft_size)
    if isinstance(first, Exception) and kind is not None:
        named = kind_of(path)
        if named is not None and named is not kind:
            first, rest = _opened(named, path, indices, draft_size)
    if first is None:
        return
    yield first
    done = 1
    try:
        for source in rest:
            yield source
            done += 1
    except Exception as err:  # noqa: BLE001 - the file broke off: every frame not read fails with this reason
        yield from (err for _ in indices[done:])


def _opened(
    kind, path: str, indices: Sequence[int], draft_size: int | None
) -> tuple[Source | Exception | None, Iterator]:
    """(the first frame, or the reason opening failed; the rest): the file is opened here."""
    try:
        if kind is None:
            raise ValueError(f"not a frame file kind: {os.path.basename(path)}")
        sources = iter(kind.read(path, indices, draft_size))
        return next(sources, None), sources
    except Exception as err:  # noqa: BLE001 - opening failed: every requested frame fails with this reason
        return err, iter([err] * (len(indices) - 1))


# ---------------------------------------------------------------------------------------------
# Preprocessing: crop → channels → resize, the same for every kind
# ---------------------------------------------------------------------------------------------


def is_colour(rgb: np.ndarray) -> bool:
    """True when a visible share of pixels has chroma: an RGB file of a grey B-mode image is not colour.

    Thresholds: JPEG chroma noise stays under ~10 levels; a Doppler box or coloured annotation covers
    well over 0.2% of the pixels with channel spreads far above 32."""
    sample = rgb[::4, ::4].astype(np.int16)
    spread = sample.max(axis=2) - sample.min(axis=2)
    return bool((spread > 32).mean() > 0.002)


def preprocess(source: Source, prep: Preprocessing) -> tuple[np.ndarray, int]:
    """(uint8 (C, S, S), flags) of one frame."""
    pixels = source.pixels
    box = prep.fixed_box() or (source.region if prep.crop == "auto" else None)
    if box is not None:
        height, width = pixels.shape[:2]
        x0, y0, x1, y1 = max(box[0], 0), max(box[1], 0), min(box[2], width), min(box[3], height)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"crop box {box} lies outside the {width}x{height} frame")
        pixels = pixels[y0:y1, x0:x1]
    flags = OK
    if pixels.ndim == 3 and is_colour(pixels):
        flags |= COLOUR
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image = image.convert("L" if prep.in_channels == 1 else "RGB")
    array = np.asarray(image)
    if int(array.max()) - int(array.min()) < LOW_RANGE_LEVELS:
        flags |= LOW_RANGE
    array = np.array(resize(image, prep.image_size, prep.resize), dtype=np.uint8)  # a copy: torch wants writable
    return np.ascontiguousarray(array[None] if prep.in_channels == 1 else array.transpose(2, 0, 1)), flags


def resize(image: Image.Image, size: int, mode: str) -> Image.Image:
    """size x size: 'stretch' scales each axis; 'letterbox' fits the long side and pads with black (aspect
    kept, nothing lost); 'crop' fits the short side and cuts the centre (aspect kept, edges lost)."""
    if mode == "stretch":
        return image.resize((size, size), Image.Resampling.BILINEAR)
    width, height = image.size
    scale = size / (max if mode == "letterbox" else min)(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = image.resize(inner, Image.Resampling.BILINEAR)
    if mode == "crop":
        left, top = (inner[0] - size) // 2, (inner[1] - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    canvas = Image.new(image.mode, (size, size))
    canvas.paste(scaled, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


# ---------------------------------------------------------------------------------------------
# The entry points
# ---------------------------------------------------------------------------------------------


def describe_error(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def decode_frames(path: str, indices: Sequence[int], prep: Preprocessing) -> list[tuple[np.ndarray, int] | str]:
    """(uint8 (C, S, S), flags) or the reason it failed, per index, reading the file once."""
    results: list[tuple[np.ndarray, int] | str] = []
    with reading(path):  # a library's warning meanwhile names this file
        for source in read_frames(path, indices, prep.draft_size()):
            if isinstance(source, Exception):
                results.append(describe_error(source))
                continue
            try:
                results.append(preprocess(source, prep))
            except Exception as err:  # noqa: BLE001 - a frame that cannot be preprocessed is reported, not fatal
                results.append(describe_error(err))
    return results


def decode_frame(path: str, index: int, prep: Preprocessing) -> tuple[np.ndarray, int]:
    """(pixels, flags) of one frame; raises with the reason when it cannot be decoded."""
    result = decode_frames(path, [index], prep)[0]
    if isinstance(result, str):
        raise ValueError(result)
    return result


def load_frame(
    path: str,
    image_size: int,
    in_channels: int,
    index: int = 0,
    *,
    resize: str = DEFAULT_RESIZE,
    crop: str = DEFAULT_CROP,
) -> np.ndarray:
    """Decode one frame into a uint8 array (C, S, S). The cache stores exactly this array."""
    return decode_frame(path, index, Preprocessing(image_size, in_channels, resize, crop))[0]
