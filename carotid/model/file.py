"""The model file: the only code that writes, reads and checks `models/*.pth`.

A model file is a `torch.save`d dict of tensors and plain values, so it loads with
`torch.load(weights_only=True)` anywhere (no pickled code): the consolidated fp32 state dict and
everything needed to use it (architecture, classes, input contract, operating point, provenance).
`ModelFile` names and types every field; `ModelFile.load` refuses a file whose fields or tensor shapes
do not fit its architecture, and reads the files of older versions of this tool.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carotid.core.errors import UserError
from carotid.core.files import atomic_torch_save, safe_torch_load
from carotid.data.frames.preprocessing import (
    LEGACY_PREPROCESSING,
    RESIZE_MODES,
    Preprocessing,
    channel_conversion,
    parse_box,
    preprocessing_of,
)
from carotid.model import AGGREGATIONS, GLOBAL_POOLS, PERSON_MODELS, split_arch
from carotid.model.person import PersonModel
from carotid.model.registry import build_model, check_arch, check_fits, load_matching, strip_prefixes

FORMAT = "carotid-model"
# 1: the aggregation was stored as 'person_aggregation'; 2: no temperature or operating points; 3: no
# 'preprocessing' (stretch, no crop). Files from version 3 on may hold a temperature or a preprocessing,
# which an older carotid would silently ignore, so those refuse them. 4: no 'person_model' (frame-level only);
# from 5 on a file may hold a person-level model, which an older carotid would build as a frame-level one. 5: no
# 'global_pool' (the architecture's average); from 6 on it may be "max", which an older carotid would build as avg.
FORMAT_VERSION = 6
REQUIRED = ("state_dict", "arch", "num_classes", "class_names", "in_channels", "image_size", "normalization")


@dataclass
class ModelFile:
    """A trained model and its contract: what input it takes and how its output is read."""

    state_dict: dict[str, torch.Tensor]  # consolidated, fp32, no 'module.'/'_orig_mod.' prefixes
    arch: str  # small_cnn, a torchvision name or timm/NAME (carotid.model.split_arch); written with its library
    class_names: list[str]  # output index k is class_names[k]
    in_channels: int  # 1 (gray) or 3 (RGB)
    image_size: int  # frames are resized to image_size x image_size
    normalization: dict[str, list[float]]  # {"mean": [...], "std": [...]} per channel, on [0, 1] pixels
    positive_index: int  # binary tasks: the class counted as positive (AUC, sensitivity); else the last class
    # {"resize": letterbox|crop|stretch, "crop": auto|none|"x0,y0,x1,y1"}: how frames became input in training
    preprocessing: dict[str, str] = field(default_factory=lambda: dict(LEGACY_PREPROCESSING))
    aggregation: str = "mean"  # frame probabilities → person probability (carotid.model.AGGREGATIONS)
    person_model: str = "frames"  # PERSON_MODELS: a frame classifier, or a person model and its pooling
    bag_size: int | None = None  # person models: frames sampled per person per training step
    global_pool: str = "avg"  # GLOBAL_POOLS: how the encoder pools its last feature map (no weights of its own)
    threshold: float | None = None  # binary: positive ⇔ P(positive) ≥ threshold; None for multi-class models
    threshold_source: str | None = None  # how the threshold was chosen, in words
    temperature: float | None = None  # probabilities are softmax(logits / temperature); None = not calibrated
    temperature_source: str | None = None  # how it was fitted, in words
    operating_points: list[dict[str, Any]] = field(default_factory=list)  # [{name, threshold}] from --operating-point
    epoch: int | None = None  # the epoch whose weights these are
    metrics: dict[str, Any] = field(default_factory=dict)  # that epoch's metrics row (validation numbers)
    config: dict[str, Any] = field(default_factory=dict)  # the training run's resolved options
    monitor: str | None = None  # the metric that chose the best epoch
    # best_model.pth: how its epoch was chosen (evaluation.records.BestEpoch: ties, saturation); None otherwise
    best_epoch: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def library(self) -> str:
        """Which library builds `arch`: carotid, torchvision or timm."""
        return split_arch(self.arch)[0]

    @property
    def binary(self) -> bool:
        return len(self.class_names) == 2

    @property
    def positive_class(self) -> str:
        return self.class_names[self.positive_index]

    @property
    def person_level(self) -> bool:
        """Whether the model gives one output per person (from all its frames), not one per frame."""
        return self.person_model != "frames"

    @property
    def prep(self) -> Preprocessing:
        """How evaluate and predict turn frames into this model's input: as in its training."""
        return Preprocessing(self.image_size, self.in_channels, **preprocessing_of(self.preprocessing))

    # -----------------------------------------------------------------------------------------
    # Writing
    # -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # fp32 whatever the training precision (bf16 under DeepSpeed): a model file loads anywhere.
        payload["state_dict"] = {
            k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous()
            for k, v in strip_prefixes(self.state_dict).items()
        }
        return {
            "format": FORMAT,
            "num_classes": self.num_classes,
            "library": self.library,
            **payload,
            # For a reader of the file: how colour, palette, YBR and 16-bit frames became the input channels.
            "channel_conversion": channel_conversion(self.in_channels),
            "format_version": FORMAT_VERSION,
        }

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash leaves the previous file, never half of one."""
        atomic_torch_save(self.to_dict(), path)

    # -----------------------------------------------------------------------------------------
    # Reading
    # -----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> ModelFile:
        """Load with weights_only=True and check everything; any problem is a UserError naming it."""
        path = Path(path)
        if not path.exists():
            raise UserError(f"model file not found: {path}", "check the path (models are in RUN/models/)")
        if not path.is_file():
            raise UserError(f"model path is not a file: {path}", "pass a .pth file such as RUN/models/best_model.pth")
        return cls.from_dict(safe_torch_load(path, "model file"), path)

    @classmethod
    def from_dict(cls, data: Any, path: str | Path) -> ModelFile:
        """The ModelFile of what a weights_only load of `path` gave, if it is a sound carotid model file."""
        if not is_model_file(data):
            raise UserError(
                f"{path} is not a carotid model file (no '{FORMAT}' header)",
                "pass RUN/models/best_model.pth or final_model.pth from carotid-train",
            )
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise UserError(
                f"{path} is an incomplete carotid model file (missing {', '.join(missing)})",
                "re-export it with carotid-train",
            )
        version = data.get("format_version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(f"{path} was written by a newer carotid (format {version})", "upgrade carotid")
        problem = _field_problem(data)
        if problem:
            raise UserError(f"{path} is a damaged carotid model file ({problem})", "re-export it with carotid-train")
        names = list(data["class_names"])
        model = cls(
            state_dict=strip_prefixes(data["state_dict"]),
            arch=data["arch"],
            class_names=names,
            in_channels=data["in_channels"],
            image_size=data["image_size"],
            normalization={k: [float(x) for x in data["normalization"][k]] for k in ("mean", "std")},
            preprocessing=preprocessing_of(data.get("preprocessing")),
            positive_index=int(data.get("positive_index", len(names) - 1)),
            aggregation=data.get("aggregation", data.get("person_aggregation", "mean")),
            person_model=data.get("person_model", "frames"),
            bag_size=data.get("bag_size"),
            global_pool=data.get("global_pool", "avg"),
            threshold=None if data.get("threshold") is None else float(data["threshold"]),
            threshold_source=data.get("threshold_source"),
            temperature=None if data.get("temperature") is None else float(data["temperature"]),
            temperature_source=data.get("temperature_source"),
            operating_points=[
                {"name": str(p["name"]), "threshold": float(p["threshold"])} for p in data.get("operating_points") or []
            ],
            epoch=data.get("epoch"),
            metrics=dict(data.get("metrics") or {}),
            config=dict(data.get("config") or {}),
            monitor=data.get("monitor"),
            best_epoch=dict(data["best_epoch"]) if isinstance(data.get("best_epoch"), dict) else None,
            format_version=version,
        )
        if model.binary and model.threshold is None and version < 2:
            model.threshold_source = "default 0.5: the model file holds no threshold"
        model.check_shapes(f"{path}")
        return model

    def check_shapes(self, source: str) -> None:
        """Every tensor has the shape the architecture gives it (built on the meta device: no memory, no time)."""
        with torch.device("meta"):
            skeleton = self.skeleton()
        check_fits(skeleton, self.state_dict, f"model file {source}", self.arch)

    def skeleton(self) -> nn.Module:
        """The untrained module this file's weights belong to: the architecture, or a PersonModel around it."""
        common = {"image_size": self.image_size, "global_pool": self.global_pool}
        if self.person_level:
            return PersonModel(self.arch, self.num_classes, self.in_channels, pooling=self.person_model, **common)
        return build_model(self.arch, self.num_classes, self.in_channels, **common)

    def build_model(self) -> nn.Module:
        """The model with these weights, in eval mode, on the CPU: a frame classifier or a PersonModel."""
        model = self.skeleton()
        load_matching(model, self.state_dict, f"model file ({self.arch})", self.arch)
        return model.eval()


