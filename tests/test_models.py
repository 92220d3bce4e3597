"""The model registry, first-conv adaptation, local pretrained weights and the model file format."""

from __future__ import annotations

import pytest
import torch
import torchvision

from carotid.core.errors import UserError
from carotid.model import ARCHITECTURES
from carotid.model.file import ModelFile
from carotid.model.registry import build_model, load_matching, strip_prefixes
from carotid.model.weights import load_pretrained, read_weights


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
    model = build_model("resnet18", num_classes=2, in_channels=1)
    report = load_pretrained(model, "resnet18", path)
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert model.fc.out_features == 2
    assert "conv1.weight 3 → 1 input channel(s)" in "\n".join(report) and "fc.weight (1000, 512)" in "\n".join(report)
    with pytest.raises(UserError, match="fits only .* backbone tensors of densenet121"):
        load_pretrained(build_model("densenet121", num_classes=2), "densenet121", path)


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
    load_matching(fresh, read_weights(tmp_path / "bare.pth", "weights")[1], "bare.pth", "small_cnn")
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_class_count_mismatch_says_what_differs():
    with pytest.raises(UserError, match=r"shape \(3, 256\) in the file but \(2, 256\) here"):
        load_matching(build_model("small_cnn", 2, 1), build_model("small_cnn", 3, 1).state_dict(), "file", "small_cnn")


def small_model_file(model: torch.nn.Module, **changes) -> ModelFile:
    fields = {
        "state_dict": model.state_dict(),
        "arch": "small_cnn",
        "class_names": ["normal", "plaque"],
        "in_channels": 1,
        "image_size": 32,
        "normalization": {"mean": [0.449], "std": [0.226]},
        "positive_index": 1,
        "epoch": 3,
        "metrics": {"val_auc": 0.9},
        "threshold": 0.4,
    }
    return ModelFile(**(fields | changes))


def test_model_file_round_trip_with_weights_only(tmp_path):
    model = build_model("small_cnn", 2, 1)
    path = tmp_path / "m.pth"
    small_model_file(model).save(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "carotid-model" and raw["class_names"] == ["normal", "plaque"] and raw["num_classes"] == 2
    loaded = ModelFile.load(path)
    assert loaded.threshold == 0.4 and loaded.metrics == {"val_auc": 0.9} and loaded.positive_class == "plaque"
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded.build_model()(x), model.eval()(x))
    assert not list(tmp_path.glob(".*tmp*")), "no temporary file left behind"
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(UserError, match="not a carotid model file"):
        ModelFile.load(tmp_path / "bare.pth")


def test_model_file_is_saved_in_fp32_whatever_the_training_precision(tmp_path):
    model = build_model("small_cnn", 2, 1).to(torch.bfloat16)
    small_model_file(model).save(tmp_path / "m.pth")
    raw = torch.load(tmp_path / "m.pth", map_location="cpu", weights_only=True)
    assert {t.dtype for t in raw["state_dict"].values() if t.is_floating_point()} == {torch.float32}


def test_a_tensor_of_the_wrong_shape_is_refused_naming_key_and_shapes(tmp_path):
    state = build_model("small_cnn", 2, 1).state_dict()
    state["classifier.weight"] = torch.zeros(0)
    small_model_file(build_model("small_cnn", 2, 1), state_dict=state).save(tmp_path / "m.pth")
    with pytest.raises(UserError, match=r"'classifier.weight' has shape \(0,\) in the file but \(2, 256\) here"):
        ModelFile.load(tmp_path / "m.pth")


def test_files_of_format_version_1_still_load(tmp_path):
    """Version 1 (the first release) stored the aggregation as 'person_aggregation' and had no num_classes check."""
    model = build_model("small_cnn", 2, 1)
    legacy = {
        "format": "carotid-model",
        "format_version": 1,
        "state_dict": model.state_dict(),
        "arch": "small_cnn",
        "num_classes": 2,
        "class_names": ["a", "b"],
        "in_channels": 1,
        "image_size": 32,
        "normalization": {"mean": [0.449], "std": [0.226]},
        "positive_index": 0,
        "person_aggregation": "max",
        "monitor": "val_auc",
        "config": {},
        "epoch": 2,
        "metrics": {},
        "threshold": 0.3,
        "threshold_source": "Youden",
    }
    torch.save(legacy, tmp_path / "old.pth")
    loaded = ModelFile.load(tmp_path / "old.pth")
    assert (loaded.aggregation, loaded.positive_class, loaded.threshold, loaded.format_version) == ("max", "a", 0.3, 1)
