"""Model files → ONNX (or TorchScript), for a workstation that runs neither this package nor PyTorch.

The exported graph holds the whole inference contract except decoding: it takes uint8 frames
(batch, C, S, S), already converted to gray or RGB, cropped and resized to S x S the way the model was
trained (its --crop and --resize, in the metadata in words and as values), scales them to [0, 1],
normalises them, runs the network and returns class probabilities (batch, K) (softmax; column k is
class k). Putting scaling and normalisation inside the graph leaves a user nothing to get wrong but the
crop and resize. The batch dimension is dynamic.

The rest of the contract travels as metadata (ONNX metadata_props; in TorchScript an extra file
`carotid.json`): class names, positive class, threshold, person aggregation, the preprocessing in words.
Every export is checked against PyTorch on real frames (`check_parity`) before it is written.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

import carotid
from carotid.core.errors import UserError
from carotid.core.files import atomic_write_bytes
from carotid.data.decode import decode_frames
from carotid.data.discovery import frames_below, spread_evenly
from carotid.data.transforms import eval_preset
from carotid.model.file import ModelFile

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # largest accepted difference of a probability between the export and PyTorch
INPUT, OUTPUT = "frames", "probabilities"


class DeployableModel(nn.Module):
    """uint8 frames → probabilities: the evaluation preset, the network and a softmax in one module."""

    def __init__(self, model_file: ModelFile):
        super().__init__()
        self.preset = eval_preset(model_file.normalization["mean"], model_file.normalization["std"])
        self.network = model_file.build_model()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(self.preset(frames)), dim=1)


def metadata(model_file: ModelFile, source: str | Path) -> dict[str, str]:
    """The contract of the exported model, as string key-value pairs (ONNX metadata_props allow nothing else)."""
    size, channels = model_file.image_size, model_file.in_channels
    binary = model_file.binary
    rule = (
        f"positive ({model_file.positive_class}) if probabilities[:, {model_file.positive_index}] >= "
        f"{model_file.threshold if model_file.threshold is not None else 0.5}"
        if binary
        else "argmax of probabilities"
    )
    return {
        "carotid_export": "1",
        "carotid_version": carotid.__version__,
        "source_model": str(source),
        "arch": model_file.arch,
        "epoch": str(model_file.epoch),
        "input": f"{INPUT}: uint8 (batch, {channels}, {size}, {size})",
        "in_channels": str(channels),
        "color": "grayscale (1 channel)" if channels == 1 else "RGB (3 channels; gray frames replicated)",
        "image_size": str(size),
        "resize": model_file.prep.describe(),
        "resize_mode": model_file.prep.resize,
        "crop": model_file.prep.crop,
        "normalization": json.dumps(
            {"scale": "1/255", **model_file.normalization, "inside_the_model": True}, ensure_ascii=False
        ),
        "output": f"{OUTPUT}: float32 (batch, {model_file.num_classes}), softmax; column k is class_names[k]",
        "class_names": json.dumps(model_file.class_names, ensure_ascii=False),
        "positive_class": model_file.positive_class if binary else "",
        "positive_index": str(model_file.positive_index) if binary else "",
        "threshold": "" if model_file.threshold is None else repr(model_file.threshold),
        "threshold_source": model_file.threshold_source or "",
        "decision": rule,
        "aggregation": model_file.aggregation,
        "person_rule": f"a person's probabilities are the {model_file.aggregation} of its frames' probabilities",
    }


def _example(model_file: ModelFile, batch: int = 2) -> torch.Tensor:
    size = model_file.image_size
    return torch.zeros(batch, model_file.in_channels, size, size, dtype=torch.uint8)


def onnx_bytes(model_file: ModelFile, source: str | Path) -> bytes:
    """The ONNX file (opset of torch's exporter, dynamic batch) with the contract in its metadata_props."""
    import onnx

    module = DeployableModel(model_file).eval()
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            module,
            (_example(model_file),),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes={"frames": {0: batch}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(model_file, source))
    proto.doc_string = f"carotid {model_file.arch}: uint8 frames → class probabilities; see metadata_props"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(model_file: ModelFile, source: str | Path) -> bytes:
    """A traced TorchScript module (any batch size) with the contract in the extra file carotid.json."""
    module = DeployableModel(model_file).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's own deprecation notice
        traced = torch.jit.trace(module, _example(model_file))
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"carotid.json": json.dumps(metadata(model_file, source))})
    return buffer.getvalue()


def export(model_file: ModelFile, source: str | Path, fmt: str, out: str | Path, frames: np.ndarray) -> float:
    """Export, check against PyTorch on `frames` (uint8, (N, C, S, S)), then write `out` atomically.

    Returns the largest probability difference; a difference above TOLERANCE writes nothing and raises."""
    data = onnx_bytes(model_file, source) if fmt == "onnx" else torchscript_bytes(model_file, source)
    difference = check_parity(model_file, data, fmt, frames)
    if not difference <= TOLERANCE:
        raise RuntimeError(
            f"the {fmt} export differs from PyTorch by up to {difference:.2e} in a probability "
            f"(limit {TOLERANCE:.0e}); nothing was written"
        )
    atomic_write_bytes(out, data)
    return difference


def run_exported(data: bytes, fmt: str, frames: np.ndarray) -> np.ndarray:
    """Probabilities of `frames` from an exported model, run the way a user would run it."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run([OUTPUT], {INPUT: frames})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(frames)).numpy()


def check_parity(model_file: ModelFile, data: bytes, fmt: str, frames: np.ndarray) -> float:
    """Largest |P_export - P_pytorch| over `frames`, run as one batch and frame by frame (the batch is dynamic)."""
    with torch.no_grad():
        reference = DeployableModel(model_file).eval()(torch.from_numpy(frames)).double().numpy()
    whole = run_exported(data, fmt, frames)
    single = np.concatenate([run_exported(data, fmt, frames[i : i + 1]) for i in range(min(len(frames), 4))])
    return float(max(np.abs(whole - reference).max(), np.abs(single - reference[: len(single)]).max()))


def parity_frames(model_file: ModelFile, folder: str | Path | None, n: int = 32) -> tuple[np.ndarray, str]:
    """(up to n readable frames of `folder` as the model takes them, where they came from in words).

    Without `folder`, the frames of the data the model was trained on, when that folder is still there."""

    if folder is None:
        folder = model_file.config.get("root_dir")
        if not folder or not Path(folder).is_dir():
            raise UserError(
                "no frames to check the export against (the model's training data is not here)",
                "pass --frames DIR, any folder with ultrasound frames below it",
            )
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--frames folder not found: {folder}", "pass a folder with frames below it")
    frames = []
    for name in spread_evenly(frames_below(folder), 4 * n):
        # The first frame of each file, preprocessed as the model was trained; an unreadable file is skipped.
        outcome = decode_frames(str(folder / name), [0], model_file.prep)[0]
        if not isinstance(outcome, str):
            frames.append(outcome[0])
        if len(frames) == n:
            break
    if not frames:
        raise UserError(
            f"no readable frame (png, jpg, bmp, tif, dcm, mp4, avi, mov) below {folder}",
            "pass --frames DIR with frames",
        )
    return np.stack(frames), f"{len(frames)} frames of {folder}"
