"""carotid-train's data options: the sheet and folders, the split, frames per person, preprocessing, loaders, cache."""

from __future__ import annotations

from dataclasses import dataclass

from carotid.core.options import opt
from carotid.data.frames.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, RESIZE_MODES


@dataclass
class DataOptions:
    """The options of --help's data group (a part of `TrainConfig`)."""

    root_dir: str | None = opt(
        None, "Folder with one sub-folder of frames per person (person ID = folder name).", group="data"
    )
    label_excel: str | None = opt(
        None, "Excel .xlsx file with one row per person: an ID column and a label column.", group="data"
    )
    sheet: str | None = opt(
        None,
        "Sheet of the Excel file to read (default: the active sheet if visible, else the first visible one; "
        "a hidden sheet is read only when named here).",
        group="data",
    )
    header_row: int | None = opt(
        None,
        "Row number (as Excel shows it) of the column headers (default: the first row of text cells, "
        "title rows above it skipped; printed at start).",
        group="data",
        metavar="N",
    )
    id_column: str | None = opt(
        None,
        "Header of the person-ID column (default: recognised from common names; guessed only on a two-column sheet).",
        group="data",
    )
    label_column: str | None = opt(
        None,
        "Header of the label column (default: recognised from common names; guessed only on a two-column sheet).",
        group="data",
    )
    positive_class: str | None = opt(
        None,
        "Binary tasks: the class counted as positive for AUC/sensitivity (default: recognised from the labels, "
        "e.g. plaque/normal, 阳性/阴性, 1/0, yes/no; else the last class in sorted order, with a warning).",
        group="data",
    )
    strict_matching: bool = opt(
        False,
        "Stop with an error when any sheet row has no person folder or any person folder has no sheet row.",
        group="data",
    )
    demo: bool = opt(
        False, "Train on synthetic carotid B-mode data (made under --output-dir/demo_data when missing).", group="data"
    )
    finding_frames: int | None = opt(
        None,
        "With --demo: how many of a plaque person's 12 frames show the plaque, the others looking like a normal "
        "person's (made under --output-dir/demo_data_findingN; default: all frames).",
        group="data",
    )
    max_imgs_per_person: int | None = opt(
        None, "Keep at most N frames per person, spread evenly over the sorted frame list.", group="data"
    )
    train_ratio: float = opt(0.7, "Share of persons in the training split.", group="data")
    val_ratio: float = opt(0.15, "Share of persons in the validation split (0 allowed).", group="data")
    test_ratio: float = opt(0.15, "Share of persons in the held-out test split (0 allowed).", group="data")
    group_column: str | None = opt(
        None,
        "Header of a sheet column naming each person's group (e.g. the patient of both sides or of repeat visits): "
        "every split and fold keeps a group whole.",
        group="data",
    )
    folds: int | None = opt(
        None,
        "Cross-validate: K ≥ 2 label-stratified person folds after the test split, one run per fold in "
        "output_dir/cv_YYYYMMDD_HHMMSS/fold_k/; train:val ratio divides each fold's training persons.",
        group="data",
    )
    seed: int = opt(42, "Seed for the split, the weights' initialisation, shuffling and augmentation.", group="data")
    image_size: int = opt(224, "Frames are resized to image_size x image_size pixels (see --resize).", group="data")
    resize: str = opt(
        DEFAULT_RESIZE,
        "How a frame becomes a square: letterbox = fit the long side and pad with black (aspect and every pixel "
        "kept), crop = fit the short side and cut the centre, stretch = scale each axis (distorts).",
        choices=RESIZE_MODES,
        group="data",
    )
    crop: str = opt(
        DEFAULT_CROP,
        "Region of each frame to use: auto = the DICOM ultrasound imaging region where the file names one "
        "(drops burnt-in text and rulers), else the whole frame; none = the whole frame; x0,y0,x1,y1 = this "
        "box in pixels (x1, y1 exclusive).",
        group="data",
    )
    in_channels: int = opt(
        1,
        "1 = grey: colour frames (colour Doppler, colour annotations) are converted to grey and counted at start; "
        "3 = RGB: colour kept (YBR and palette DICOM converted to RGB), grey frames replicated.",
        choices=(1, 3),
        group="data",
    )
    augment: str = opt(
        "ultrasound",
        "Training augmentation: ultrasound = mild affine (rotation, shift, scale) + brightness/contrast + left-right "
        "flip; flip = the same without the affine (no resampling: a finding a few pixels wide at a small "
        "--image-size stays sharp); none.",
        choices=("ultrasound", "flip", "none"),
        group="data",
    )
    num_workers: int | None = opt(
        None,
        "DataLoader worker processes per process (default: 4, at most the CPUs available).",
        group="data",
    )
    cache: bool = opt(
        False,
        "Decode and resize every frame once into a memory-mapped uint8 cache; later epochs and runs read only that.",
        group="data",
    )
    cache_dir: str | None = opt(
        None, "Where the frame cache lives (default: $XDG_CACHE_HOME/carotid or ~/.cache/carotid).", group="data"
    )
