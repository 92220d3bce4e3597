"""timm architectures, local starting weights in every usual shape, and the small-cohort fine-tuning options."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from safetensors.torch import load_file, save_file

from carotid import export
from carotid.core.errors import UserError
from carotid.model import canonical_arch, split_arch
from carotid.model.file import ModelFile
from carotid.model.registry import build_encoder, build_model, check_arch
from carotid.model.weights import load_initial_weights, load_pretrained
from carotid.report.checklist import initialisation
from carotid.report.heatmaps import GradCamRenderer
from tests.conftest import FAST, only_run_dir, read_json, run_module, train_in_process
from tests.test_strategies import launch_command, run


def test_names_of_both_libraries_follow_the_documented_rule_and_a_misspelt_name_suggests_the_closest():
    assert split_arch("resnet18") == ("torchvision", "resnet18")  # old commands and model files keep their meaning
    assert split_arch("tv/resnet18") == ("torchvision", "resnet18")
    assert split_arch("timm/resnet18") == ("timm", "resnet18")
    assert canonical_arch("convnext_atto") == canonical_arch("timm/convnext_atto") == "timm/convnext_atto"
    assert isinstance(build_model("resnet18", 2, 1), torchvision.models.ResNet)
    assert isinstance(build_model("timm/resnet18", 2, 1), timm.models.ResNet)
    with pytest.raises(UserError, match="did you mean .*convnext_atto"):
        check_arch("convnext_atoo")
    with pytest.raises(UserError, match="did you mean resnet18"):
        check_arch("tv/resnet181")


@pytest.mark.parametrize("arch", ["convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "resnet18", "small_cnn"])
def test_classifier_and_encoder_take_gray_frames(arch):
    model = build_model(arch, 3, 1, image_size=32).eval()
    encoder, dim = build_encoder(arch, 1, image_size=32)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
        assert encoder.eval()(torch.randn(2, 1, 32, 32)).shape == (2, dim)
    # The encoder is the classifier less its head: the same names, so the same weight files load into both.
    assert set(encoder.state_dict()) < set(model.state_dict())


def test_timm_safetensors_load_into_a_gray_model_with_the_stem_summed_and_the_head_skipped(tmp_path):
    reference = timm.create_model("convnext_atto", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "convnext_atto.safetensors")
    model = build_model("convnext_atto", 2, 1)
    report = "\n".join(load_pretrained(model, "convnext_atto", tmp_path / "convnext_atto.safetensors"))
    theirs, ours = reference.state_dict(), model.state_dict()
    assert torch.allclose(ours["stem.0.weight"], theirs["stem.0.weight"].sum(dim=1, keepdim=True))
    backbone = [k for k in ours if not k.startswith("head.fc") and k != "stem.0.weight"]
    assert backbone and all(torch.equal(ours[k], theirs[k]) for k in backbone)
    assert "126 of 126 backbone tensors" in report and "stem.0.weight 3 → 1" in report
    assert "head.fc.weight (1000, 320)" in report


def test_wrapped_checkpoints_load_after_their_prefixes_are_stripped(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)
    state = reference.state_dict()
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in state.items()}, "epoch": 9}, tmp_path / "a.ckpt")
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "b.bin")
    for name in ("a.ckpt", "b.bin"):
        model = build_model("timm/resnet18", 2, 3)
        load_pretrained(model, "timm/resnet18", tmp_path / name)
        assert torch.equal(model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight), name
        assert torch.equal(model.conv1.weight, reference.conv1.weight), name  # 3 channels: nothing to adapt


def test_weights_of_another_architecture_are_refused_with_names(tmp_path):
    save_file(timm.create_model("convnext_atto").state_dict(), tmp_path / "convnext.safetensors")
    model = build_model("efficientnet_b0", 2, 1)
    with pytest.raises(UserError, match=r"fits only 0 of the \d+ backbone tensors of efficientnet_b0 .*features.0.0"):
        load_pretrained(model, "efficientnet_b0", tmp_path / "convnext.safetensors")


def test_timm_weights_for_a_bare_name_torchvision_also_has_suggest_the_timm_name(tmp_path):
    """`--model efficientnet_b0` is torchvision's; a file saved from timm's efficientnet_b0 is refused with the fix."""
    save_file(timm.create_model("efficientnet_b0").state_dict(), tmp_path / "effnet.safetensors")
    with pytest.raises(UserError, match=r"--model timm/efficientnet_b0; a bare efficientnet_b0 means torchvision's"):
        load_pretrained(build_model("efficientnet_b0", 2, 1), "efficientnet_b0", tmp_path / "effnet.safetensors")
    model = build_model("timm/efficientnet_b0", 2, 1)
    assert "backbone tensors" in " ".join(
        load_pretrained(model, "timm/efficientnet_b0", tmp_path / "effnet.safetensors")
    )


def test_load_model_given_plain_weights_suggests_pretrained_weights(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "imagenet.pth")
    with pytest.raises(UserError, match="--pretrained-weights .*imagenet.pth"):
        load_initial_weights(build_model("resnet18", 2, 1), tmp_path / "imagenet.pth", "resnet18", ["a", "b"])


# ---------------------------------------------------------------------------------------------
# Training runs (the real CLI, in process)
# ---------------------------------------------------------------------------------------------


def _train(data_dir, out, model: str, *extra: str) -> Path:
    root, label = data_dir
    args = [*FAST, "--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(out), *extra]
    args[args.index("small_cnn")] = model
    assert train_in_process(*args) == 0
    return only_run_dir(out)


@pytest.mark.slow
def test_timm_weights_load_into_a_gray_run_and_a_linear_probe_keeps_the_backbone_as_loaded(data_dir, tmp_path):
    reference = timm.create_model("resnet18", pretrained=False)  # BatchNorm: its statistics must not move either
    save_file(reference.state_dict(), tmp_path / "resnet18.safetensors")
    weights = str(tmp_path / "resnet18.safetensors")
    run = _train(
        data_dir,
        tmp_path / "out",
        "timm/resnet18",
        "--epochs",
        "2",
        "--no-test",
        "--pretrained-weights",
        weights,
        "--freeze-backbone-epochs",
        "2",
    )
    log = (run / "train.log").read_text(encoding="utf-8")
    assert "120 of 120 backbone tensors" in log and "conv1.weight 3 → 1 input channel(s)" in log
    assert "linear probe" in log
    saved, theirs = ModelFile.load(run / "models" / "final_model.pth"), reference.state_dict()
    assert saved.arch == "timm/resnet18" and saved.library == "timm"
    assert saved.config["freeze_backbone_epochs"] == 2
    assert torch.allclose(saved.state_dict["conv1.weight"], theirs["conv1.weight"].sum(dim=1, keepdim=True))
    backbone = [k for k in saved.state_dict if not k.startswith("fc.") and k != "conv1.weight"]
    assert len(backbone) == 119 and all(torch.equal(saved.state_dict[k], theirs[k]) for k in backbone)


@pytest.mark.slow
def test_ema_weights_differ_from_the_raw_ones_and_are_what_the_model_files_hold(data_dir, tmp_path):
    run = _train(data_dir, tmp_path / "out", "small_cnn", "--epochs", "2", "--no-test", "--ema", "--ema-decay", "0.9")
    assert "EMA weights: val_loss" in (run / "train.log").read_text(encoding="utf-8")
    checkpoint = sorted((run / "checkpoints").glob("checkpoint-*"))[-1]
    raw = load_file(checkpoint / "model.safetensors")
    ema = {k.removeprefix("module."): v for k, v in torch.load(checkpoint / "custom_checkpoint_1.pkl").items()}
    final = ModelFile.load(run / "models" / "final_model.pth")
    assert final.config["ema"] is True
    assert all(torch.equal(final.state_dict[k], ema[k]) for k in final.state_dict)
    assert any(not torch.equal(final.state_dict[k], raw[k]) for k in raw if raw[k].is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "convnext_atto"])
def test_a_vit_and_a_convnext_train_evaluate_export_and_make_heat_maps(arch, data_dir, tmp_path, capsys):
    root, label = data_dir
    run = _train(data_dir, tmp_path / "out", arch, "--epochs", "2", "--drop-path", "0.1", "--no-test")
    model = run / "models" / "best_model.pth"
    assert ModelFile.load(model).arch == f"timm/{arch}"
    out = tmp_path / "eval"
    result = run_module(
        "carotid.evaluate",
        "--model",
        str(model),
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--out",
        str(out),
        "--heatmaps",
        "2",
        "--num-workers",
        "0",
        "--bootstrap",
        "20",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert 0 <= read_json(out / "metrics.json")["person"]["auc"] <= 1
    assert len(list((out / "heatmaps").glob("*.png"))) == read_json(out / "metrics.json")["n_persons"] > 0
    capsys.readouterr()
    assert (
        export.main(
            ["--model", str(model), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--frames", str(root)]
        )
        == 0
    )
    difference = float(re.search(r"max \|ΔP\| = ([0-9.e+-]+)", capsys.readouterr().out).group(1))
    assert difference <= 1e-4


def _model_file(arch: str, size: int = 32) -> ModelFile:
    torch.manual_seed(0)
    model = build_model(arch, 2, 1, image_size=size)
    norm = {"mean": [0.449], "std": [0.226]}
    return ModelFile(model.state_dict(), canonical_arch(arch), ["normal", "plaque"], 1, size, norm, positive_index=1)


@pytest.mark.slow
@pytest.mark.parametrize(
    "arch, layer",
    [
        ("convnext_atto", "stages.3"),
        ("timm/efficientnet_b0", "blocks.6"),
        ("vit_tiny_patch16_224", "blocks.11.norm1"),
        ("timm/resnet18", "layer4"),
        ("regnetx_002", "s4"),
        ("mobilenetv3_small_050", "blocks.5"),
    ],
)
def test_grad_cam_finds_its_layer_in_every_timm_family(arch, layer, data_dir):
    root, _ = data_dir
    frames = [(str(p), 0) for p in sorted(root.rglob("*.png"))[:2]]
    renderer = GradCamRenderer(_model_file(arch, 64))
    try:
        pixels, maps = renderer.maps(frames, target=1)
    finally:
        renderer.close()
    assert renderer.layer_name == layer
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6


@pytest.mark.slow
def test_an_efficientnet_exports_to_onnx_within_the_parity_tolerance(data_dir, tmp_path, capsys):
    root, _ = data_dir
    _model_file("timm/efficientnet_b0").save(tmp_path / "m.pth")
    args = ["--model", str(tmp_path / "m.pth"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]
    assert export.main([*args, "--frames", str(root)]) == 0
    difference = float(re.search(r"max \|ΔP\| = ([0-9.e+-]+)", capsys.readouterr().out).group(1))
    assert difference <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy, extra",
    [("cpu_ddp", ["--ema"]), ("deepspeed_zero2", []), ("deepspeed_zero3", []), ("fsdp", [])],
    ids=["ddp", "zero2", "zero3", "fsdp2"],
)
def test_fine_tuning_options_run_on_two_processes_under_each_strategy(strategy, extra, data_dir, tmp_path):
    """A frozen-then-unfrozen backbone, layer decay and drop-path (and the EMA under DDP; ZeRO and FSDP shard
    the weights the EMA would copy, so there it is refused) through the real launcher."""
    if strategy != "cpu_ddp":
        pytest.importorskip("torch" if strategy == "fsdp" else "deepspeed")
    root, label = data_dir
    args = [*FAST, "--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    args[args.index("small_cnn")] = "test_efficientnet"  # timm's tiny EfficientNet: BatchNorm and DropPath
    tuning = ["--epochs", "2", "--freeze-backbone-epochs", "1", "--layer-decay", "0.8", "--drop-path", "0.1", *extra]
    output = run(launch_command(strategy, *args, *tuning, "--no-test"), fresh=lambda: None)
    assert "the head trains alone for 1 epoch(s)" in output and "layer-wise LR decay 0.8" in output
    assert ("EMA weights: val_loss" in output) == bool(extra)
    final = ModelFile.load(only_run_dir(tmp_path / "out") / "models" / "final_model.pth")
    assert final.arch == "timm/test_efficientnet" and final.config["layer_decay"] == 0.8


@pytest.mark.slow
def test_a_person_model_probes_a_timm_encoder_and_validates_its_ema(data_dir, tmp_path):
    reference = timm.create_model("convnext_atto", pretrained=False)
    save_file(reference.state_dict(), tmp_path / "convnext_atto.safetensors")
    tuning = ["--freeze-backbone-epochs", "2", "--ema", "--layer-decay", "0.8"]
    weights = ["--pretrained-weights", str(tmp_path / "convnext_atto.safetensors")]
    run = _train(data_dir, tmp_path / "out", "convnext_atto", "--epochs", "2", "--no-test", "--person-model",
                 "attention", *weights, *tuning)  # fmt: skip
    assert "EMA weights: val_loss" in (run / "train.log").read_text(encoding="utf-8")
    final = ModelFile.load(run / "models" / "final_model.pth")
    encoder = {k.removeprefix("encoder."): v for k, v in final.state_dict.items() if k.startswith("encoder.")}
    theirs = reference.state_dict()
    assert final.person_model == "attention" and len(encoder) == 126
    assert all(torch.equal(v, theirs[k]) for k, v in encoder.items() if k != "stem.0.weight")


@pytest.mark.slow
def test_a_run_resumed_from_its_epoch_1_checkpoint_continues_the_ema_and_the_frozen_schedule(data_dir, tmp_path):
    tuning = ["--epochs", "3", "--keep-checkpoints", "3", "--no-test", "--ema", "--ema-decay", "0.9"]
    tuning += ["--freeze-backbone-epochs", "1"]
    run = _train(data_dir, tmp_path / "straight", "small_cnn", *tuning)
    copy = tmp_path / "resumed" / run.name
    shutil.copytree(run, copy)
    epoch_1 = sorted((copy / "checkpoints").glob("checkpoint-*-epoch-end"))[0]
    assert read_json(epoch_1 / "progress.json")["epoch"] == 1
    assert train_in_process("--resume", str(epoch_1)) == 0
    straight = ModelFile.load(run / "models" / "final_model.pth").state_dict
    resumed = ModelFile.load(copy / "models" / "final_model.pth").state_dict
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_report_checklist_names_the_starting_weights_file_and_the_fine_tuning():
    options = {"pretrained_weights": "/data/w/convnext_atto.safetensors", "freeze_backbone_epochs": 3, "ema": True}
    text = initialisation(options | {"ema_decay": 0.998, "layer_decay": 0.75})
    assert text.startswith("the weights file convnext_atto.safetensors; fine-tuning: backbone frozen for 3 epoch(s)")
    assert "layer-wise LR decay 0.75" in text and "EMA of the weights (decay 0.998)" in text
    assert initialisation({"pretrained": True}) == "downloaded ImageNet weights"
    assert initialisation({}) == "random weights"
