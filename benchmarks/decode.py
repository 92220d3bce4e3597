"""Decode rates per file kind: frames/s per core (CPU seconds of this process, so a decoder's own threads
count) through carotid.data.frames.decode.decode_frames at the training size, as the cache build decodes: the same
grey frames as separate Pillow JPEG files, as a multi-frame DICOM of JPEG-baseline frames, one of
JPEG-lossless frames and an mp4 cine loop. Each kind is a row against the JPEG files (ratio = its rate over
theirs)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from benchmarks.common import Options, Row

TITLE = "decode rates per file kind"


def grey_frames(count: int, width: int = 800, height: int = 600) -> list[np.ndarray]:
    """Synthetic carotid B-mode frames (carotid.demo), shifted and with fresh noise each."""
    from carotid.data.demo import make_persons, synth_frame

    rng = np.random.default_rng(0)
    person = make_persons(1, rng)[0]
    base = synth_frame(rng, person, 0.0, width, height).astype(np.int16)
    frames = []
    for _ in range(count):
        noisy = np.roll(base, int(rng.integers(-6, 7)), axis=1) + rng.integers(-8, 9, base.shape, dtype=np.int16)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


def jpeg_lossless(frame: np.ndarray) -> bytes:
    """A JPEG-lossless (process 14, first-order prediction) bitstream of an 8-bit grey frame.

    Hand-written because nothing installable here writes one (pydicom has no encoder for this transfer
    syntax, Pillow cannot write it); the benchmark checks it decodes back bit-exactly."""
    bits_dc = [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # ITU T.81 table K.3 (luminance DC)
    codes, lengths, code = {}, {}, 0
    symbol = 0
    for length, count in enumerate(bits_dc, start=1):
        for _ in range(count):
            codes[symbol], lengths[symbol] = code, length
            code, symbol = code + 1, symbol + 1
        code <<= 1
    height, width = frame.shape
    x = frame.astype(np.int32)
    predicted = np.empty_like(x)
    predicted[0, 0] = 128
    predicted[0, 1:] = x[0, :-1]
    predicted[1:, 0] = x[:-1, 0]
    predicted[1:, 1:] = x[1:, :-1]
    diff = (x - predicted).ravel()
    size = np.where(diff == 0, 0, np.floor(np.log2(np.abs(diff) + 0.5)).astype(np.int32) + 1)
    size[diff == 0] = 0
    extra = np.where(diff >= 0, diff, diff + (1 << size) - 1)
    code_of = np.array([codes[s] for s in range(12)])[size]
    value = (code_of.astype(np.int64) << size) | extra  # Huffman code then the difference's bits
    nbits = np.array([lengths[s] for s in range(12)])[size] + size
    width_max = int(nbits.max())
    shifts = nbits[:, None] - 1 - np.arange(width_max)[None, :]
    bits = ((value[:, None] >> np.maximum(shifts, 0)) & 1).astype(np.uint8)
    stream = bits[shifts >= 0]
    stream = np.concatenate([stream, np.ones((-len(stream)) % 8, np.uint8)])  # pad with 1-bits
    data = np.packbits(stream)
    data = np.insert(data, np.flatnonzero(data == 0xFF) + 1, 0)  # byte stuffing after every 0xFF
    huffman = bytes([0x00]) + bytes(bits_dc) + bytes(range(12))
    header = (
        b"\xff\xd8"
        + b"\xff\xc4"
        + (2 + len(huffman)).to_bytes(2, "big")
        + huffman
        + b"\xff\xc3\x00\x0b\x08"
        + height.to_bytes(2, "big")
        + width.to_bytes(2, "big")
        + b"\x01\x01\x11\x00"
        + b"\xff\xda\x00\x08\x01\x01\x00\x01\x00\x00"
    )
    return header + data.tobytes() + b"\xff\xd9"


def write_dicom(path: Path, frames: list[np.ndarray], encoded: list[bytes], syntax) -> None:
    """A multi-frame ultrasound DICOM of already encoded grey frames."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UltrasoundMultiFrameImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "US", "bench"
    ds.Rows, ds.Columns = frames[0].shape
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=25)
        stream.height, stream.width = frames[0].shape
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.repeat(frame[..., None], 3, 2), "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_format_files(folder: Path, count: int, width: int = 800) -> dict[str, tuple[list[str], int]]:
    """{figure: (files, frames)} of the same `count` width x 3/4 width frames in each kind."""
    import io

    from PIL import Image
    from pydicom.uid import JPEGBaseline8Bit, JPEGLosslessSV1

    folder.mkdir(parents=True, exist_ok=True)
    frames = grey_frames(count, width, width * 3 // 4)
    jpegs = []
    for k, frame in enumerate(frames):
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
        (folder / f"frame_{k:04d}.jpg").write_bytes(buffer.getvalue())
    lossless = [jpeg_lossless(frame) for frame in frames]
    write_dicom(folder / "baseline.dcm", frames, jpegs, JPEGBaseline8Bit)
    write_dicom(folder / "lossless.dcm", frames, lossless, JPEGLosslessSV1)
    from carotid.data.frames.decode import decode_frame
    from carotid.data.frames.preprocessing import Preprocessing

    exact = decode_frame(str(folder / "lossless.dcm"), 0, Preprocessing(width, 1, "letterbox", "none"))[0][0]
    top = (width - width * 3 // 4) // 2
    if not np.array_equal(exact[top : top + width * 3 // 4], frames[0]):
        raise RuntimeError("the lossless JPEG written for the benchmark does not decode back exactly")
    write_mp4(folder / "cine.mp4", frames)
    return {
        "pillow_jpeg": ([str(folder / f"frame_{k:04d}.jpg") for k in range(count)], 1),
        "dicom_jpeg_baseline": ([str(folder / "baseline.dcm")], count),
        "dicom_jpeg_lossless": ([str(folder / "lossless.dcm")], count),
        "mp4_cine": ([str(folder / "cine.mp4")], count),
    }


def decode_rates(folder: Path, count: int, image_size: int, width: int = 800, repeats: int = 3) -> dict[str, float]:
    """Frames per CPU-second of each kind, best of `repeats` after a warm-up."""
    from carotid.data.frames.decode import decode_frames
    from carotid.data.frames.preprocessing import Preprocessing

    prep = Preprocessing(image_size, 1, "letterbox", "auto")
    rates = {}
    for name, (files, frames) in make_format_files(folder, count, width).items():

        def once(files=files, frames=frames):
            for path in files:
                results = decode_frames(path, list(range(frames)), prep)
                bad = [r for r in results if isinstance(r, str)]
                if bad:
                    raise RuntimeError(f"{path}: {bad[0]}")

        once()
        best = min(_cpu_seconds(once) for _ in range(repeats))
        rates[name] = count / best
    return rates


def _cpu_seconds(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def run(opts: Options) -> list:
    count, width = (3, 160) if opts.quick else (40, 800)
    rates = decode_rates(opts.work / "formats", count, opts.image_size, width, repeats=1 if opts.quick else 3)
    jpeg = rates["pillow_jpeg"]
    return [
        Row(f"decode {kind}, {width}x{width * 3 // 4} at {opts.image_size} px", "Pillow JPEG files", kind,
            "frames/s per core", jpeg, rate, rate / jpeg)
        for kind, rate in rates.items()
    ]  # fmt: skip
