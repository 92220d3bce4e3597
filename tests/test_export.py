"""carotid-export: ONNX (run with onnxruntime) and TorchScript, checked against PyTorch on real frames, with
the model's contract in the metadata and a dynamic batch."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from carotid import export
from carotid.data.frames.decode import load_frame
from carotid.model.export import DeployableModel
from carotid.model.file import ModelFile
from carotid.model.person import PersonModel

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
    assert (meta["model_kind"], meta["person_model"]) == ("frame", "frames")
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


def person_model_file(tmp_path, pooling: str) -> tuple[ModelFile, str]:
    torch.manual_seed(3)
    model = PersonModel("small_cnn", 2, 1, pooling=pooling)
    with torch.no_grad():  # attention that differs between frames, as a trained model's does
        model.attention_w.weight.mul_(50) if pooling == "attention" else None
    model_file = ModelFile(
        state_dict=model.state_dict(),
        arch="small_cnn",
        class_names=["normal", "plaque"],
        in_channels=1,
        image_size=32,
        normalization={"mean": [0.449], "std": [0.226]},
        positive_index=1,
        person_model=pooling,
        bag_size=4,
        threshold=0.5,
    )
    model_file.save(tmp_path / f"{pooling}.pth")
    return model_file, str(tmp_path / f"{pooling}.pth")


def pytorch_person(model_file: ModelFile, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A person's probabilities and attention computed the way evaluate does, from the model file, by hand."""
    mean, std = (torch.tensor(model_file.normalization[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    pixels = (torch.from_numpy(frames).float() / 255 - mean) / std
    with torch.no_grad():
        logits, attention = model_file.build_model()(pixels, torch.zeros(len(frames), dtype=torch.long), 1)
    return logits.softmax(1).numpy(), attention.numpy()


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["attention", "mean"])
def test_onnx_export_of_a_person_model_takes_a_bag_of_any_size_and_returns_its_probabilities_and_attention(
    data_dir, tmp_path, capsys, pooling
):
    root, _ = data_dir
    model_file, model_path = person_model_file(tmp_path, pooling)
    out = tmp_path / "person.onnx"
    assert export.main(["--model", model_path, "--format", "onnx", "--out", str(out), "--frames", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "one person a run, any frame count" in printed and "as one bag, frame by frame and a bag of 3" in printed
    assert float(re.search(r"max \|ΔP\| = ([0-9.e+-]+)", printed).group(1)) <= 1e-4

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["model_kind"], meta["person_model"]) == ("person", pooling)
    assert "one person per run" in meta["input"] and "attention: float32 (n,)" in meta["output"]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "attention"]
    person = real_frames(root / "1002", model_file, 4)  # one person's frames
    for bag in (person[:1], person, person[::-1].copy()):
        probs, attention = session.run(None, {"frames": bag})
        assert probs.shape == (1, 2) and attention.shape == (len(bag),)
        reference_probs, reference_attention = pytorch_person(model_file, bag)
        np.testing.assert_allclose(probs, reference_probs, atol=1e-4)
        np.testing.assert_allclose(attention, reference_attention, atol=1e-4)
        assert abs(attention.sum() - 1) < 1e-5
    # The frames' order is not the person's: reversed frames, the same probability and the same weights reversed.
    forward, backward = session.run(None, {"frames": person}), session.run(None, {"frames": person[::-1].copy()})
    np.testing.assert_allclose(forward[0], backward[0], atol=1e-5)
    np.testing.assert_allclose(forward[1], backward[1][::-1], atol=1e-6)
    if pooling == "attention":
        assert forward[1].std() > 1e-3  # not uniform: the test would not see a mixed-up order otherwise


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_of_a_person_model_takes_any_frame_count(data_dir, tmp_path, capsys):
    root, _ = data_dir
    model_file, model_path = person_model_file(tmp_path, "attention")
    assert export.main(["--model", model_path, "--format", "torchscript", "--frames", str(root)]) == 0
    assert "max |ΔP| = " in capsys.readouterr().out
    module = torch.jit.load(str(tmp_path / "attention.pt"))
    person = real_frames(root / "1003", model_file, 4)
    for bag in (person[:1], person):
        probs, attention = module(torch.from_numpy(bag))
        np.testing.assert_allclose(probs.detach().numpy(), pytorch_person(model_file, bag)[0], atol=1e-5)
        assert attention.shape == (len(bag),)


def prepare_from_metadata(path, meta: dict) -> np.ndarray:
    """A deployer's preparation of one image file, written from the exported model's metadata alone."""
    from PIL import Image

    conversion, size = json.loads(meta["channel_conversion"]), int(meta["image_size"])
    assert meta["in_channels"] == "1" and meta["crop"] in ("auto", "none")  # a PNG has no ultrasound region
    with Image.open(path) as image:
        if image.mode == "P":  # "palette frames ... are mapped through their palette to RGB first"
            image = image.convert("RGB")
        pixels = np.asarray(image).astype(np.int64)
    if pixels.ndim == 3:  # colour → grey by the fixed-point formula the metadata states
        r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        assert conversion["rgb_to_grey"]["formula"] == "L = (19595*R + 38470*G + 7471*B + 32768) >> 16"
        grey = ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16).astype(np.uint8)
    elif pixels.max() > 255:  # more than 8 bits: value * 255 / (2^bits - 1), bits = max(8, bit length of the max)
        assert conversion["sixteen_bit"]["bits"] == "max(8, bit_length(max(frame)))"
        bits = max(8, int(pixels.max()).bit_length())
        grey = np.clip(np.rint(pixels * (255.0 / (2**bits - 1))), 0, 255).astype(np.uint8)
    else:
        grey = pixels.astype(np.uint8)
    assert meta["resize_mode"] == "letterbox"
    # The placement a re-implementation needs (a corner instead of the centre gives other probabilities).
    assert (
        f"centred on a black {size}x{size} square (offset (({size} - width) // 2, ({size} - height) // 2))"
        in meta["resize"]
    )
    height, width = grey.shape
    scale = size / max(width, height)
    inner = (max(1, round(width * scale)), max(1, round(height * scale)))
    canvas = Image.new("L", (size, size))
    canvas.paste(
        Image.fromarray(grey).resize(inner, Image.Resampling.BILINEAR), ((size - inner[0]) // 2, (size - inner[1]) // 2)
    )
    return np.asarray(canvas, dtype=np.uint8)[None]


def test_a_deployment_that_follows_the_metadata_gets_predicts_probabilities(trained_run, tmp_path, capsys):
    """Colour, palette and 16-bit frames prepared only from the exported metadata give carotid.predict's
    probabilities within 1e-4."""
    from PIL import Image

    from carotid import predict

    rng = np.random.default_rng(5)
    folder = tmp_path / "frames"
    folder.mkdir()
    colour = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    colour[10:30, 10:30] = (200, 40, 40)  # a Doppler-like red box
    Image.fromarray(colour).save(folder / "colour.png")
    palette = Image.fromarray(rng.integers(0, 16, (48, 36), dtype=np.uint8), mode="P")
    palette.putpalette([int(v) for v in rng.integers(0, 256, 16 * 3)])
    palette.save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 4096, (36, 44), dtype=np.uint16)).save(folder / "sixteen_bit.png")  # 12-bit
    with Image.open(folder / "sixteen_bit.png") as saved:
        assert saved.mode.startswith("I") and np.asarray(saved).max() > 255
    model_path = trained_run / "models" / "best_model.pth"
    out = tmp_path / "model.onnx"
    assert export.main(["--model", str(model_path), "--format", "onnx", "--out", str(out)]) == 0
    table = tmp_path / "predictions.csv"
    assert (
        predict.main(["--model", str(model_path), "--input", str(folder), "--out", str(table), "--num-workers", "0"])
        == 0
    )
    with table.open(newline="", encoding="utf-8") as handle:
        predicted = {
            Path(r["path"]).name: [float(r["prob_normal"]), float(r["prob_plaque"])] for r in csv.DictReader(handle)
        }
    assert set(predicted) == {"colour.png", "palette.png", "sixteen_bit.png"}
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    conversion = json.loads(meta["channel_conversion"])
    assert conversion["rgb_to_grey"]["weights"] == [0.299, 0.587, 0.114] and "palette" in conversion
    assert "YBR_FULL" in conversion["ybr"] and "4095" in conversion["sixteen_bit"]["words"]
    assert ModelFile.load(model_path).to_dict()["channel_conversion"] == conversion  # the model file says the same
    for name, probabilities in predicted.items():
        frame = prepare_from_metadata(folder / name, meta)
        deployed = session.run(["probabilities"], {"frames": frame[None]})[0][0]
        np.testing.assert_allclose(deployed, probabilities, atol=1e-4, err_msg=name)
