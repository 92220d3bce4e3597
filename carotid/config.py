"""`TrainConfig`: the one schema of every training option, its default and its help.

argparse is built from the dataclass, a `--config FILE.yaml` only changes defaults
(unknown keys and wrong types are errors), and range checks live in `__post_init__`.
`python -m carotid.config > configs/train/default.yaml` regenerates the documented YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from carotid.errors import UserError

ARCHITECTURES = (
    "small_cnn",
    "resnet18",
    "resnet34",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
    "mobilenet_v3_small",
)
MONITORS = (
    "auto",
    "val_loss",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_auc",
    "val_person_accuracy",
    "val_person_auc",
)


def opt(default: Any, help: str, choices: Sequence[Any] | None = None, group: str = "training") -> Any:
    """A dataclass field carrying its argparse help, choices and section."""
    return field(default=default, metadata={"help": help, "choices": choices, "group": group})


@dataclass
class TrainConfig:
    # Data
    root_dir: str | None = opt(None, "Folder with one sub-folder of frames per person (person ID = folder name).", group="data")
    label_excel: str | None = opt(None, "Excel .xlsx file with one row per person: an ID column and a label column.", group="data")
    sheet: str | None = opt(None, "Sheet of the Excel file to read (default: the first sheet).", group="data")
    id_column: str | None = opt(None, "Header of the person-ID column (default: recognised from common names, else column A).", group="data")
    label_column: str | None = opt(None, "Header of the label column (default: recognised from common names, else column B).", group="data")
    positive_class: str | None = opt(None, "Binary tasks: the class counted as positive for AUC/sensitivity (default: the last class in sorted order).", group="data")
    demo: bool = opt(False, "Train on synthetic carotid B-mode data (made under --output-dir/demo_data when missing).", group="data")
    max_imgs_per_person: int | None = opt(None, "Keep at most N frames per person, spread evenly over the sorted frame list.", group="data")
    train_ratio: float = opt(0.7, "Share of persons in the training split.", group="data")
    val_ratio: float = opt(0.15, "Share of persons in the validation split (0 allowed).", group="data")
    test_ratio: float = opt(0.15, "Share of persons in the held-out test split (0 allowed).", group="data")
    seed: int = opt(42, "Seed for the split, the weights' initialisation, shuffling and augmentation.", group="data")
    image_size: int = opt(224, "Frames are resized to image_size x image_size pixels.", group="data")
    in_channels: int = opt(1, "1 = grayscale (ultrasound is gray), 3 = RGB (gray frames are replicated).", choices=(1, 3), group="data")
    augment: str = opt("ultrasound", "Training augmentation: mild affine + brightness/contrast + flip, or none.", choices=("ultrasound", "none"), group="data")
    num_workers: int = opt(4, "DataLoader worker processes per training process.", group="data")
    cache: bool = opt(False, "Decode and resize every frame once into a memory-mapped uint8 cache; later epochs and runs read only that.", group="data")
    cache_dir: str | None = opt(None, "Where the frame cache lives (default: $XDG_CACHE_HOME/carotid or ~/.cache/carotid).", group="data")
    # Model
    model: str = opt("resnet18", "Architecture.", choices=ARCHITECTURES, group="model")
    pretrained: bool = opt(False, "Download torchvision ImageNet weights (needs internet; offline use --pretrained-weights).", group="model")
    pretrained_weights: str | None = opt(None, "Local torchvision state-dict file to initialise the backbone from (ImageNet head and RGB stem are adapted).", group="model")
    load_model: str | None = opt(None, "Start from the weights of a carotid model file (or a bare state dict) and train in a new run directory.", group="model")
    compile: bool = opt(False, "torch.compile the model (see docs/PERFORMANCE.md for when it pays).", group="model")
    # Optimisation
    epochs: int = opt(50, "Number of passes over the training persons' frames.")
    batch_size: int = opt(32, "Frames per batch on each process (the effective batch is this x processes x accumulation steps).")
    lr: float = opt(1e-4, "Peak learning rate of AdamW.")
    weight_decay: float = opt(1e-4, "AdamW weight decay.")
    gradient_accumulation_steps: int = opt(1, "Micro-batches per optimizer step.")
    scheduler: str = opt("cosine", "Learning-rate schedule over optimizer steps.", choices=("cosine", "step", "plateau", "none"))
    warmup_epochs: float = opt(1.0, "Linear warm-up length in epochs (cosine and step schedules).")
    lr_step_epochs: int = opt(10, "step schedule: multiply the LR by lr_gamma every this many epochs.")
    lr_gamma: float = opt(0.1, "step and plateau schedules: LR multiplier.")
    label_smoothing: float = opt(0.0, "Cross-entropy label smoothing.")
    class_weights: str = opt("none", "auto = weight the loss by inverse person-class frequency of the training split.", choices=("none", "auto"))
    balanced_sampler: bool = opt(False, "Sample training frames so every class is drawn equally often (works under DDP).")
    clip_grad_norm: float | None = opt(None, "Clip the gradient norm to this value.")
    early_stopping_patience: int = opt(0, "Stop after this many epochs without improvement of --monitor (0 = never).")
    monitor: str = opt("auto", "Validation metric that picks best_model.pth (auto: val_auc for 2 classes, else val_accuracy).", choices=MONITORS)
    mixed_precision: str | None = opt(None, "no / fp16 / bf16 (default: what `accelerate launch` or its config says).", choices=("no", "fp16", "bf16"))
    # Run
    output_dir: str = opt("./output", "Each run makes output_dir/train_YYYYMMDD_HHMMSS/.", group="run")
    resume: str | None = opt(None, "Continue a run: its directory or one checkpoint folder inside it.", group="run")
    keep_checkpoints: int = opt(2, "Resumable checkpoints kept in RUN/checkpoints/.", group="run")
    checkpoint_every_steps: int = opt(0, "Also checkpoint every N optimizer steps inside an epoch (0 = end of epoch only).", group="run")
    report_to: str | None = opt(None, "Experiment tracker (needs the tensorboard extra).", choices=("tensorboard",), group="run")
    test: bool = opt(True, "After training, evaluate best_model.pth on the test split into RUN/eval_test_best/ (--no-test skips it).", group="run")
    bootstrap: int = opt(1000, "Bootstrap resamples of persons for the test metrics' confidence intervals.", group="run")
    person_aggregation: str = opt("mean", "How frame probabilities become a person's probability.", choices=("mean", "median", "max"), group="run")
    dist_timeout_minutes: int = opt(60, "How long ranks wait for each other (e.g. while rank 0 builds the cache) before failing.", group="run")

    def __post_init__(self) -> None:
        for name in ("train_ratio", "val_ratio", "test_ratio"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{_flag(name)} must be between 0 and 1, got {value}", "give each split a share in [0, 1]")
        total = self.train_ratio + self.val_ratio + self.test_ratio
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise UserError(
                f"split ratios must sum to 1, got {self.train_ratio} + {self.val_ratio} + {self.test_ratio} = {total:g}",
                "adjust --train-ratio/--val-ratio/--test-ratio",
            )
        if self.train_ratio == 0:
            raise UserError("--train-ratio is 0", "give the training split a share > 0")
        _positive(self, "batch_size", "epochs", "image_size", "gradient_accumulation_steps", "keep_checkpoints",
                  "lr_step_epochs", "dist_timeout_minutes")
        if self.image_size < 16:
            raise UserError(f"--image-size must be at least 16, got {self.image_size}", "use e.g. 224")
        if not self.lr > 0:
            raise UserError(f"--lr must be > 0, got {self.lr}", "use e.g. 1e-4")
        for name in ("lr", "weight_decay", "warmup_epochs", "lr_gamma", "label_smoothing"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{_flag(name)} must be a finite number, got {getattr(self, name)}",
                                f"pass a number to --{_flag(name)}")
        if not self.lr_gamma > 0:
            raise UserError(f"--lr-gamma must be > 0, got {self.lr_gamma}", "use e.g. 0.1")
        if self.max_imgs_per_person is not None and self.max_imgs_per_person <= 0:
            raise UserError(f"--max-imgs-per-person must be ≥ 1, got {self.max_imgs_per_person}", "leave it out to keep every frame")
        _non_negative(self, "weight_decay", "warmup_epochs", "num_workers", "checkpoint_every_steps",
                      "early_stopping_patience", "label_smoothing", "bootstrap")
        if self.label_smoothing >= 1:
            raise UserError(f"--label-smoothing must be < 1, got {self.label_smoothing}", "use e.g. 0.1")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise UserError(f"--clip-grad-norm must be > 0, got {self.clip_grad_norm}", "leave it out to not clip")
        if self.pretrained and self.pretrained_weights:
            raise UserError("--pretrained and --pretrained-weights both given", "choose one source of initial weights")
        if self.model == "small_cnn" and (self.pretrained or self.pretrained_weights):
            raise UserError("small_cnn has no pretrained weights", "pick a torchvision --model or drop --pretrained/--pretrained-weights")


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _positive(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{_flag(name)} must be ≥ 1, got {getattr(cfg, name)}", f"pass a positive --{_flag(name)}")


def _non_negative(cfg: TrainConfig, *names: str) -> None:
    for name in names:
        if getattr(cfg, name) < 0:
            raise UserError(f"--{_flag(name)} must be ≥ 0, got {getattr(cfg, name)}", f"pass --{_flag(name)} 0 or more")


# ---------------------------------------------------------------------------------------------
# Field types and YAML values
# ---------------------------------------------------------------------------------------------

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def field_type(name: str) -> tuple[type, bool]:
    """(base type, whether None is allowed) of a TrainConfig field."""
    hint = _HINTS[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return hint, False


def coerce(name: str, value: Any, source: str) -> Any:
    """Check a value read from YAML against the field's type; ints are accepted for floats."""
    base, optional = field_type(name)
    where = f"{source}: '{name}'"
    if value is None:
        if optional:
            return None
        raise UserError(f"{where} cannot be empty", f"give a {base.__name__} or remove the key")
    if base is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r}", "write true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where} must be an integer, got {value!r}", "write a whole number")
        out = value
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML 1.1 reads "1e-4" as a string: accept it when it is a number.
            try:
                out = float(value) if isinstance(value, str) else None
            except ValueError:
                out = None
            if out is None:
                raise UserError(f"{where} must be a number, got {value!r}", "write a number such as 1.0e-4")
        else:
            out = float(value)
    else:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where} must be text, got {value!r}", "write a single value")
        out = str(value)
    choices = FIELDS[name].metadata["choices"]
    if choices is not None and out not in choices:
        raise UserError(f"{where} is {value!r}, not one of {', '.join(map(str, choices))}", "use one of the listed values")
    return out