def is_model_file(data: Any) -> bool:
    return isinstance(data, dict) and data.get("format") == FORMAT


def _field_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a model file's fields (a file written by carotid has none of these)."""
    return _network_problem(data) or _decision_problem(data) or _preprocessing_problem(data)


def _network_problem(data: dict[str, Any]) -> str | None:
    """The weights and what builds the network: state_dict, arch, classes, channels, size, normalisation."""
    state, names = data["state_dict"], data["class_names"]
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        return "'state_dict' is not a dict of tensors"
    try:
        check_arch(data["arch"]) if isinstance(data["arch"], str) else check_arch("")
    except UserError as err:
        return f"'arch' is {data['arch']!r}: {err.what}, {err.fix}"
    if (
        not isinstance(names, (list, tuple))
        or len(names) < 2
        or not all(isinstance(n, str) for n in names)
        or len(set(names)) != len(names)
    ):
        return f"'class_names' is {names!r}"
    if data["num_classes"] != len(names):
        return f"'num_classes' is {data['num_classes']!r} but there are {len(names)} class names"
    if data["in_channels"] not in (1, 3) or isinstance(data["in_channels"], bool):
        return f"'in_channels' is {data['in_channels']!r}"
    if not isinstance(data["image_size"], int) or isinstance(data["image_size"], bool) or data["image_size"] < 1:
        return f"'image_size' is {data['image_size']!r}"
    norm = data["normalization"]
    if not isinstance(norm, dict) or not all(
        isinstance(norm.get(k), (list, tuple)) and len(norm[k]) == data["in_channels"] for k in ("mean", "std")
    ):
        return f"'normalization' is {norm!r}"
    if data.get("global_pool", "avg") not in GLOBAL_POOLS:
        return f"'global_pool' is {data['global_pool']!r}"
    return None


