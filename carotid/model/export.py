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

A person model (`--person-model attention|mean`) exports as a graph for one person: all of a person's frames
(n, C, S, S) in, any n ≥ 1, and the person's probabilities (1, K) and each frame's attention (n,) out (its weight
in the pooling, summing to 1). Its metadata say `model_kind: person` and how to feed it.
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
from carotid.data.folders.discovery import frames_below, spread_evenly
from carotid.data.frames.decode import decode_frames
from carotid.data.frames.preprocessing import channel_conversion
from carotid.data.frames.transforms import eval_preset
from carotid.model.file import ModelFile

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # largest accepted difference of a probability between the export and PyTorch
INPUT, OUTPUT, ATTENTION = "frames", "probabilities", "attention"


class DeployableModel(nn.Module):
    """uint8 frames → probabilities: the evaluation preset, the network and a softmax in one module."""

    def __init__(self, model_file: ModelFile):
        super().__init__()
        self.preset = eval_preset(model_file.normalization["mean"], model_file.normalization["std"])
        self.network = model_file.build_model()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(self.preset(frames)), dim=1)


class DeployablePersonModel(DeployableModel):
    """uint8 frames of one person (n, C, S, S) → (person probabilities (1, K), attention (n,)).

    The frames go through the PersonModel's own encode and pool (one bag), so the graph is the code evaluate runs."""

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embeddings = self.network.encode(self.preset(frames))
        bag = torch.zeros(frames.shape[0], dtype=torch.long, device=frames.device)
        logits, attention = self.network.pool(embeddings, bag, 1)
        return torch.softmax(logits, dim=1), attention


def deployable(model_file: ModelFile) -> DeployableModel:
    """The module that is exported, in eval mode: for frames, or for one person's frames."""
    return (DeployablePersonModel if model_file.person_level else DeployableModel)(model_file).eval()


def output_names(model_file: ModelFile) -> list[str]:
    return [OUTPUT, ATTENTION] if model_file.person_level else [OUTPUT]


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
    meta = {
        "carotid_export": "1",
        "carotid_version": carotid.__version__,
        "source_model": str(source),
        "arch": model_file.arch,
        "epoch": str(model_file.epoch),
        "input": f"{INPUT}: uint8 (batch, {channels}, {size}, {size})",
        "in_channels": str(channels),
        "color": "grayscale (1 channel)" if channels == 1 else "RGB (3 channels; gray frames replicated)",
        "channel_conversion": json.dumps(channel_conversion(channels), ensure_ascii=False),
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
        "model_kind": "frame",
        "person_model": "frames",
    }
    return meta | (_person_metadata(model_file) if model_file.person_level else {})


def _person_metadata(model_file: ModelFile) -> dict[str, str]:
    """What differs for a person model: one person per run, its probabilities and the frames' attention out."""
    size, channels, k = model_file.image_size, model_file.in_channels, model_file.num_classes
    cap = model_file.config.get("max_imgs_per_person")
    feed = f"up to {cap} of a person's frames, spread evenly over them" if cap else "all of a person's frames"
    return {
        "model_kind": "person",
        "person_model": model_file.person_model,
        "input": f"{INPUT}: uint8 (n, {channels}, {size}, {size}): {feed}, any n >= 1; one person per run",
        "output": (
            f"{OUTPUT}: float32 (1, {k}), softmax, the person's; column k is class_names[k]. {ATTENTION}: float32 "
            f"(n,), each frame's weight in the {model_file.person_model} pooling (sums to 1 over the frames)"
        ),
        "aggregation": "",
        "person_rule": f"the person's probabilities come out directly ({model_file.person_model} pooling of {feed})",
    }


def _example(model_file: ModelFile, batch: int = 3) -> torch.Tensor:
    size = model_file.image_size
    return torch.zeros(batch, model_file.in_channels, size, size, dtype=torch.uint8)


def onnx_bytes(model_file: ModelFile, source: str | Path) -> bytes:
    """The ONNX file (opset of torch's exporter, dynamic batch) with the contract in its metadata_props."""
    import onnx

    module = deployable(model_file)
    batch = torch.export.Dim("n" if model_file.person_level else "batch", min=1)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(
            module,
            (_example(model_file),),
            dynamo=True,
            input_names=[INPUT],
            output_names=output_names(model_file),
            dynamic_shapes={"frames": {0: batch}},
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(model_file, source))
    what = (
        "a person's uint8 frames → its probabilities and attention"
        if model_file.person_level
        else ("uint8 frames → class probabilities")
    )
    proto.doc_string = f"carotid {model_file.arch}: {what}; see metadata_props"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def torchscript_bytes(model_file: ModelFile, source: str | Path) -> bytes:
    """A traced TorchScript module (any batch size) with the contract in the extra file carotid.json."""
    module = deployable(model_file)
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


def run_exported(data: bytes, fmt: str, frames: np.ndarray) -> list[np.ndarray]:
    """The outputs for `frames` of an exported model (probabilities, and attention for a person model), run the
    way a user would run it."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        return session.run(None, {INPUT: frames})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        outputs = module(torch.from_numpy(frames))
    return [t.numpy() for t in (outputs if isinstance(outputs, tuple) else (outputs,))]


def parity_batches(model_file: ModelFile, frames: np.ndarray) -> list[np.ndarray]:
    """The inputs the export is checked on: all frames as one batch (a person model: one bag), single frames (the
    batch or bag size is dynamic) and, for a person model, a bag of three."""
    batches = [frames] + [frames[i : i + 1] for i in range(min(len(frames), 4))]
    return batches + [frames[:3]] * (model_file.person_level and len(frames) > 3)


def check_parity(model_file: ModelFile, data: bytes, fmt: str, frames: np.ndarray) -> float:
    """Largest |export - PyTorch| of any output (probabilities; attention weights of a person model) over
    `parity_batches`."""
    module, difference = deployable(model_file), 0.0
    for batch in parity_batches(model_file, frames):
        with torch.no_grad():
            reference = module(torch.from_numpy(batch))
        reference = reference if isinstance(reference, tuple) else (reference,)
        exported = run_exported(data, fmt, batch)
        if len(exported) != len(reference):
            return float("inf")
        for ours, theirs in zip(exported, reference, strict=True):
            if ours.shape != tuple(theirs.shape):
                return float("inf")
            difference = max(difference, float(np.abs(ours - theirs.double().numpy()).max()))
    return difference


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
