"""The training options, each declared once: `TrainConfig` (carotid-train, also the YAML schema), made of its
option groups (`data_options`, `model_options`, `run_options`), and the checks every CLI's options share. The
other commands' options (`carotid.commands`) reuse train's definitions through `like()`. The machinery that
turns them into argparse and YAML is `carotid.core.options`.

`python -m carotid.training.config > configs/train/default.yaml` regenerates the documented YAML.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from carotid.core.errors import UserError
from carotid.core.options import default_yaml, flag, parse_options
from carotid.data.frames.preprocessing import parse_box
from carotid.evaluation.registry import (
    OPERATING_POINT_HELP,
    parse_operating_point,
)
from carotid.model import TORCHVISION, split_arch
from carotid.training.data_options import DataOptions
from carotid.training.model_options import ModelOptions
from carotid.training.run_options import RunOptions


@dataclass
class TrainConfig(RunOptions, ModelOptions, DataOptions):
    """Every carotid-train option (fields in --help's order: data, model, run; dataclass fields follow the
    reversed MRO), and the checks on their values together."""

    def __post_init__(self) -> None:
        """Every value checked before anything runs, each mistake a UserError naming the flag."""
        self.check_splits()
        self.check_numbers()
        self.check_choices()
        if self.global_pool == "auto":
            from_scratch = not (self.pretrained or self.pretrained_weights)
            self.global_pool = "max" if self.person_model != "frames" and from_scratch else "avg"

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
            "subgroup_min_persons",
        )
        check_header_row(self.header_row)
        check_subgroup_columns(self.subgroup_column)
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


def check_subgroup_columns(columns: list[str]) -> None:
    if len(set(columns)) != len(columns):
        raise UserError(f"--subgroup-column repeats a column: {columns}", "give each column once")


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