def _decision_problem(data: dict[str, Any]) -> str | None:
    """How probabilities become a decision: positive class, threshold, aggregation, person model, temperature."""
    names = data["class_names"]
    positive = data.get("positive_index", len(names) - 1)
    if isinstance(positive, bool) or not isinstance(positive, int) or not 0 <= positive < len(names):
        return f"'positive_index' is {positive!r}"
    threshold = data.get("threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0
    ):
        return f"'threshold' is {threshold!r}"
    aggregation = data.get("aggregation", data.get("person_aggregation", "mean"))
    if aggregation not in AGGREGATIONS:
        return f"'aggregation' is {aggregation!r}"
    if data.get("person_model", "frames") not in PERSON_MODELS:
        return f"'person_model' is {data['person_model']!r}"
    bag_size = data.get("bag_size")
    if bag_size is not None and (isinstance(bag_size, bool) or not isinstance(bag_size, int) or bag_size < 1):
        return f"'bag_size' is {bag_size!r}"
    temperature = data.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf
    ):
        return f"'temperature' is {temperature!r}"
    points = data.get("operating_points") or []
    if not isinstance(points, (list, tuple)) or not all(
        isinstance(p, dict)
        and isinstance(p.get("name"), str)
        and isinstance(p.get("threshold"), (int, float))
        and not isinstance(p.get("threshold"), bool)
        and 0.0 <= p["threshold"] <= 1.0
        for p in points
    ):
        return f"'operating_points' is {points!r}"
    return None


def _preprocessing_problem(data: dict[str, Any]) -> str | None:
    prep = data.get("preprocessing", LEGACY_PREPROCESSING)
    if not isinstance(prep, dict) or preprocessing_of(prep)["resize"] not in RESIZE_MODES:
        return f"'preprocessing' is {prep!r}"
    crop = preprocessing_of(prep)["crop"]
    if crop not in ("auto", "none"):
        try:
            parse_box(str(crop))
        except ValueError:
            return f"'preprocessing' is {prep!r}"
    return None
