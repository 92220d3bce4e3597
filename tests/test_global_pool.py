"""--global-pool: how the encoder pools its last feature map, recorded in the model file and rebuilt from it by
evaluate, predict and export (a max-pooled model rebuilt with average pooling would be silently wrong)."""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
import torch
import yaml

from carotid import export
from carotid.core.errors import UserError
from carotid.model.file import ModelFile
from carotid.model.person import PersonModel
from carotid.model.registry import build_model
from tests.conftest import FAST, make_data, only_run_dir, train_in_process
from tests.test_person_model import _model_file


def _save(model, tmp_path, person_model: str = "frames", global_pool: str = "max") -> ModelFile:
    model_file = _model_file(model, person_model)
    model_file.global_pool = global_pool
    model_file.save(tmp_path / "m.pth")
    return model_file


def _frame_with_a_small_bright_spot() -> torch.Tensor:
    frames = torch.zeros(1, 1, 32, 32)
    frames[0, 0, 3:5, 27:29] = 3.0  # 4 of 1,024 pixels: an average barely moves, a maximum does
    return frames


def test_a_max_pooled_model_file_rebuilds_with_max_pooling(tmp_path):
    torch.manual_seed(0)
    model = build_model("small_cnn", 2, 1, global_pool="max").eval()
    _save(model, tmp_path)
    loaded = ModelFile.load(tmp_path / "m.pth")
    assert loaded.global_pool == "max"
    frames = _frame_with_a_small_bright_spot()
    with torch.no_grad():
        expected = model(frames)
        assert torch.equal(loaded.build_model()(frames), expected)
        # The same weights pooled by the average give another answer: the field is what keeps them apart.
        averaged = build_model("small_cnn", 2, 1, global_pool="avg").eval()
        averaged.load_state_dict(model.state_dict())
        assert not torch.allclose(averaged(frames), expected)


def test_a_person_model_file_keeps_its_encoders_pooling(tmp_path):
    torch.manual_seed(1)
    model = PersonModel("small_cnn", 2, 1, "attention", global_pool="max").eval()
    _save(model, tmp_path, "attention")
    rebuilt = ModelFile.load(tmp_path / "m.pth").build_model()
    frames, bag = torch.randn(5, 1, 32, 32), torch.zeros(5, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(rebuilt(frames, bag, 1)[0], model(frames, bag, 1)[0])


def test_model_files_of_format_5_have_average_pooling_and_a_bad_value_is_refused(tmp_path):
    data = _save(build_model("small_cnn", 2, 1), tmp_path, global_pool="avg").to_dict()
    del data["global_pool"]
    data["format_version"] = 5
    torch.save(data, tmp_path / "old.pth")
    old = ModelFile.load(tmp_path / "old.pth")
    assert (old.global_pool, old.format_version) == ("avg", 5)
    assert isinstance(old.build_model().pool, torch.nn.AdaptiveAvgPool2d)
    data["global_pool"] = "median"
    torch.save(data, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="'global_pool' is 'median'"):
        ModelFile.load(tmp_path / "bad.pth")


@pytest.mark.parametrize("arch", ["resnet18", "timm/resnet18"])
def test_torchvision_and_timm_encoders_pool_by_the_maximum(arch):
    torch.manual_seed(2)
    pooled = {pool: build_model(arch, 2, 1, global_pool=pool).eval() for pool in ("avg", "max")}
    pooled["max"].load_state_dict(pooled["avg"].state_dict())  # no weights of its own: the same keys
    frames = torch.randn(2, 1, 64, 64)  # a 2 x 2 last feature map (at 32 px it is one value: max = average)
    with torch.no_grad():
        assert not torch.allclose(pooled["max"](frames), pooled["avg"](frames))
    assert any(isinstance(m, torch.nn.AdaptiveMaxPool2d) for m in pooled["max"].modules())


def test_a_torchvision_model_that_pools_in_its_own_code_is_refused_with_the_fix():
    with pytest.raises(UserError, match="densenet121 pools its features inside its own code") as err:
        build_model("densenet121", 2, 1, global_pool="max")
    assert "--model timm/densenet121" in err.value.fix


def test_a_max_pooled_run_says_so_records_it_and_exports_to_onnx_with_the_same_output(tmp_path, capsys):
    root, label = make_data(tmp_path / "frames", persons=8, frames=3, size=32)
    args = ["--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path / "out")]
    args += [*FAST, "--epochs", "1", "--global-pool", "max", "--bootstrap", "0"]
    assert train_in_process(*args) == 0
    run_dir = only_run_dir(tmp_path / "out")
    assert "encoder pooling: max over each frame" in (run_dir / "train.log").read_text(encoding="utf-8")
    assert yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))["options"]["global_pool"] == "max"
    model_path = run_dir / "models" / "best_model.pth"
    model_file = ModelFile.load(model_path)
    assert model_file.global_pool == "max"
    assert "global max pooling" in (run_dir / "methods.md").read_text(encoding="utf-8")

    out = tmp_path / "m.onnx"
    assert export.main(["--model", str(model_path), "--format", "onnx", "--out", str(out)]) == 0
    frames = np.random.default_rng(0).integers(0, 256, (3, 1, 32, 32), dtype=np.uint8)  # the model's input frames
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {session.get_inputs()[0].name: frames})[0]
    norm = model_file.normalization
    inputs = (torch.from_numpy(frames).float() / 255 - norm["mean"][0]) / norm["std"][0]
    with torch.no_grad():
        torch_probs = torch.softmax(model_file.build_model()(inputs), dim=1).numpy()
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-5)


@pytest.mark.parametrize(
    "flags, pool",
    [
        (["--person-model", "frames"], "avg"),  # a frame model: its architecture's own pooling
        ([], "max"),  # the default person model (attention) from random weights: measured
        (["--person-model", "attention"], "max"),
        (["--person-model", "mean"], "max"),
        (["--person-model", "attention", "--model", "resnet18", "--pretrained"], "avg"),  # weights learned under avg
        (["--person-model", "attention", "--global-pool", "avg"], "avg"),
    ],
)
def test_auto_pools_by_the_maximum_for_a_person_model_from_random_weights(flags, pool):
    from carotid.training.config import parse_train_args

    assert parse_train_args(["--demo", *flags])[0].global_pool == pool


def test_a_resumed_run_from_before_the_option_keeps_average_pooling(tmp_path):
    """Its checkpoints were trained with the average: auto must not turn a resumed attention run into max."""
    import dataclasses

    from carotid.train import merge_resume
    from carotid.training.config import parse_train_args

    old, _ = parse_train_args(["--demo", "--person-model", "attention"])
    options = {k: v for k, v in dataclasses.asdict(old).items() if k != "global_pool"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"options": options}), encoding="utf-8")
    cfg, given = parse_train_args(["--resume", str(tmp_path)])
    assert merge_resume(cfg, given, tmp_path).global_pool == "avg"
