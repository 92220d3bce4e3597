"""Decode rates per file kind and the cost of finding and checking frames, for scripts/benchmark.py.

(f) decode rates: frames/s per core (CPU seconds of this process, so a decoder's own threads count)
    through `carotid.data.decode.decode_frames` at the training size, as the cache build decodes:
    800x600 grey frames as separate Pillow JPEG files, a multi-frame DICOM of JPEG-baseline frames,
    one of JPEG-lossless frames and an mp4 cine loop.
(g) start-up against the number of frames: a fresh process that reads the labels, finds and checks
    the frames (`collect_persons`), splits the persons and loads the first batch, on trees of 1,000
    and N tiny PNG files (hard links of one file: seconds to make, no disk space).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


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
    from carotid.data.decode import decode_frame
    from carotid.data.preprocessing import Preprocessing

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
    """(f): frames per CPU-second of each kind, best of `repeats` after a warm-up."""
    from carotid.data.decode import decode_frames
    from carotid.data.preprocessing import Preprocessing

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


# ---------------------------------------------------------------------------------------------
# (g) start-up against the number of frames
# ---------------------------------------------------------------------------------------------

STARTUP = r"""
import json, sys, time, tracemalloc, warnings
warnings.simplefilter("ignore")
from carotid.data.labels import read_labels
from carotid.data.manifest import collect_persons
from carotid.data.split import split_persons
from carotid.data.loaders import frame_dataset, make_loader
imported = time.perf_counter()
table = read_labels(sys.argv[2])
manifest = collect_persons(sys.argv[1], table, None)
checked = time.perf_counter()
splits, _ = split_persons(manifest.person_labels, 0.7, 0.15, 0.15, 0)
manifest.splits = splits
frames = manifest.frames_of("train")
loader = make_loader(frame_dataset(frames, 224, 1), 32, train=True, num_workers=0, seed=0)
next(iter(loader))
done = time.perf_counter()
# Memory after the timing (tracing slows Python down): the peak of what discovery and the check allocate.
del manifest, frames, loader
tracemalloc.start()
manifest = collect_persons(sys.argv[1], table, None)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"imports_s": imported - START, "collect_s": checked - imported, "to_first_batch_s": done - START,
                  "frames": manifest.report["images_used"], "collect_peak_bytes": peak}))
"""


def make_png_tree(root: Path, files: int, persons: int = 200) -> Path:
    """`files` valid 64x48 PNG files (hard links of one per person) over `persons` person folders, and label.xlsx."""
    from PIL import Image

    from carotid.data.demo import write_label_excel

    root.mkdir(parents=True, exist_ok=True)
    per_person = -(-files // persons)
    for p in range(persons):
        folder = root / f"{100000 + p}"
        folder.mkdir(exist_ok=True)
        first = folder / "frame_0000.png"
        if not first.exists():
            # One inode and one content per person (a file system allows ~65,000 links to one file; persons
            # sharing a file's content are one group to the split, carotid.data.audit).
            pixels = np.random.default_rng(p).integers(0, 256, (48, 64), dtype=np.uint8)
            Image.fromarray(pixels).save(first)
        for k in range(1, min(per_person, files - p * per_person)):
            target = folder / f"frame_{k:04d}.png"
            if not target.exists():
                os.link(first, target)
    write_label_excel(root / "label.xlsx", [(str(100000 + p), "ab"[p % 2]) for p in range(persons)])
    return root


def startup_run(root: Path) -> dict:
    """(g): one fresh process, from interpreter start to the first batch."""
    start = f"import time\nSTART = time.perf_counter()\n{STARTUP}"
    out = subprocess.run(
        [sys.executable, "-c", start, str(root), str(root / "label.xlsx")],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, TQDM_DISABLE="1", PYTHONWARNINGS="ignore"),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup_scaling(work: Path, sizes: list[int], repeats: int = 5) -> dict:
    """(g) for each tree size: medians of `repeats` rounds that run every size in turn (interleaved, so a
    busy moment of a shared machine hits all sizes alike); ratios against the first (smallest) size."""
    trees = {files: make_png_tree(work / f"tree_{files}", files) for files in sizes}
    runs: dict[int, list[dict]] = {files: [] for files in sizes}
    for _ in range(repeats):
        for files in sizes:
            runs[files].append(startup_run(trees[files]))
    figures = {}
    for files in sizes:
        figures[files] = {
            key: float(np.median([r[key] for r in runs[files]]))
            for key in ("imports_s", "collect_s", "to_first_batch_s", "collect_peak_bytes")
        } | {"frames": runs[files][0]["frames"]}
    base = figures[sizes[0]]
    for files in sizes:
        run = figures[files]
        run["startup_vs_smallest"] = run["to_first_batch_s"] / base["to_first_batch_s"]
        run["collect_vs_smallest"] = run["collect_s"] / base["collect_s"]
        run["collect_peak_bytes_per_frame"] = run["collect_peak_bytes"] / max(run["frames"], 1)
    return figures
