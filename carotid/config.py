"""Every CLI's options, each declared once: `TrainConfig` (carotid-train, also the YAML schema),
`EvaluateOptions`, `PredictOptions` and `DemoOptions`. Evaluate and predict reuse train's definitions
through `like()`. The machinery that turns them into argparse and YAML is `carotid.options`.

`python -m carotid.config > configs/train/default.yaml` regenerates the documented YAML.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carotid.data.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, RESIZE_MODES, parse_box
from carotid.errors import UserError
from carotid.evaluation.registry import AGGREGATIONS, MONITORS
from carotid.model import ARCHITECTURES
from carotid.options import default_yaml, flag, like, opt, parse_options

DEFAULT_SEED, DEFAULT_BOOTSTRAP = 42, 1000


@dataclass
class TrainConfig:
    # Data
    root_dir: str | None = opt(
        None, "Folder with one sub-folder of frames per person (person ID = folder name).", group="data"
    )
    label_excel: str | None = opt(
        None, "Excel .xlsx file with one row per person: an ID column and a label column.", group="data"
    )
    sheet: str | None = opt(None, "Sheet of the Excel file to read (default: the first sheet).", group="data")
    id_column: str | None = opt(
        None, "Header of the person-ID column (default: recognised from common names, else column A).", group="data"
    )
    label_column: str | None = opt(
        None, "Header of the label column (default: recognised from common names, else column B).", group="data"
    )
    positive_class: str | None = opt(
        None,
        "Binary tasks: the class counted as positive for AUC/sensitivity (default: the last class in sorted order).",
        group="data",
    )
    demo: bool = opt(
        False, "Train on synthetic carotid B-mode data (made under --output-dir/demo_data when missing).", group="data"
    )
    max_imgs_per_person: int | None = opt(
        None, "Keep at most N frames per person, spread evenly over the sorted frame list.", group="data"
    )
    train_ratio: float = opt(0.7, "Share of persons in the training split.", group="data")
    val_ratio: float = opt(0.15, "Share of persons in the validation split (0 allowed).", group="data")
    test_ratio: float = opt(0.15, "Share of persons in the held-out test split (0 allowed).", group="data")
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
        "Training augmentation: mild affine + brightness/contrast + flip, or none.",
        choices=("ultrasound", "none"),
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
    # Model
    model: str = opt("resnet18", "Architecture.", choices=ARCHITECTURES, group="model")
    pretrained: bool = opt(
        False,
        "Download torchvision ImageNet weights (needs internet; offline use --pretrained-weights).",
        group="model",
    )
    pretrained_weights: str | None = opt(
        None,
        "Local torchvision state-dict file to initialise the backbone from (ImageNet head and RGB stem are adapted).",
        group="model",
    )
    load_model: str | None = opt(
        None,
        "Start from the weights of a carotid model file (or a bare state dict) and train in a new run directory.",
        group="model",
    )
    compile: bool = opt(False, "torch.compile the model (see docs/PERFORMANCE.md for when it pays).", group="model")
    # Optimisation
    epochs: int = opt(50, "Number of passes over the training persons' frames.")
    batch_size: int = opt(
        32, "Frames per batch on each process (the effective batch is this x processes x accumulation steps)."
    )
    lr: float = opt(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = opt(1e-4, "AdamW weight decay.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    scheduler: str = opt(
        "cosine", "Learning-rate schedule over optimizer steps.", choices=("cosine", "step", "plateau", "none")
    )
    warmup_epochs: float = opt(1.0, "Linear warm-up length in epochs (cosine and step schedules).")
    lr_step_epochs: int = opt(10, "step schedule: multiply the LR by lr_gamma every this many epochs.")
    lr_gamma: float = opt(0.1, "step and plateau schedules: LR multiplier.")
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.")
    class_weights: str = opt(
        "none",
        "auto = weight the loss by inverse person-class frequency of the training split.",
        choices=("none", "auto"),
    )
    balanced_sampler: bool = opt(
        False, "Sample training frames so every class is drawn equally often (works under DDP)."
    )
    clip_grad_norm: float | None = opt(None, "Clip the gradient norm to this value.")
    early_stopping_patience: int = opt(0, "Stop after this many epochs without improvement of --monitor (0 = never).")
    monitor: str = opt(
        "auto",
        "Validation metric that picks best_model.pth (auto: val_auc for 2 classes, else val_accuracy).",
        choices=MONITORS,
    )
    mixed_precision: str | None = opt(
        None, "no / fp16 / bf16 (default: what `accelerate launch` or its config says).", choices=("no", "fp16", "bf16")
    )
    # Run
    output_dir: str = opt("./output", "Each run makes output_dir/train_YYYYMMDD_HHMMSS/.", group="run")
    resume: str | None = opt(None, "Continue a run: its directory or one checkpoint folder inside it.", group="run")
    keep_checkpoints: int = opt(2, "Resumable checkpoints kept in RUN/checkpoints/.", group="run")
    checkpoint_every_steps: int = opt(
        0, "Also checkpoint every N optimizer steps inside an epoch (0 = end of epoch only).", group="run"
    )
    report_to: str | None = opt(
        None, "Experiment tracker (needs the tensorboard extra).", choices=("tensorboard",), group="run"
    )
    test: bool = opt(
        True,
        "After training, evaluate best_model.pth on the test split into RUN/eval_test_best/ (--no-test skips it).",
        group="run",
    )
    bootstrap: int = opt(
        1000, "Bootstrap resamples of persons for the test metrics' confidence intervals.", group="run"
    )
    person_aggregation: str = opt(
        "mean", "How frame probabilities become a person's probability.", choices=AGGREGATIONS, group="run"
    )
    dist_timeout_minutes: int = opt(
        60, "How long ranks wait for each other (e.g. while rank 0 builds the cache) before failing.", group="run"
    )

    def __post_init__(self) -> None:
        for name in ("train_ratio", "val_ratio", "test_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(
                    f"{flag(name)} must be between 0 and 1, got {value}", "give each split a share in [0, 1]"
                )
        total = self.train_ratio + self.val_ratio + self.test_ratio
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise UserError(
                f"split ratios must sum to 1, got {self.train_ratio} + {self.val_ratio} + {self.test_ratio} "
                f"= {total:g}",
                "adjust --train-ratio/--val-ratio/--test-ratio",
            )
        if self.train_ratio == 0:
            raise UserError("--train-ratio is 0", "give the training split a share > 0")
        _positive(
            self,
            "batch_size",
            "epochs",
            "image_size",
            "gradient_accumulation_steps",
            "keep_checkpoints",
            "lr_step_epochs",
            "dist_timeout_minutes",
        )
        if self.image_size < 16:
            raise UserError(f"--image-size must be at least 16, got {self.image_size}", "use e.g. 224")
        if self.crop not in ("auto", "none"):
            try:
                parse_box(self.crop)
            except ValueError as err:
                raise UserError(f"--crop {err}", "pass auto, none or a box x0,y0,x1,y1 in pixels") from None
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}", "use e.g. 1e-4")
        for name in ("lr", "weight_decay", "warmup_epochs", "lr_gamma", "label_smoothing"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(
                    f"{flag(name)} must be a finite number, got {getattr(self, name)}", f"pass a number to {flag(name)}"
                )
        if not self.lr_gamma > 0:
            raise UserError(f"--lr-gamma must be > 0, got {self.lr_gamma}", "use e.g. 0.1")
        if self.max_imgs_per_person is not None and self.max_imgs_per_person <= 0:
            raise UserError(
                f"--max-imgs-per-person must be ≥ 1, got {self.max_imgs_per_person}", "leave it out to keep every frame"
            )
        _non_negative(
            self,
            "weight_decay",
            "warmup_epochs",
            "num_workers",
            "checkpoint_every_steps",
            "early_stopping_patience",
            "label_smoothing",
            "bootstrap",
        )
        if self.label_smoothing >= 1:
            raise UserError(f"--label-smoothing must be < 1, got {self.label_smoothing}", "use e.g. 0.1")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise UserError(f"--clip-grad-norm must be > 0, got {self.clip_grad_norm}", "leave it out to not clip")
        if self.pretrained and self.pretrained_weights:
            raise UserError("--pretrained and --pretrained-weights both given", "choose one source of initial weights")
        if self.model == "small_cnn" and (self.pretrained or self.pretrained_weights):
            raise UserError(
                "small_cnn has no pretrained weights",
                "pick a torchvision --model or drop --pretrained/--pretrained-weights",
            )


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be ≥ 1, got {getattr(cfg, name)}", f"pass a positive {flag(name)}")


def _non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise UserError(f"{flag(name)} must be ≥ 0, got {getattr(cfg, name)}", f"pass {flag(name)} 0 or more")


def _check_threshold(threshold: float | None) -> None:
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}", "pass a probability such as 0.5")


TRAIN_GROUPS = {"data": "data", "model": "model", "training": "training", "run": "run directory and outputs"}


def parse_train_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """(config, names of the options given explicitly on the command line or in --config)."""
    return parse_options(
        TrainConfig,
        argv,
        "carotid-train",
        "Train a carotid-ultrasound classifier on per-person frame folders and an Excel label file.",
        TRAIN_GROUPS,
        config_file=True,
        example="configs/train/default.yaml",
    )


# ---------------------------------------------------------------------------------------------
# carotid-evaluate
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluateOptions:
    run_dir: str | None = opt(
        None,
        "A run directory made by carotid-train: its splits.json, config.yaml and models/.",
        group="what",
        metavar="RUN",
    )
    model: str | None = opt(
        None,
        "RUN/models/best_model.pth (default), final_model.pth, or any model file.",
        group="what",
        metavar="best|final|PATH",
    )
    split: str | None = opt(
        None,
        "Which persons of RUN's splits.json to evaluate (default: test).",
        choices=("test", "val", "train"),
        group="what",
    )
    root_dir: str | None = like(
        TrainConfig, "root_dir", help="Folder of person folders (default: the run's). Needed without --run-dir."
    )
    label_excel: str | None = like(
        TrainConfig, "label_excel", help="Excel label file (default: the run's). Needed without --run-dir."
    )
    sheet: str | None = like(TrainConfig, "sheet", help="Sheet of the label file (default: the run's, else the first).")
    id_column: str | None = like(
        TrainConfig, "id_column", help="Header of the person-ID column (default: the run's, else recognised)."
    )
    label_column: str | None = like(
        TrainConfig, "label_column", help="Header of the label column (default: the run's, else recognised)."
    )
    max_imgs_per_person: int | None = like(
        TrainConfig,
        "max_imgs_per_person",
        help="Frames per person, spread evenly; 0 = all (default: the run's cap; without --run-dir all frames).",
    )
    out: str | None = opt(
        None,
        "Output folder (default: RUN/eval_<split>_<model>/; external validation: see docs/EVALUATION.md).",
        group="output",
        metavar="DIR",
    )
    bootstrap: int | None = like(
        TrainConfig,
        "bootstrap",
        help=f"Person resamples for the 95% CIs, 0 = none (default: the run's, else {DEFAULT_BOOTSTRAP}).",
        group="output",
    )
    seed: int | None = like(
        TrainConfig,
        "seed",
        help=f"Seed of the bootstrap (default: the run's seed, else {DEFAULT_SEED}).",
        group="output",
    )
    person_aggregation: str | None = like(
        TrainConfig,
        "person_aggregation",
        help="Frame → person probability (default: the model file's).",
        group="output",
    )
    threshold: float | None = opt(
        None,
        "Binary: positive if P(positive) ≥ T (default: the model file's Youden threshold).",
        group="output",
        metavar="T",
    )
    batch_size: int = like(TrainConfig, "batch_size", 64, help="Frames per batch on each process.", group="run")
    num_workers: int | None = like(TrainConfig, "num_workers", group="run")
    cache: bool = like(TrainConfig, "cache", False, group="run")
    cache_dir: str | None = like(TrainConfig, "cache_dir", group="run")

    def __post_init__(self) -> None:
        _non_negative(self, "bootstrap", "num_workers", "max_imgs_per_person")
        _positive(self, "batch_size")
        _check_threshold(self.threshold)


EVALUATE_GROUPS = {
    "what": "what to evaluate",
    "data": "data",
    "output": "metrics and output",
    "run": "processes and loading",
}


def parse_evaluate_args(argv: Sequence[str] | None) -> EvaluateOptions:
    return parse_options(
        EvaluateOptions,
        argv,
        "carotid-evaluate",
        "Evaluate a carotid model file per image and per person, with 95% CIs.",
        EVALUATE_GROUPS,
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-predict
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("auto", "persons", "person")


@dataclass
class PredictOptions:
    model: str | None = opt(
        None, "A model file, e.g. RUN/models/best_model.pth.", group="what", metavar="PATH", required=True
    )
    input: str | None = opt(
        None,
        "A folder of person folders, one person's folder, or a folder of images.",
        group="what",
        metavar="DIR",
        required=True,
    )
    out: str | None = opt(
        None,
        "Per-image predictions; the per-person table goes beside it as FILE_persons.csv "
        "(default: ./predictions_<DIR name>.csv).",
        group="output",
        metavar="FILE.csv",
    )
    layout: str = opt(
        "auto",
        "persons = one sub-folder per person; person = all images of DIR belong to one person "
        "(default auto: 'person' if DIR holds images itself, else 'persons').",
        choices=LAYOUTS,
        group="what",
    )
    person_aggregation: str | None = like(EvaluateOptions, "person_aggregation")
    threshold: float | None = opt(
        None,
        "Binary models: positive if P(positive) ≥ T (default: the model file's threshold).",
        group="output",
        metavar="T",
    )
    batch_size: int = like(EvaluateOptions, "batch_size", 64)
    num_workers: int | None = like(EvaluateOptions, "num_workers")

    def __post_init__(self) -> None:
        _non_negative(self, "num_workers")
        _positive(self, "batch_size")
        _check_threshold(self.threshold)


def parse_predict_args(argv: Sequence[str] | None) -> PredictOptions:
    return parse_options(
        PredictOptions,
        argv,
        "carotid-predict",
        "Predict per image and per person with a carotid model file; no labels needed.",
        {"what": "what to predict", "output": "output", "run": "processes and loading"},
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-demo
# ---------------------------------------------------------------------------------------------


@dataclass
class DemoOptions:
    out: str | None = opt(
        None, "Folder to write the person folders and label.xlsx into.", group="demo", metavar="DIR", required=True
    )
    persons: int = opt(60, "Number of persons, half of them with plaque.", group="demo")
    frames: int = opt(12, "Frames per person.", group="demo")
    size: int = opt(128, "Frame width in pixels; height is 3/4 of it.", group="demo")
    seed: int = opt(0, "Random seed.", group="demo")

    def __post_init__(self) -> None:
        _positive(self, "persons", "frames")
        if self.size < 16:
            raise UserError(f"--size must be at least 16, got {self.size}", "use e.g. 128")


def parse_demo_args(argv: Sequence[str] | None, description: str) -> DemoOptions:
    return parse_options(DemoOptions, argv, "carotid-demo", description, {"demo": "demo data"})[0]


def train_yaml() -> str:
    """The documented configs/train/default.yaml: every option, its help and its default."""
    return default_yaml(
        TrainConfig,
        TRAIN_GROUPS,
        [
            "# carotid training options: every key of `carotid-train`, with its default.",
            "# Use with:  accelerate launch -m carotid.train --config configs/train/default.yaml \\",
            "#                --root-dir DATA --label-excel label.xlsx",
            "# Keys replace the built-in defaults; flags on the command line still win. Unknown keys are errors.",
            "# Regenerate with:  python -m carotid.config > configs/train/default.yaml",
        ],
    )


if __name__ == "__main__":
    sys.stdout.write(train_yaml())
