"""DICOM files → frames, through pydicom and its pixel-data plugins.

Compressed transfer syntaxes (JPEG baseline and lossless, JPEG-LS, JPEG 2000, RLE) are decoded by the
pylibjpeg plugins (or gdcm where installed); pydicom converts YBR_FULL / YBR_FULL_422 / YBR_RCT/ICT
to RGB on decoding. Intensities follow the standard's pipeline: the modality LUT or rescale, then the
VOI LUT or window when the file has one, and the output range of that transform (BitsStored, pixel
representation, rescale, LUT descriptor) mapped onto 0..255; MONOCHROME1 is inverted so that bright
means the same in every file. PALETTE COLOR frames go through their colour LUT.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from carotid.data.frames.kinds.base import FileKind, Probe, Source, has_dicom_preamble, scale_to_uint8

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# Ultrasound Image Storage, Ultrasound Multi-frame Image Storage (and their retired forms): US without Modality.
ULTRASOUND_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.6",
    "1.2.840.10008.5.1.4.1.1.3",
)
# Uncompressed transfer syntaxes (implicit VR little, explicit VR little and big endian): the pixel data's
# length says how many frames it holds, whatever NumberOfFrames claims.
NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


class DicomKind(FileKind):
    """.dcm/.dicom/.dic, and files whose name says nothing (exports named IM0000 or by their instance UID,
    "1.2.840…123") when their content starts with the Part 10 preamble."""

    name = "dicom"
    suffixes = frozenset({"dcm", "dicom", "dic"})

    def sniff(self, path: str) -> bool:
        return has_dicom_preamble(path)

    def probe(self, path: str) -> Probe | None:
        return probe_dicom(path)

    def read(self, path: str, indices: Sequence[int], draft_size: int | None = None) -> Iterator[Source | Exception]:
        return dicom_frames(path, indices)


def _read(path: str, header_only: bool):
    import pydicom

    # force: a Part 10 file without its 128-byte preamble (older exports named .dcm) still parses.
    return pydicom.dcmread(path, stop_before_pixels=header_only, force=not has_dicom_preamble(path))


def frame_count(ds) -> int:
    try:
        return max(int(ds.get("NumberOfFrames") or 1), 1)
    except (TypeError, ValueError):
        return 1


def probe_dicom(path: str) -> Probe | None:
    """Frames, colour and imaging region from the header alone; None when the file holds no image
    (a DICOMDIR, a structured report, an RT plan). Uncompressed pixel data is measured too (its value
    is not read): a file holding fewer frames than its header claims gives those it holds."""
    ds = _read(path, header_only=True)
    if "Rows" not in ds or "Columns" not in ds:
        return None
    colour = ds.get("PhotometricInterpretation", "MONOCHROME2") not in MONOCHROME
    claimed = frame_count(ds)
    held = claimed
    if _syntax(ds) in NATIVE:
        import pydicom

        element = pydicom.dcmread(path, defer_size=1024, force=True).get_item(0x7FE00010, keep_deferred=True)
        held = frames_held(ds, claimed, None if element is None else element.length)
    region = imaging_region(ds) is not None
    patient = str(ds.get("PatientID") or "").strip() or None
    return Probe("dicom", held, colour, region, claimed if held != claimed else None, modality(ds), patient)


def modality(ds) -> str | None:
    """The header's Modality ("US", "CT", "MR", …); "US" for an ultrasound SOP class without one."""
    named = str(ds.get("Modality") or "").strip().upper()
    if named:
        return named
    return "US" if str(ds.get("SOPClassUID") or "") in ULTRASOUND_SOP_CLASSES else None


def _syntax(ds) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return None if meta is None else meta.get("TransferSyntaxUID")


def frame_bytes(ds) -> int | None:
    """Bytes of one uncompressed frame (None for 1-bit data, packed across frames)."""
    bits = int(ds.get("BitsAllocated") or 0)
    if bits < 8:
        return None
    samples = int(ds.get("SamplesPerPixel") or 1)
    if samples == 3 and ds.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # chroma subsampled 4:2:2: Y Y Cb Cr for each two pixels (PS3.3 C.7.6.3.1.2)
    return int(ds.Rows) * int(ds.Columns) * samples * bits // 8


