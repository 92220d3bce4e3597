"""Turning a file into frames: which files are frames, how many each holds, and how each becomes pixels.

A frame is one 2-D image; a PNG/JPEG/BMP holds one, a TIFF one per page, a DICOM one per frame and a
video one per decoded picture. Every kind is read into a `Source` (uint8 grey or RGB, intensities already
scaled by the kind's own rules, and the imaging region when the file names one); one `preprocess` then
applies the crop, the channel count and the resize mode, the same for every kind. The result is a uint8
(C, S, S) array plus flags (colour source, tiny grey range): the cache stores exactly this array.

DICOM lives in `carotid.data.dicom`, the types every kind shares in `carotid.data.pixels`; pydicom and PyAV
are imported only when such a file is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps

from carotid.data.dicom import dicom_frames, probe_dicom
from carotid.data.pixels import Probe, Source, bit_range, has_dicom_preamble, scale_to_uint8
from carotid.data.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, Preprocessing

# File kinds by suffix (lower case). Files without a suffix, or with a numeric one (DICOM exports named by
# their instance UID, "1.2.840…123"), are DICOM when their content says so (the "DICM" preamble).
SINGLE_IMAGE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "bmp"})
TIFF_SUFFIXES = frozenset({"tif", "tiff"})
DICOM_SUFFIXES = frozenset({"dcm", "dicom", "dic"})
VIDEO_SUFFIXES = frozenset({"mp4", "avi", "mov"})
FRAME_SUFFIXES = SINGLE_IMAGE_SUFFIXES | TIFF_SUFFIXES | DICOM_SUFFIXES | VIDEO_SUFFIXES
# Files that look like images or cine loops but are not read: counted and named in data_report.json.
UNHANDLED_SUFFIXES = frozenset(
    {"j2k", "jp2", "jpx", "jpf", "jls", "gif", "webp", "heic", "heif", "nii", "nrrd", "mha", "mhd", "mkv", "wmv"}
    | {"mpg", "mpeg", "m4v", "webm"}
)

DECODE_VERSION = 2  # bump when the pixels of any kind change: the frame cache then decodes afresh

# Flags of a decoded frame (bits of the `status` the datasets return; 0 = could not be decoded).
OK, COLOUR, LOW_RANGE = 1, 2, 4
SEEN = 128  # set by whoever records statuses: the frame went through a loader (never drawn: 0, not a failure)
LOW_RANGE_LEVELS = 16  # a frame using ≤ 16 of 256 grey levels is near-constant or crushed: reported


def suffix_of(name: str) -> str:
    name = name.rpartition("/")[2]  # a path's folders may hold dots
    return name.rpartition(".")[2].lower() if "." in name else ""


def kind_of(name: str) -> str | None:
    """'image', 'tiff', 'dicom', 'video', 'maybe-dicom' (decided by content), 'unhandled' or None (not a frame)."""
    suffix = suffix_of(name)
    if suffix in SINGLE_IMAGE_SUFFIXES:
        return "image"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if not suffix or suffix.isdigit():
        return "maybe-dicom"
    if suffix in UNHANDLED_SUFFIXES or name.lower().endswith((".dcm.gz", ".nii.gz")):
        return "unhandled"
    return None


# ---------------------------------------------------------------------------------------------
# Frames per file (discovery reads only headers, and only of kinds that can hold several frames)
# ---------------------------------------------------------------------------------------------


def probe(path: str, kind: str) -> Probe | None:
    """The header of a file of `kind`; None for a 'maybe-dicom' that is not DICOM or a DICOM without pixels.
    Raises (with the reason) when the header cannot be read."""
    if kind == "image":
        return Probe("image", 1)
    if kind == "tiff":
        with Image.open(path) as image:
            return Probe("tiff", int(getattr(image, "n_frames", 1)))
    if kind == "video":
        return Probe("video", video_frame_count(path))
    if kind == "maybe-dicom" and not has_dicom_preamble(path):
        return None
    return probe_dicom(path)


def video_frame_count(path: str) -> int:
    """The container's frame count, or the count of its video packets where it states none (no decoding)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for packet in container.demux(stream) if packet.size)


# ---------------------------------------------------------------------------------------------
# Reading: one generator per kind, each reading its file once for all requested frames
# ---------------------------------------------------------------------------------------------


def read_frames(path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
    """One Source (or the exception that stopped it) per index, in order; the file is opened once."""
    kind = kind_of(path)
    try:
        if kind in ("image", "tiff"):
            yield from _pillow_frames(path, indices, draft_size)
        elif kind == "video":
            yield from _video_frames(path, indices)
        elif kind in ("dicom", "maybe-dicom"):
            yield from dicom_frames(path, indices)
        else:
            raise ValueError(f"not a frame file kind: {os.path.basename(path)}")
    except Exception as err:  # noqa: BLE001 - opening failed: every requested frame fails with this reason
        yield from (err for _ in indices)


def _pillow_frames(path: str, indices: Sequence[int], draft_size: int | None) -> Iterator[Source | Exception]:
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


def _video_frames(path: str, indices: Sequence[int]) -> Iterator[Source | Exception]:
    """Decodes from the start up to the last requested frame: exact frame numbers whatever the frame rate
    (seeking lands on key frames by time stamp, which a variable-rate file does not map to numbers)."""
    import av

    wanted = sorted(set(indices))
    found: dict[int, Source] = {}
    error: Exception | None = None
    try:
        with av.open(path) as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted:
                    found[number] = Source(frame.to_ndarray(format="rgb24"))
                if number >= wanted[-1]:
                    break
    except Exception as err:  # noqa: BLE001 - frames decoded before a damaged packet still count
        error = err
    for index in indices:
        yield found[index] if index in found else (error or IndexError(f"frame {index} is past the video's end"))


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
