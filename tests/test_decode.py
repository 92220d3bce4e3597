"""Every frame a scanner writes: real DICOMs from pydicom's test data, lossless JPEG, 12-bit PNG/TIFF,
multi-page TIFF, mp4 cine loops, resize and crop modes, EXIF rotation, and failures reported by name."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from carotid.core.errors import UserError
from carotid.data.folders import readable
from carotid.data.frames.decode import COLOUR, LOW_RANGE, OK, decode_frame, decode_frames, load_frame
from carotid.data.frames.frame import Frame
from carotid.data.frames.kinds import BY_NAME
from carotid.data.frames.preprocessing import Preprocessing
from carotid.data.loaders import FrameDataset
from carotid.data.manifest import collect_persons
from carotid.data.sheet.labels import read_labels
from carotid.model.file import ModelFile
from tests.conftest import FAST, only_run_dir, read_json, train_in_process, write_xlsx


def dicom(name: str) -> Path:
    """A file of pydicom's own test data (shipped in the wheel: no download)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def lossless_jpeg(tmp_path: Path) -> Path:
    """The JPEG-lossless (process 14) bitstream of a pydicom test file, as a plain .jpg file."""
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(dicom("SC_rgb_jpeg_gdcm.dcm"))
    path = tmp_path / "lossless.jpg"
    path.write_bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))
    return path