def frames_held(ds, claimed: int, length: int | None) -> int:
    """Whole frames in `length` bytes of uncompressed pixel data, at most `claimed`; raises when the data
    cannot hold one frame of the header's Rows x Columns (the reason names both)."""
    size = frame_bytes(ds)
    if not size or length is None or length >= claimed * size:
        return claimed
    if length < size:
        raise ValueError(
            f"the header's {ds.Rows}x{ds.Columns} frame ({size} bytes) does not fit the {length} bytes of pixel data"
        )
    return length // size


def imaging_region(ds) -> tuple[int, int, int, int] | None:
    """The largest 2-D region of the Sequence of Ultrasound Regions as a box (x0, y0, x1, y1), x1/y1
    exclusive; the B-mode image without the burnt-in text, rulers and spectral strips around it."""
    boxes = []
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        spatial = region.get("RegionSpatialFormat") == 1  # 1 = 2D (tissue or flow image)
        if x1 >= x0 and y1 >= y0:
            boxes.append((spatial, (x1 - x0 + 1) * (y1 - y0 + 1), (x0, y0, x1 + 1, y1 + 1)))
    return max(boxes)[2] if boxes else None


def output_range(ds) -> tuple[float, float]:
    """The range of values after the modality and VOI transforms, as pydicom's apply_voi_lut produces them."""
    voi = ds.get("VOILUTSequence")
    if voi:
        return 0.0, float(2 ** int(voi[0].LUTDescriptor[2]) - 1)
    modality = ds.get("ModalityLUTSequence")
    if modality:
        return 0.0, float(2 ** int(modality[0].LUTDescriptor[2]) - 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if ds.get("PixelRepresentation", 0) == 1:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        low, high = 0, 2**bits - 1
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return float(low), float(high)


def to_uint8(array: np.ndarray, ds) -> np.ndarray:
    """One decoded frame → uint8 grey (H, W) or RGB (H, W, 3)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = ds.get("PhotometricInterpretation", "MONOCHROME2")
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(array, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return rgb.astype(np.uint8) if bits <= 8 else scale_to_uint8(rgb, 0, 2**bits - 1)
    if array.ndim == 3:  # RGB (YBR was converted by the decoder)
        bits = int(ds.get("BitsStored") or 8)
        return array.astype(np.uint8) if bits <= 8 else scale_to_uint8(array, 0, 2**bits - 1)
    values = apply_voi_lut(apply_modality_lut(array, ds), ds)
    grey = scale_to_uint8(values, *output_range(ds))
    return 255 - grey if photometric == "MONOCHROME1" else grey  # MONOCHROME1: low values are white


def _pixels(ds, index: int | None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    if ds.file_meta.get("TransferSyntaxUID") == "1.2.840.10008.1.2.4.50":  # JPEG baseline
        try:
            # Pillow's libjpeg-turbo decodes baseline frames ~3x faster than pylibjpeg (docs/PERFORMANCE.md);
            # a speed-up only: any failure falls back to the default plugins.
            return pixel_array(ds, index=index, decoding_plugin="pillow")
        except Exception:  # noqa: BLE001 - e.g. Pillow missing its JPEG support: the default path decides
            pass
    return pixel_array(ds, index=index)


def dicom_frames(path: str, indices: Sequence[int]) -> Iterator[Source | Exception]:
    """The requested frames of one file, read once; each compressed frame is decoded on its own."""
    ds = _read(path, header_only=False)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ValueError("the DICOM file holds no pixel data")
    frames, region = frame_count(ds), imaging_region(ds)
    if _syntax(ds) in NATIVE and "PixelData" in ds:
        held = frames_held(ds, frames, len(ds.PixelData))
        if held < frames:  # read the frames that are there (pydicom refuses data shorter than the header says)
            ds.PixelData, ds.NumberOfFrames, frames = ds.PixelData[: held * frame_bytes(ds)], held, held
    for index in indices:
        try:
            if not 0 <= index < frames:
                raise IndexError(f"frame {index} of a file with {frames} frame(s)")
            yield Source(to_uint8(_pixels(ds, index if frames > 1 else None), ds), region)
        except Exception as err:  # noqa: BLE001 - the plugins raise many types for damaged frames
            yield err
