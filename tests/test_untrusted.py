"""A model file is data, never a program: a `.pth` whose unpickling would run code is refused by every command.

A pickle can call any importable function while it loads; `torch.load(..., weights_only=True)` refuses
every global that is not a tensor type. The payloads below would create a file; the commands must answer
with one `error:` line (exit status 2) and the file must never appear.
"""

from __future__ import annotations

import ast
import pathlib
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from carotid import evaluate, predict
from carotid.core import files
from carotid.data.frames.transforms import NORMALIZATION
from carotid.model.file import FORMAT, FORMAT_VERSION
from carotid.model.registry import SmallCNN
from tests.conftest import FAST, make_data, train_in_process

PACKAGE = Path(__file__).resolve().parents[1] / "carotid"


class CreatesAFile:
    """Unpickling this calls Path(target).touch(): harmless here, but it could be any call."""

    def __init__(self, target: Path):
        self.target = Path(target)

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


def model_dict(payload) -> dict:
    """A carotid model file in every respect, with the payload hidden among its metadata."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": SmallCNN(2, 1).state_dict(),
        "arch": "small_cnn",
        "num_classes": 2,
        "class_names": ["normal", "plaque"],
        "in_channels": 1,
        "image_size": 32,
        "normalization": NORMALIZATION[1],
        "epoch": 1,
        "metrics": {"val_auc": payload},
        "threshold": 0.5,
    }


def write_payload(kind: str, path: Path, target: Path) -> Path:
    payload = CreatesAFile(target)
    if kind == "whole-file":
        torch.save(payload, path)
    elif kind == "inside-a-model-file":
        torch.save(model_dict(payload), path)
    elif kind == "legacy-torch-format":
        torch.save(model_dict(payload), path, _use_new_zipfile_serialization=False)
    elif kind == "plain-pickle":
        with open(path, "wb") as handle:
            pickle.dump(model_dict(payload), handle)
    return path


KINDS = ["whole-file", "inside-a-model-file", "legacy-torch-format", "plain-pickle"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("untrusted") / "frames", persons=8, frames=2, size=32)


def fake_run(folder: Path, root: Path, label: Path, model: Path) -> Path:
    """A run directory whose models/best_model.pth someone has replaced."""
    (folder / "models").mkdir(parents=True)
    model.rename(folder / "models" / "best_model.pth")
    (folder / "config.yaml").write_text(
        yaml.safe_dump({"options": {"root_dir": str(root), "label_excel": str(label), "seed": 0, "bootstrap": 0}})
    )
    files.atomic_write_json(folder / "splits.json", {"train": [], "val": [], "test": ["1001", "1002"]})
    return folder


def commands(root: Path, label: Path, model: Path, tmp: Path) -> dict[str, tuple]:
    train = [
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--output-dir",
        str(tmp / "out"),
        *FAST,
        "--epochs",
        "1",
        "--no-test",
    ]
    external = ["--root-dir", str(root), "--label-excel", str(label), "--out", str(tmp / "out"), "--num-workers", "0"]

    def train_main(argv):
        return train_in_process(*argv)

    return {
        "train --load-model": (train_main, [*train, "--load-model", str(model)]),
        "train --pretrained-weights": (
            train_main,
            [*train, "--model", "mobilenet_v3_small", "--pretrained-weights", str(model)],
        ),
        "evaluate --model": (evaluate.main, ["--model", str(model), *external]),
        "evaluate --run-dir": (evaluate.main, ["--run-dir", "RUN", "--num-workers", "0", "--out", str(tmp / "out")]),
        "predict --model": (
            predict.main,
            ["--model", str(model), "--input", str(root), "--out", str(tmp / "out" / "p.csv"), "--num-workers", "0"],
        ),
    }


def test_the_payload_is_live(tmp_path):
    """Without weights_only, loading the file really runs the call (so the refusals below mean something)."""
    for kind in KINDS[:3]:
        target = tmp_path / f"pwned-{kind}"
        torch.load(write_payload(kind, tmp_path / f"{kind}.pth", target), weights_only=False)
        assert target.exists(), kind


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "command",
    ["train --load-model", "train --pretrained-weights", "evaluate --model", "evaluate --run-dir", "predict --model"],
)
def test_every_command_refuses_a_file_that_would_run_code(command, kind, data, tmp_path, capsys):
    root, label = data
    target = tmp_path / "pwned"
    model = write_payload(kind, tmp_path / "shared_by_a_colleague.pth", target)
    main, argv = commands(root, label, model, tmp_path)[command]
    if command == "evaluate --run-dir":
        run = fake_run(tmp_path / "train_20240101_000000", root, label, model)
        argv = [str(run) if a == "RUN" else a for a in argv]
        model = run / "models" / "best_model.pth"
    capsys.readouterr()
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("error: ") and "\n" not in err and model.name in err, err
    assert not target.exists(), "the payload ran"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------------------------
# Static checks of the package's source
# ---------------------------------------------------------------------------------------------


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_every_torch_load_in_the_package_passes_weights_only_true():
    loads, problems = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "torch"
                and any(a.name == "load" for a in node.names)
            ):
                problems.append(f"{path.name}:{node.lineno}: 'from torch import load' hides the check below")
            if isinstance(node, ast.Import) and any(
                a.name in ("pickle", "dill", "joblib", "cloudpickle") for a in node.names
            ):
                problems.append(f"{path.name}:{node.lineno}: imports a pickle library")
        for node, name in calls(tree):
            where = f"{path.name}:{node.lineno}: {ast.unparse(node)}"
            keywords = {k.arg: k.value for k in node.keywords}
            if name == "torch.load":
                loads += 1
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where} does not pass weights_only=True")
            elif name in ("np.load", "numpy.load") and "allow_pickle" in keywords:
                problems.append(f"{where} allows pickles")
            elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                problems.append(f"{where}: use yaml.safe_load")
            elif name.endswith(".load_state") and path.name != "trainer.py":
                problems.append(
                    f"{where}: Accelerate checkpoints are unpickled in full; only --resume (trainer.py) may load them"
                )
    assert loads >= 1, "the model-file loader was not found: has the code moved?"
    assert not problems, "\n".join(problems)


def test_model_files_are_read_only_through_the_safe_loader():
    """torch.load lives in one function (files.safe_torch_load); commands read model files through ModelFile.load."""
    users = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [f for _, f in calls(tree)]
        if "torch.load" in names:
            users[path.name] = [
                n.name
                for n in ast.walk(tree)
                if isinstance(n, ast.FunctionDef) and any(f == "torch.load" for _, f in calls(n))
            ]
        users.setdefault("callers of ModelFile.load", []).extend(
            [path.name] * any(f.endswith("ModelFile.load") for f in names)
        )
    callers = users.pop("callers of ModelFile.load")
    assert users == {"files.py": ["safe_torch_load"]}, users
    assert {"evaluate.py", "predict.py", "trainer.py"} <= set(callers), callers