def read_yaml_defaults(path: str) -> dict[str, Any]:
    """Options from a training YAML; keys may use '-' or '_'."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file not found: {path}", "check the --config path")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is not valid YAML ({str(err).splitlines()[0]})", "fix the file's syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must be a mapping of option: value", "see configs/train/default.yaml")
    if isinstance(data.get("options"), dict) and "versions" in data:
        data = {k: v for k, v in data["options"].items() if k != "resume"}  # a run's config.yaml: repeat that run
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in ("config",) or name not in FIELDS:
            raise UserError(f"{path}: unknown key '{key}'", "see configs/train/default.yaml for the option names")
        values[name] = coerce(name, value, path)
    return values


# ---------------------------------------------------------------------------------------------
# argparse, built from the dataclass
# ---------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises UserError, so bad flags get the same one-line error as everything else."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # Python < 3.13 takes "-1e-3" for an option, so `--lr -1e-3` fails with "expected one argument".
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$")

    def error(self, message: str) -> typing.NoReturn:
        raise UserError(message, f"see {self.prog} --help")


def _scalar(base: type, optional: bool):
    def parse(text: str):
        if optional and text.lower() in ("none", "null", ""):
            return None
        return base(text)

    parse.__name__ = base.__name__  # argparse names the type in its messages
    return parse


GROUP_TITLES = {"data": "data", "model": "model", "training": "training", "run": "run directory and outputs"}


def build_parser(defaults: dict[str, Any] | None = None, suppress: bool = False) -> ArgumentParser:
    """Parser for carotid.train. `suppress=True` leaves unset flags out (to see what was given)."""
    parser = ArgumentParser(
        prog="carotid-train",
        description="Train a carotid-ultrasound classifier on per-person frame folders and an Excel label file.",
        allow_abbrev=False,
        argument_default=argparse.SUPPRESS if suppress else None,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys replace the defaults below; flags still win.")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    defaults = defaults or {}
    for f in dataclasses.fields(TrainConfig):
        base, optional = field_type(f.name)
        default = defaults.get(f.name, f.default)
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "dest": f.name}
        if not suppress:
            kwargs["default"] = default
        group = groups[f.metadata["group"]]
        if base is bool:
            group.add_argument(f"--{_flag(f.name)}", action=argparse.BooleanOptionalAction, **kwargs)
            continue
        kwargs["type"] = _scalar(base, optional)
        if f.metadata["choices"] is not None:
            kwargs["choices"] = f.metadata["choices"]
        if not suppress:
            kwargs["help"] += f" (default: {default})"
        group.add_argument(f"--{_flag(f.name)}", metavar=f.name.upper() if f.metadata["choices"] is None else None, **kwargs)
    return parser


def parse_train_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, set[str]]:
    """(config, names of the options given explicitly on the command line or in --config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    file_values = read_yaml_defaults(known.config) if known.config else {}
    args = vars(build_parser(file_values).parse_args(argv))
    given = set(vars(build_parser(suppress=True).parse_args(argv))) | set(file_values)
    given.discard("config")
    args.pop("config", None)
    return TrainConfig(**args), given


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def default_yaml() -> str:
    """The documented configs/train/default.yaml: every option, its help and its default."""
    lines = [
        "# carotid training options: every key of `carotid-train`, with its default.",
        "# Use with:  accelerate launch -m carotid.train --config configs/train/default.yaml --root-dir DATA --label-excel label.xlsx",
        "# Keys replace the built-in defaults; flags on the command line still win. Unknown keys are errors.",
        "# Regenerate with:  python -m carotid.config > configs/train/default.yaml",
    ]
    current = None
    for f in dataclasses.fields(TrainConfig):
        if f.metadata["group"] != current:
            current = f.metadata["group"]
            lines += ["", f"# --- {GROUP_TITLES[current]} ---"]
        help_text = f.metadata["help"]
        if f.metadata["choices"] is not None:
            help_text += f" One of: {', '.join(map(str, f.metadata['choices']))}."
        lines.append(f"# {help_text}")
        lines.append(yaml.safe_dump({f.name: f.default}, allow_unicode=True, default_flow_style=False).strip())
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(default_yaml())
