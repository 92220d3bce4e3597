"""carotid-export: ONNX (run with onnxruntime) and TorchScript, checked against PyTorch on real frames, with
the model's contract in the metadata and a dynamic batch."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from carotid import export
from carotid.data.decode import load_frame
from carotid.model.export import DeployableModel
from carotid.model.file import ModelFile

onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra is not installed: pip install '.[export]'")


def real_frames(root, model_file: ModelFile, n: int) -> np.ndarray:
    paths = sorted(root.rglob("*.png"))[:n]
    return np.stack([load_frame(str(p), model_file.image_size, model_file.in_channels) for p in paths])


def test_onnx_export_matches_pytorch_on_real_frames_and_carries_the_contract(trained_run, data_dir, tmp_path, capsys):
    root, _ = data_dir
    model_path = trained_run / "models" / "best_model.pth"
    out = tmp_path / "model.onnx"
    args = ["--model", str(model_path), "--format", "onnx", "--out", str(out), "--frames", str(root)]
    assert export.main(args) == 0
    printed = capsys.readouterr().out
    difference = float(re.search(r"max \|ΔP\| = ([0-9.e+-]+)", printed).group(1))
    assert difference <= 1e-4 and f"32 frames of {root}" in printed

    model_file = ModelFile.load(model_path)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == model_file.class_names == ["normal", "plaque"]
    assert meta["positive_class"] == "plaque" and float(meta["threshold"]) == model_file.threshold
    assert meta["aggregation"] == model_file.aggregation and meta["image_size"] == str(model_file.image_size)
    assert json.loads(meta["normalization"])["mean"] == [0.449]
    # The geometry the model was trained with (letterbox, crop auto by default), not a fixed text.
    prep = model_file.prep
    assert (meta["resize_mode"], meta["crop"]) == (prep.resize, prep.crop) == ("letterbox", "auto")
    assert "aspect ratio kept" in meta["resize"] and "ultrasound imaging region" in meta["resize"]
    # Independently of the tool's own check: the batch is dynamic and the numbers are PyTorch's.
    frames = real_frames(root, model_file, 7)
    with torch.no_grad():
        reference = DeployableModel(model_file).eval()(torch.from_numpy(frames)).numpy()
    for batch in (frames, frames[:1]):
        probs = session.run(["probabilities"], {"frames": batch})[0]
        assert probs.shape == (len(batch), 2)
        np.testing.assert_allclose(probs, reference[: len(batch)], atol=1e-4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_defaults_beside_the_model_and_uses_the_training_data(trained_run, tmp_path, capsys):
    model_path = tmp_path / "best_model.pth"
    model_path.write_bytes((trained_run / "models" / "best_model.pth").read_bytes())
    assert export.main(["--model", str(model_path), "--format", "torchscript"]) == 0
    assert "max |ΔP| = " in capsys.readouterr().out
    extra = {"carotid.json": ""}
    module = torch.jit.load(str(tmp_path / "best_model.pt"), _extra_files=extra)
    assert json.loads(json.loads(extra["carotid.json"])["class_names"]) == ["normal", "plaque"]
    assert module(torch.zeros(3, 1, 32, 32, dtype=torch.uint8)).shape == (3, 2)


def test_export_errors_are_one_line(trained_run, tmp_path, capsys):
    model_file = ModelFile.load(trained_run / "models" / "best_model.pth")
    model_file.config["root_dir"] = str(tmp_path / "gone")
    moved = tmp_path / "moved.pth"
    model_file.save(moved)
    assert export.main(["--model", str(moved)]) == 2
    assert "error: no frames to check the export against" in capsys.readouterr().err
    assert not (tmp_path / "moved.onnx").exists()
    assert export.main(["--model", str(tmp_path / "none.pth")]) == 2
    assert "error: model file not found" in capsys.readouterr().err
