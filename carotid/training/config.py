"""The training options, each declared once: `TrainConfig` (carotid-train, also the YAML schema), and the
checks every CLI's options share. The other commands' options (`carotid.commands`) reuse train's
definitions through `like()`. The machinery that turns them into argparse and YAML is `carotid.core.options`.

`python -m carotid.training.config > configs/train/default.yaml` regenerates the documented YAML.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carotid.core.errors import UserError
from carotid.core.options import default_yaml, flag, opt, parse_options
from carotid.core.trackers import CHOICES as TRACKER_CHOICES
from carotid.data.preprocessing import DEFAULT_CROP, DEFAULT_RESIZE, RESIZE_MODES, parse_box
from carotid.evaluation.registry import (
    CALIBRATIONS,
    CI_METHODS,
    MONITORS,
    OPERATING_POINT_HELP,
    parse_operating_point,
)
from carotid.model import AGGREGATIONS, MODEL_HELP, PERSON_MODELS, TORCHVISION, split_arch


@dataclass
class TrainConfig:
    # Data
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
    model: str = opt("resnet18", MODEL_HELP, group="model")
    pretrained: bool = opt(
        False,
        "Download the ImageNet weights of --model (torchvision's or timm's; needs internet; offline use "
        "--pretrained-weights).",
        group="model",
    )
    pretrained_weights: str | None = opt(
        None,
        "Local file of starting weights (offline): a timm or torchvision state dict (.safetensors, .pth, .bin), a "
        "Lightning/DeepSpeed checkpoint or a carotid model file. Wrapper prefixes are stripped, a head of another "
        "class count skipped, an RGB stem summed for gray frames; the run prints what loaded.",
        group="model",
    )
    freeze_backbone_epochs: int = opt(
        0,
        "Train only the classifier head for the first N epochs, the backbone's weights and BatchNorm statistics "
        "frozen; N ≥ --epochs is a linear probe.",
        group="model",
        metavar="N",
    )
    layer_decay: float | None = opt(
        None,
        "Layer-wise LR decay (e.g. 0.75): each layer group from the head down gets this factor more (timm models, "
        "which define their layer groups).",
        group="model",
    )
    ema: bool = opt(
        False,
        "Keep an exponential moving average of the weights (timm's ModelEmaV3); validation scores it and the "
        "best/final model files hold it.",
        group="model",
    )
    ema_decay: float = opt(0.998, "--ema: decay per optimizer step (warmed up over the first steps).", group="model")
    drop_path: float | None = opt(
        None, "Stochastic depth rate (e.g. 0.1) for timm architectures that have drop-path layers.", group="model"
    )
    load_model: str | None = opt(
        None,
        "Start from the weights of a carotid model file (or a bare state dict) and train in a new run directory.",
        group="model",
    )
    person_model: str = opt(
        "frames",
        "frames = a frame classifier trained with each frame labelled as its person, probabilities pooled by "
        "--person-aggregation; attention = a person-level model: the frame encoder's embeddings of a person's frames "
        "pooled by gated attention (per-frame weights are an output), the loss on the person's label; "
        "mean = the same with the embeddings' mean.",
        choices=PERSON_MODELS,
        group="model",
    )
    bag_size: int = opt(
        16,
        "Person models: frames sampled at random (per epoch, seeded) from each person for a training step; "
        "evaluation and predict use all of a person's frames.",
        group="model",
        metavar="K",
    )
    attention_dropout: float = opt(
        0.0,
        "--person-model attention, training only: dropout on the attention network's hidden units (CLAM uses "
        "0.25); evaluation, predict and ONNX use every unit.",
        group="model",
        metavar="P",
    )
    mask_top_frames: int = opt(
        0,
        "--person-model attention, training only: leave each of a person's K highest-attention frames out of its "
        "pooling with probability 1/2 per step (at least one frame kept; stochastic top-k masking, as in ACMIL), "
        "so the model cannot rest on one frame alone. 0 = off.",
        group="model",
        metavar="K",
    )
    compile: bool = opt(False, "torch.compile the model (see docs/PERFORMANCE.md for when it pays).", group="model")
    # Optimisation
    epochs: int = opt(50, "Number of passes over the training persons' frames.")
    batch_size: int = opt(
        32,
        "Frames per batch on each process, for every model (the effective batch is this x processes x "
        "accumulation steps); a person model (--person-model attention/mean) takes as many persons a step as "
        "bring about this many frames (each up to --bag-size), so the same command makes about as many optimizer "
        "steps for every --person-model. The start-up block prints persons and frames per step and the steps.",
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
        None,
        "Experiment tracker, through Accelerate: tensorboard (event files in RUN/tensorboard/), mlflow (a file "
        "store in RUN/mlruns/ unless MLFLOW_TRACKING_URI is set), wandb, aim, comet_ml, clearml, dvclive, swanlab, "
        "trackio, or none (default: none). Each needs its package (pip install 'carotid[tensorboard]', "
        "'carotid[mlflow]').",
        choices=TRACKER_CHOICES,
        group="run",
    )
    test: bool = opt(
        True,
        "After training, evaluate best_model.pth on the test split into RUN/eval_test_best/ (--no-test skips it).",
        group="run",
    )
    bootstrap: int = opt(
        1000, "Bootstrap resamples of persons for the test metrics' confidence intervals.", group="run"
    )
    ci: str = opt(
        CI_METHODS[0],
        "Confidence intervals of per-person sensitivity, specificity, PPV, NPV and accuracy: wilson (score "
        "interval), exact (Clopper–Pearson) or bootstrap (the person bootstrap, as AUC always).",
        choices=CI_METHODS,
        group="run",
    )
    person_aggregation: str = opt(
        "mean", "How frame probabilities become a person's probability.", choices=AGGREGATIONS, group="run"
    )
    calibrate: str | None = opt(
        None,
        "temperature = fit one temperature T on the validation frames' logits (lowest NLL) and store it in the "
        "model file; evaluate and predict then give softmax(logits / T). Default: no calibration.",
        choices=CALIBRATIONS,
        group="run",
    )
    operating_point: list[str] = opt(
        [],
        f"Binary: a threshold chosen on the validation persons and stored in the model file: {OPERATING_POINT_HELP}. "
        "Evaluations report the metrics at each, with CIs.",
        group="run",
        metavar="SPEC",
    )
    dist_timeout_minutes: int = opt(
        60, "How long ranks wait for each other (e.g. while rank 0 builds the cache) before failing.", group="run"
    )

    def __post_init__(self) -> None:
        """Every value checked before anything runs, each mistake a UserError naming the flag."""
        self.check_splits()
        self.check_numbers()
        self.check_choices()

    def check_splits(self) -> None:
        """The split ratios (each in [0, 1], summing to 1, a training share) and --folds."""
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
        if self.folds is not None and self.folds < 2:
            raise UserError(f"--folds must be ≥ 2, got {self.folds}", "use e.g. --folds 5, or leave it out")

    def check_numbers(self) -> None:
        """Sizes, the learning rate and the other numbers: positive, finite, in range."""
        check_positive(
            self,
            "batch_size",
            "epochs",
            "image_size",
            "gradient_accumulation_steps",
            "keep_checkpoints",
            "lr_step_epochs",
            "dist_timeout_minutes",
            "bag_size",
        )
        check_header_row(self.header_row)
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
        if self.finding_frames is not None and not (self.demo and 1 <= self.finding_frames <= 12):
            raise UserError(
                f"--finding-frames {self.finding_frames} needs --demo and a count from 1 to 12",
                "use it as --demo --finding-frames 2 (it shapes the synthetic demo data only)",
            )
        if self.max_imgs_per_person is not None and self.max_imgs_per_person <= 0:
            raise UserError(
                f"--max-imgs-per-person must be ≥ 1, got {self.max_imgs_per_person}", "leave it out to keep every frame"
            )
        check_non_negative(
            self,
            "weight_decay",
            "warmup_epochs",
            "num_workers",
            "checkpoint_every_steps",
            "early_stopping_patience",
            "label_smoothing",
            "bootstrap",
            "mask_top_frames",
        )
        if not 0 <= self.attention_dropout < 1:
            raise UserError(f"--attention-dropout must be in [0, 1), got {self.attention_dropout}", "use e.g. 0.25")
        if (self.attention_dropout or self.mask_top_frames) and self.person_model != "attention":
            raise UserError(
                f"--attention-dropout and --mask-top-frames act on attention; --person-model is {self.person_model}",
                "add --person-model attention, or leave them out",
            )
        if self.label_smoothing >= 1:
            raise UserError(f"--label-smoothing must be < 1, got {self.label_smoothing}", "use e.g. 0.1")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise UserError(f"--clip-grad-norm must be > 0, got {self.clip_grad_norm}", "leave it out to not clip")

    def check_choices(self) -> None:
        """Options that only make sense together: weights sources, operating points, calibration, fine-tuning."""
        if self.pretrained and self.pretrained_weights:
            raise UserError("--pretrained and --pretrained-weights both given", "choose one source of initial weights")
        check_operating_points(self.operating_point)
        if (self.calibrate or self.operating_point) and self.val_ratio == 0:
            raise UserError(
                "--calibrate and --operating-point are chosen on the validation persons, but --val-ratio is 0",
                "give the validation split a share, e.g. --val-ratio 0.15",
            )
        self.check_fine_tuning()
        if self.model == "small_cnn" and (self.pretrained or self.pretrained_weights):
            raise UserError(
                "small_cnn has no pretrained weights",
                "pick a torchvision or timm --model or drop --pretrained/--pretrained-weights",
            )

    def check_fine_tuning(self) -> None:
        """--model's library prefix and the fine-tuning options (timm names are checked once timm loads)."""
        library, bare = split_arch(self.model)
        if library == "torchvision" and bare not in TORCHVISION:
            raise UserError(f"unknown model '{self.model}': tv/ names are {', '.join(TORCHVISION)}", "see --help")
        check_non_negative(self, "freeze_backbone_epochs")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"--layer-decay must be in (0, 1], got {self.layer_decay}", "use e.g. 0.75")
        if not 0 < self.ema_decay < 1:
            raise UserError(f"--ema-decay must be between 0 and 1, got {self.ema_decay}", "use e.g. 0.998")
        if self.drop_path is not None and not 0 <= self.drop_path < 1:
            raise UserError(f"--drop-path must be in [0, 1), got {self.drop_path}", "use e.g. 0.1")
        if 0 < self.freeze_backbone_epochs < self.epochs and self.scheduler == "plateau":
            raise UserError(
                "--freeze-backbone-epochs shorter than --epochs needs a step-wise schedule, not --scheduler plateau",
                "use --scheduler cosine (or a linear probe: --freeze-backbone-epochs ≥ --epochs)",
            )


def check_positive(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"{flag(name)} must be ≥ 1, got {getattr(cfg, name)}", f"pass a positive {flag(name)}")


def check_non_negative(cfg: Any, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) is not None and getattr(cfg, name) < 0:
            raise UserError(f"{flag(name)} must be ≥ 0, got {getattr(cfg, name)}", f"pass {flag(name)} 0 or more")


def check_header_row(row: int | None) -> None:
    if row is not None and row < 1:
        raise UserError(f"--header-row must be ≥ 1 (rows are numbered as Excel shows them), got {row}", "use e.g. 1")


def check_operating_points(specs: list[str]) -> None:
    for text in specs:
        if parse_operating_point(text) is None:
            raise UserError(f"--operating-point '{text}' is not understood", f"use {OPERATING_POINT_HELP}")
    names = [parse_operating_point(text).name for text in specs]
    if len(set(names)) != len(names):
        raise UserError(f"--operating-point repeats a point: {', '.join(specs)}", "give each point once")


def check_threshold(threshold: float | None) -> None:
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
            "# Regenerate with:  python -m carotid.training.config > configs/train/default.yaml",
        ],
    )


if __name__ == "__main__":
    sys.stdout.write(train_yaml())