def write_mp4(path: Path, frames: int, size=(64, 48)) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for k in range(frames):
            picture = np.full((size[1], size[0], 3), 10 + 20 * k, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------------------------
# Kinds and intensities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, frames, photometric",
    [
        ("examples_ybr_color.dcm", 30, "YBR_FULL_422"),  # ultrasound JPEG-baseline cine loop
        ("examples_palette.dcm", 1, "PALETTE COLOR"),  # ultrasound, palette
        ("examples_rgb_color.dcm", 1, "RGB"),  # ultrasound, uncompressed RGB
        ("examples_jpeg2k.dcm", 1, "YBR_RCT"),  # ultrasound, JPEG 2000 lossless
        ("SC_rgb_jpeg_gdcm.dcm", 1, "RGB"),  # JPEG lossless
        ("MR_small_jpeg_ls_lossless.dcm", 1, "MONOCHROME2"),  # 16-bit JPEG-LS
    ],
)
def test_dicom_frames_are_counted_from_the_header_and_decoded_as_pydicom_reads_them(name, frames, photometric):
    path = dicom(name)
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == photometric
    assert BY_NAME["dicom"].probe(str(path)).frames == frames
    results = decode_frames(str(path), list(range(frames)), Preprocessing(32, 3, "stretch", "none"))
    assert all(not isinstance(r, str) for r in results), results
    if photometric != "MONOCHROME2":
        # Colour comes out as RGB: the full-size decode equals pydicom's own RGB conversion.
        reference = ds.pixel_array if frames == 1 else ds.pixel_array[frames // 2]
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            reference = np.rint(apply_color_lut(reference, ds) / 257)  # its LUT has 16-bit entries
        height, width = reference.shape[:2]
        full = decode_frame(str(path), frames // 2, Preprocessing(max(height, width), 3, "letterbox", "none"))[
            0
        ].transpose(1, 2, 0)
        top, left = (max(height, width) - height) // 2, (max(height, width) - width) // 2
        difference = np.abs(full[top : top + height, left : left + width].astype(int) - reference)
        # Lossy JPEG decoders may differ by a few levels (IDCT, chroma upsampling): Pillow decodes baseline here.
        assert difference.max() <= 3 and difference.mean() < 0.1


def test_a_dicom_without_suffix_or_with_a_uid_name_is_found_by_its_preamble(tmp_path):
    person = tmp_path / "root" / "p1"
    person.mkdir(parents=True)
    shutil.copy(dicom("examples_rgb_color.dcm"), person / "IM000001")
    shutil.copy(dicom("examples_ybr_color.dcm"), person / "1.2.840.113619.2.5")
    (person / "README").write_text("not a DICOM")
    (person / "scan.j2k").write_bytes(b"\0" * 200)  # looks like an image, is not read: named
    table = read_labels(write_xlsx(tmp_path / "label.xlsx", [["id", "label"], ["p1", "a"]]), min_classes=1)
    manifest = collect_persons(str(tmp_path / "root"), table, None)
    assert manifest.report["frames_by_kind"] == {"dicom": 31}
    assert len(manifest.frames["p1"]) == 31 and ("p1/IM000001", 0) in manifest.frames["p1"]
    assert manifest.report["unhandled_files"] == {"count": 1, "first": ["p1/scan.j2k"]}
    assert manifest.report["dicom_colour_frames"] == 31 and manifest.report["dicom_files_with_ultrasound_region"] == 1


def test_lossless_jpeg_decodes_at_every_size(tmp_path):
    path = lossless_jpeg(tmp_path)
    reference = pydicom.dcmread(dicom("SC_rgb_jpeg_gdcm.dcm")).pixel_array  # 100x100 RGB
    for size in (16, 25, 32, 64):  # Pillow's draft() breaks this decoder below 64: the full decode takes over
        frame = load_frame(str(path), size, 3)
        assert frame.shape == (3, size, size) and frame.std() > 10
    full = load_frame(str(path), 100, 3, resize="stretch").transpose(1, 2, 0)
    assert np.array_equal(full, reference)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_12_bit_data_in_16_bit_files_uses_the_full_output_range(tmp_path, fmt):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))  # 12-bit values in a 16-bit file
    path = tmp_path / f"deep.{fmt.lower()}"
    Image.fromarray(ramp).save(path, format=fmt)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    frame, flags = decode_frame(str(path), 0, Preprocessing(64, 1, "stretch", "none"))
    assert frame.min() == 0 and frame.max() == 255  # scaled by 4095, not 65535 (which would leave 0..16)
    assert np.abs(frame[0, 0] - ramp[0].astype(float) * 255 / 4095).max() <= 1
    assert flags == OK
    flat = tmp_path / f"flat.{fmt.lower()}"
    Image.fromarray(np.full((48, 64), 3000, np.uint16) + (ramp // 512)).save(flat, format=fmt)
    assert decode_frame(str(flat), 0, Preprocessing(32, 1))[1] & LOW_RANGE  # a crushed frame is flagged


def test_every_page_of_a_tiff_is_a_frame_and_the_cap_spreads_over_all_frames(tmp_path):
    person = tmp_path / "root" / "p1"
    person.mkdir(parents=True)
    pages = [Image.fromarray(np.full((30, 40), 40 * k, np.uint8)) for k in range(5)]
    pages[0].save(person / "loop.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(np.full((30, 40), 250, np.uint8)).save(person / "zz_single.png")
    assert BY_NAME["tiff"].probe(str(person / "loop.tif")).frames == 5
    for k in range(5):
        assert load_frame(str(person / "loop.tif"), 16, 1, k, resize="stretch").mean() == 40 * k
    table = read_labels(write_xlsx(tmp_path / "label.xlsx", [["id", "label"], ["p1", "a"]]), min_classes=1)
    manifest = collect_persons(str(tmp_path / "root"), table, None)
    assert manifest.report["images_found"] == 6 and manifest.report["multi_frame_files"] == 1
    capped = collect_persons(str(tmp_path / "root"), table, 3).frames["p1"]
    assert capped == [("p1/loop.tif", 1), ("p1/loop.tif", 3), ("p1/zz_single.png", 0)]


def test_an_mp4_cine_loop_is_counted_and_decoded_once_in_order(tmp_path):
    path = tmp_path / "p1" / "loop.mp4"
    path.parent.mkdir()
    write_mp4(path, 12)
    assert BY_NAME["video"].probe(str(path)).frames == 12
    results = decode_frames(str(path), list(range(12)), Preprocessing(32, 1, "stretch", "none"))
    means = [float(r[0].mean()) for r in results]
    assert all(abs(m - (10 + 20 * k)) < 6 for k, m in enumerate(means)), means
    frames = [Frame(str(path), "p1", 0, k) for k in range(12)]
    dataset = FrameDataset(frames, 32, 1, "stretch", "none")
    assert [abs(float(dataset[k][0].float().mean()) - means[k]) < 1 for k in range(12)] == [True] * 12
    assert dataset._video[0] == str(path)  # one decoded pass served every frame
    assert isinstance(decode_frames(str(path), [12], Preprocessing(32, 1))[0], str)  # past the end: a reason


# ---------------------------------------------------------------------------------------------
# Geometry
# ---------------------------------------------------------------------------------------------


def test_letterbox_keeps_the_aspect_crop_cuts_and_stretch_distorts(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((40, 80), 200, np.uint8)).save(path)  # 2:1 white
    shapes = {mode: load_frame(str(path), 32, 1, resize=mode) for mode in ("letterbox", "crop", "stretch")}
    assert all(a.shape == (1, 32, 32) for a in shapes.values())
    rows = np.flatnonzero(shapes["letterbox"][0].max(axis=1))
    columns = np.flatnonzero(shapes["letterbox"][0].max(axis=0))
    assert (len(columns), len(rows)) == (32, 16)  # 2:1 kept, black bands above and below
    assert (shapes["crop"] == 200).all() and (shapes["stretch"] == 200).all()
    tall = tmp_path / "tall.png"
    Image.fromarray(np.full((100, 20), 200, np.uint8)).save(tall)
    assert len(np.flatnonzero(load_frame(str(tall), 50, 1)[0].max(axis=0))) == 10  # 1:5 kept


def test_crop_auto_uses_the_dicom_ultrasound_region(tmp_path):
    ds = pydicom.dcmread(dicom("examples_rgb_color.dcm"))  # 320x240 ultrasound RGB, no region of its own
    pixels = np.full((240, 320, 3), 255, np.uint8)  # burnt-in white around the image
    pixels[30:150, 40:200] = np.arange(160, dtype=np.uint8)[None, :, None]  # the imaging region, a ramp
    ds.set_pixel_data(pixels, "RGB", 8)
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType = 1, 1
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 40, 30
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = 199, 149
    ds.SequenceOfUltrasoundRegions = [region]
    path = tmp_path / "region.dcm"
    ds.save_as(path)
    assert BY_NAME["dicom"].probe(str(path)).region
    auto = load_frame(str(path), 64, 3, crop="auto", resize="stretch")
    assert np.array_equal(auto, load_frame(str(path), 64, 3, crop="40,30,200,150", resize="stretch"))
    assert auto.max() < 255  # the white border is gone
    assert load_frame(str(path), 64, 3, crop="none", resize="stretch").max() == 255


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :20] = 255  # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.png", exif=exif)
    Image.fromarray(np.rot90(stored, k=-1)).save(tmp_path / "upright.png")  # what a viewer shows
    rotated = load_frame(str(tmp_path / "rotated.png"), 32, 1, resize="stretch")
    assert np.array_equal(rotated, load_frame(str(tmp_path / "upright.png"), 32, 1, resize="stretch"))
    assert rotated[0, :16].mean() > 200 and rotated[0, 16:].mean() < 50  # top half white once displayed


def test_crop_option_is_checked_and_old_model_files_read_as_stretch():
    from carotid.training.config import parse_train_args

    for bad in ("1,2,3", "5,5,1,1", "a,b,c,d"):
        with pytest.raises(UserError, match="--crop"):
            parse_train_args(["--crop", bad])
    assert parse_train_args(["--crop", "0,0,10,10"])[0].crop == "0,0,10,10"
    assert ModelFile.__dataclass_fields__["preprocessing"].default_factory() == {"resize": "stretch", "crop": "none"}


def test_colour_is_flagged_only_where_there_is_chroma(tmp_path):
    grey_rgb = np.repeat(np.random.default_rng(0).integers(0, 256, (48, 64, 1), dtype=np.uint8), 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "grey_rgb.png")
    doppler = grey_rgb.copy()
    doppler[10:30, 20:40] = (200, 30, 30)  # a red flow box
    Image.fromarray(doppler).save(tmp_path / "doppler.png")
    assert decode_frame(str(tmp_path / "grey_rgb.png"), 0, Preprocessing(32, 1))[1] == OK
    assert decode_frame(str(tmp_path / "doppler.png"), 0, Preprocessing(32, 1))[1] == OK | COLOUR


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------

US_PERSONS = {  # person: (label, [(pydicom test file, name in the person folder)])
    "p1": ("plaque", [("examples_ybr_color.dcm", "cine.dcm")]),
    "p2": ("normal", [("examples_palette.dcm", "palette.dcm")]),
    "p3": ("plaque", [("examples_rgb_color.dcm", "rgb.dcm"), ("ExplVR_BigEnd.dcm", "big_endian.dcm")]),
    "p4": ("normal", [("examples_jpeg2k.dcm", "IM0001")]),  # no suffix: found by its preamble
    "p5": ("plaque", [("examples_ybr_color.dcm", "1.2.840.10008.99.1")]),  # named by a UID
    "p6": ("normal", [("examples_palette.dcm", "a.dcm"), ("SC_rgb_jpeg_gdcm.dcm", "lossless.dcm")]),
}


@pytest.mark.slow
def test_pydicom_ultrasound_files_train_end_to_end(tmp_path, capsys):
    root = tmp_path / "us"
    for person, (_, files) in US_PERSONS.items():
        (root / person).mkdir(parents=True)
        for name, target in files:
            shutil.copy(dicom(name), root / person / target)
    label = write_xlsx(tmp_path / "label.xlsx", [["id", "label"]] + [[p, c] for p, (c, _) in US_PERSONS.items()])
    output = tmp_path / "out"
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "1"]
    ratios = ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25", "--max-imgs-per-person", "10"]
    assert train_in_process(*args, *ratios, "--in-channels", "3", *FAST) == 0
    printed = capsys.readouterr().out
    run_dir = only_run_dir(output)
    report = read_json(run_dir / "data_report.json")
    assert report["frames_by_kind"] == {"dicom": 66} and report["images_found"] == 66 and report["images_used"] == 26
    assert report["unreadable_images"] == [] and report["dicom_files_with_ultrasound_region"] == 4
    assert report["files_by_kind"] == {"dicom": 8}
    assert "frames: 66 in 8 files (dicom: 66 frames in 8 files); 2 multi-frame files; 26 used" in printed
    assert all(not report["decoding"][s]["unreadable"] for s in ("train", "val", "test"))
    rows = list(csv.DictReader(open(run_dir / "eval_test_best" / "predictions.csv", encoding="utf-8")))
    frames = {(Path(r["path"]).name, int(r["frame"])) for r in rows}
    test_persons = read_json(run_dir / "splits.json")["test"]
    cines = ("cine.dcm", "1.2.840.10008.99.1")
    expected = {t: range(1, 30, 3) if t in cines else [0] for p in test_persons for _, t in US_PERSONS[p][1]}
    assert frames == {(name, k) for name, ks in expected.items() for k in ks}  # cine frames 1, 4, …, 28
    model = ModelFile.load(run_dir / "models" / "best_model.pth")
    assert model.preprocessing == {"resize": "letterbox", "crop": "auto"}


@pytest.mark.slow
def test_a_frame_that_fails_in_training_is_listed_with_its_reason(tmp_path, monkeypatch, capsys):
    from tests.conftest import make_data

    root, label = make_data(tmp_path / "frames", persons=8, frames=3)
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    good = sorted(person.glob("*.png"))[0].read_bytes()
    (person / "truncated.png").write_bytes(good[: len(good) // 2])  # a valid header, the pixels cut off
    monkeypatch.setattr(readable, "SAMPLE", 0)  # as in a large dataset, where the start-up sample missed it
    output = tmp_path / "out"
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "1"]
    ratios = ["--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
    assert train_in_process(*args, *ratios, *FAST, "--batch-size", "1") == 0  # batch 1: no frame dropped by drop_last
    printed = capsys.readouterr().out
    report = read_json(only_run_dir(output) / "data_report.json")
    listed = [(split, u) for split, d in report["decoding"].items() for u in d["unreadable"]]
    assert len(listed) == 1
    split, entry = listed[0]
    assert entry["path"] == str(person / "truncated.png") and entry["frame"] == 0 and entry["reason"]
    assert f"{split}: 1 frame could not be decoded" in printed


def test_the_start_up_check_is_bounded_and_names_what_it_found(tmp_path):
    root = tmp_path / "root"
    for p in range(4):
        (root / f"p{p}").mkdir(parents=True)
        for k in range(40):
            Image.fromarray(np.full((8, 8), k, np.uint8)).save(root / f"p{p}" / f"f{k:03d}.png")
    # 64 of the 160 frames are decoded at start, spread evenly: frame 46 (p1/f006) is one, frame 45 is not.
    (root / "p1" / "f005.png").write_bytes(b"garbage")
    (root / "p1" / "f006.png").write_bytes(b"garbage")
    rows = [["id", "label"]] + [[f"p{p}", "ab"[p % 2]] for p in range(4)]
    manifest = collect_persons(str(root), read_labels(write_xlsx(tmp_path / "l.xlsx", rows)), None)
    assert "1 unreadable image skipped (listed in data_report.json)" in manifest.report["warnings"]
    assert manifest.report["start_up_check"] == {
        "frames_checked": 64,
        "colour_frames": 0,
        "low_range_frames": 63,  # 8x8 constant frames, all but the one that failed
        "failed": 1,
    }
    assert [u["path"] for u in manifest.report["unreadable_images"]] == ["p1/f006.png"]
    assert ("p1/f005.png", 0) in manifest.frames["p1"]  # proven (and reported) when first decoded
