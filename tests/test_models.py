"""The model registry, first-conv adaptation, local pretrained weights and the model file format."""

from __future__ import annotations

import pytest
import torch
import torchvision

from carotid.checkpoint import load_model_file, save_model_file
from carotid.config import ARCHITECTURES
from carotid.errors import UserError
from carotid.models import build_model, load_matching, read_state_dict, strip_prefixes


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_registry_model_runs_on_1_and_3_channels(arch):
    for channels in (1, 3):
        model = build_model(arch, num_classes=3, in_channels=channels).eval()
        with torch.no_grad():
            logits = model(torch.randn(2, channels, 64, 64))
        assert logits.shape == (2, 3)
        first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == channels


def test_local_pretrained_weights_are_loaded_and_the_stem_summed_for_gray(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet18", num_classes=2, in_channels=1, pretrained_weights=str(path))
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 2
    with pytest.raises(UserError, match="does not fit architecture 'resnet34'"):
        build_model("resnet34", num_classes=2, pretrained_weights=str(path))


def test_pretrained_download_failure_points_to_local_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: fails at once, like an offline node
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    with pytest.raises(UserError, match="--pretrained-weights"):
        build_model("mobilenet_v3_small", num_classes=2, pretrained=True)


def test_prefixes_from_ddp_and_compile_are_stripped(tmp_path):
    model = build_model("small_cnn", 2, 1)
    prefixed = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert strip_prefixes(prefixed).keys() == model.state_dict().keys()
    torch.save(prefixed, tmp_path / "bare.pth")
    fresh = build_model("small_cnn", 2, 1)
    load_matching(fresh, read_state_dict(tmp_path / "bare.pth", "weights"), "bare.pth", "small_cnn")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_class_count_mismatch_says_what_differs():
    with pytest.raises(UserError, match=r"shape \(3, 256\) in the file but \(2, 256\) here"):
        load_matching(build_model("small_cnn", 2, 1), build_model("small_cnn", 3, 1).state_dict(), "file", "small_cnn")


def test_model_file_round_trip_with_weights_only(tmp_path):
    model = build_model("small_cnn", 2, 1)
    path = tmp_path / "m.pth"
    meta = {"arch": "small_cnn", "num_classes": 2, "class_names": ["normal", "plaque"], "in_channels": 1, "image_size": 32,
            "normalization": {"mean": [0.449], "std": [0.226]}, "epoch": 3, "metrics": {"val_auc": 0.9}, "threshold": 0.4}
    save_model_file(path, model.state_dict(), **meta)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "carotid-model" and raw["class_names"] == ["normal", "plaque"]
    loaded = load_model_file(path)
    assert loaded["threshold"] == 0.4 and loaded["metrics"] == {"val_auc": 0.9}
    again = build_model(loaded["arch"], loaded["num_classes"], loaded["in_channels"])
    load_matching(again, loaded["state_dict"], str(path), "small_cnn")
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(again.eval()(x), model.eval()(x))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UserError, match="not a carotid model file"):
        load_model_file(tmp_path / "bare.pth")
