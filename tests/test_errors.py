"""Every bad input a user can give ends in one `error: <what> — <fix>` line, exit status 2, no traceback,
and no run directory (nor a hidden `.train_*.partial` staging folder) left behind.

The table runs the real entry points (`carotid.train.main`, `carotid.evaluate.main`, `carotid.predict.main`)
in this process, which is fast; two cases also run as real console commands to prove what the user sees.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from carotid import evaluate, predict
from carotid.data.frames.transforms import NORMALIZATION
from carotid.data.sheet.labels import OLE2_MAGIC
from carotid.model.registry import SmallCNN
from tests.conftest import FAST, make_data, only_run_dir, subprocess_env, train_in_process, write_xlsx

QUICK = [*FAST, "--epochs", "1", "--no-test", "--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25"]
HEADER = ["患者编号", "诊断"]


def write_model_file(
    path: Path,
    arch: str = "small_cnn",
    class_names=("normal", "plaque"),
    num_classes: int | None = None,
    state_dict: dict | None = None,
) -> Path:
    """A carotid model file as carotid-train writes it; the arguments make it lie about itself."""
    state = state_dict if state_dict is not None else SmallCNN(num_classes=2, in_channels=1).state_dict()
    # Written as a raw dict (not through ModelFile, which would refuse to write a file that lies).
    torch.save(
        {
            "format": "carotid-model",
            "format_version": 2,
            "state_dict": state,
            "arch": arch,
            "num_classes": num_classes or len(class_names),
            "class_names": list(class_names),
            "in_channels": 1,
            "image_size": 32,
            "normalization": NORMALIZATION[1],
            "positive_index": len(class_names) - 1,
            "epoch": 1,
            "metrics": {},
            "threshold": 0.5,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Good data (8 persons x 2 frames), a good model file and one finished run, all read-only for the cases."""
    base = tmp_path_factory.mktemp("errors")
    root, label = make_data(base / "frames", persons=8, frames=2, size=32)
    model = write_model_file(base / "good.pth")
    status = train_in_process(
        "--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(base / "runs"), *QUICK
    )
    assert status == 0
    return root, label, model, only_run_dir(base / "runs")


@dataclass
class Env:
    """What a case needs: the shared good inputs and a private scratch folder."""

    tmp: Path
    root: Path
    label: Path
    model: Path
    run: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def train(self, *extra, root=None, label=None) -> tuple[str, list[str]]:
        return "train", [
            "--root-dir",
            str(root or self.root),
            "--label-excel",
            str(label or self.label),
            "--output-dir",
            str(self.out),
            *QUICK,
            *map(str, extra),
        ]

    def evaluate(self, model, *extra) -> tuple[str, list[str]]:
        return "evaluate", [
            "--model",
            str(model),
            "--root-dir",
            str(self.root),
            "--label-excel",
            str(self.label),
            "--out",
            str(self.out / "eval"),
            "--num-workers",
            "0",
            "--bootstrap",
            "0",
            *map(str, extra),
        ]

    def predict(self, model) -> tuple[str, list[str]]:
        return "predict", [
            "--model",
            str(model),
            "--input",
            str(self.root),
            "--out",
            str(self.out / "pred.csv"),
            "--num-workers",
            "0",
        ]

    def xlsx(self, rows, **kwargs) -> Path:
        return write_xlsx(self.tmp / "labels.xlsx", rows, **kwargs)

    def sheet_rows(self) -> list[list]:
        """The good label sheet's rows: [[1001, 'normal'], [1002, 'plaque'], ...]."""
        return [[1001 + i, ("normal", "plaque")[i % 2]] for i in range(8)]

    def file(self, name: str, data: bytes = b"") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def data_copy(self) -> Path:
        return Path(shutil.copytree(self.root, self.tmp / "frames"))

    def yaml(self, text: str) -> Path:
        path = self.tmp / "options.yaml"
        path.write_text(text, encoding="utf-8")
        return path


def _folder(e: Env, name: str) -> Path:
    (e.tmp / name).mkdir()
    return e.tmp / name


def _corrupt_person(e: Env) -> Path:
    root = e.data_copy()
    for frame in (root / "1003").rglob("*.png"):
        frame.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    return root


def _no_images(e: Env) -> Path:
    root = e.tmp / "frames"
    for i in range(8):
        (root / str(1001 + i)).mkdir(parents=True)
        (root / str(1001 + i) / "notes.txt").write_text("no frames here")
    return root


def _zip_not_workbook(e: Env) -> Path:
    path = e.tmp / "labels.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not a workbook")
    return path


def _run_copy(e: Env, name: str, text: str) -> Path:
    run = Path(shutil.copytree(e.run, e.tmp / e.run.name))
    (run / name).write_text(text, encoding="utf-8")
    return run


def _three_classes(e: Env) -> Path:
    rows = e.sheet_rows()
    rows[0][1] = "stenosis"
    return e.xlsx([HEADER, *rows])


# (case id, builder(env) -> ((cli, argv), text the one error line must contain))
CASES = [
    # --- data: the root folder
    ("root-dir-missing", lambda e: (e.train(root=e.tmp / "nowhere"), "nowhere")),
    ("root-dir-is-a-file", lambda e: (e.train(root=e.file("frames.zip", b"PK")), "frames.zip")),
    ("root-dir-empty", lambda e: (e.train(root=_folder(e, "empty")), "empty")),
    ("root-dir-no-images", lambda e: (e.train(root=_no_images(e)), "holds an image file")),
    ("every-image-of-a-person-unreadable", lambda e: (e.train(root=_corrupt_person(e)), "'1003'")),
    (
        "no-overlap-sheet-and-folders",
        lambda e: (e.train(label=e.xlsx([HEADER, ["A1", "normal"], ["A2", "plaque"]])), "A1"),
    ),
    # --- data: the label file
    ("label-missing", lambda e: (e.train(label=e.tmp / "labels.xlsx"), "labels.xlsx")),
    ("label-is-a-folder", lambda e: (e.train(label=e.root), str(e.root))),
    ("label-not-xlsx", lambda e: (e.train(label=e.file("labels.csv", b"id,label\n1001,normal\n")), "labels.csv")),
    (
        "label-password-protected",
        lambda e: (e.train(label=e.file("labels.xlsx", OLE2_MAGIC + b"\0" * 504)), "password"),
    ),
    ("label-corrupt", lambda e: (e.train(label=e.file("labels.xlsx", b"PK\x03\x04 truncated")), "labels.xlsx")),
    ("label-zip-but-not-workbook", lambda e: (e.train(label=_zip_not_workbook(e)), "labels.xlsx")),
    ("label-empty-sheet", lambda e: (e.train(label=e.xlsx([])), "empty")),
    ("label-header-only", lambda e: (e.train(label=e.xlsx([HEADER])), "no labels")),
    ("label-unknown-sheet", lambda e: (e.train("--sheet", "Labels2"), "Labels2")),
    ("label-wrong-id-column", lambda e: (e.train("--id-column", "MRN"), "MRN")),
    ("label-wrong-label-column", lambda e: (e.train("--label-column", "Grade"), "Grade")),
    ("label-id-column-empty", lambda e: (e.train("--id-column", " "), "--id-column ' '")),
    (
        "label-column-is-the-id-column",
        lambda e: (e.train("--id-column", "患者编号", "--label-column", "患者编号"), "患者编号"),
    ),
    ("label-no-label-column", lambda e: (e.train(label=e.xlsx([["患者编号"], [1001], [1002]])), "no label column")),
    (
        "label-duplicate-ids-conflicting",
        lambda e: (e.train(label=e.xlsx([HEADER, *e.sheet_rows(), [1004, "normal"]])), "'1004'"),
    ),
    (
        "label-one-class-only",
        lambda e: (e.train(label=e.xlsx([HEADER] + [[r[0], "normal"] for r in e.sheet_rows()])), "'normal'"),
    ),
    ("positive-class-unknown", lambda e: (e.train("--positive-class", "stenosis"), "stenosis")),
    # --- options
    (
        "train-ratio-negative",
        lambda e: (e.train("--train-ratio", "-0.2", "--val-ratio", "0.6", "--test-ratio", "0.6"), "-0.2"),
    ),
    ("val-ratio-over-1", lambda e: (e.train("--train-ratio", "0.5", "--val-ratio", "1.5", "--test-ratio", "0"), "1.5")),
    (
        "ratios-not-summing-to-1",
        lambda e: (e.train("--train-ratio", "0.7", "--val-ratio", "0.2", "--test-ratio", "0.2"), "1.1"),
    ),
    ("ratio-nan", lambda e: (e.train("--test-ratio", "nan"), "nan")),
    ("batch-size-0", lambda e: (e.train("--batch-size", "0"), "--batch-size")),
    ("batch-size-negative", lambda e: (e.train("--batch-size", "-4"), "-4")),
    ("epochs-0", lambda e: (e.train("--epochs", "0"), "--epochs")),
    ("epochs-not-a-number", lambda e: (e.train("--epochs", "ten"), "'ten'")),
    ("image-size-0", lambda e: (e.train("--image-size", "0"), "--image-size")),
    ("image-size-negative", lambda e: (e.train("--image-size", "-32"), "-32")),
    ("lr-0", lambda e: (e.train("--lr", "0"), "--lr")),
    ("lr-negative", lambda e: (e.train("--lr", "-1e-3"), "-0.001")),
    ("lr-infinite", lambda e: (e.train("--lr", "inf"), "inf")),
    ("max-imgs-per-person-0", lambda e: (e.train("--max-imgs-per-person", "0"), "--max-imgs-per-person")),
    ("max-imgs-per-person-negative", lambda e: (e.train("--max-imgs-per-person", "-5"), "-5")),
    ("unknown-model", lambda e: (e.train("--model", "convnext_atoo"), "did you mean convnext_atto")),
    ("unknown-flag", lambda e: (e.train("--epoch", "3"), "--epoch")),
    ("output-dir-under-a-file", lambda e: (e.train("--output-dir", e.file("taken") / "out"), "taken")),
    ("output-dir-is-a-file", lambda e: (e.train("--output-dir", e.file("taken")), "taken")),
    ("config-yaml-unknown-key", lambda e: (e.train("--config", e.yaml("batch_sise: 4\n")), "batch_sise")),
    ("config-yaml-wrong-type", lambda e: (e.train("--config", e.yaml("epochs: ten\n")), "'ten'")),
    ("config-yaml-invalid", lambda e: (e.train("--config", e.yaml("epochs: [1\n")), "options.yaml")),
    ("config-yaml-missing", lambda e: (e.train("--config", e.tmp / "nope.yaml"), "nope.yaml")),
    # --- model files given to train
    ("load-model-missing", lambda e: (e.train("--load-model", e.tmp / "gone.pth"), "gone.pth")),
    ("load-model-not-a-model-file", lambda e: (e.train("--load-model", e.file("notes.pth", b"hello")), "notes.pth")),
    (
        "load-model-other-architecture",
        lambda e: (
            e.train("--load-model", write_model_file(e.tmp / "cnn.pth"), "--model", "mobilenet_v3_small"),
            "cnn.pth",
        ),
    ),
    (
        "load-model-bare-state-dict-other-architecture",
        lambda e: (
            e.train("--load-model", _save(e.tmp / "wide.pth", SmallCNN(2, 1, width=16).state_dict())),
            "wide.pth",
        ),
    ),
    (
        "load-model-other-class-count",
        lambda e: (
            e.train(
                "--load-model",
                write_model_file(
                    e.tmp / "three.pth", class_names=("a", "b", "c"), state_dict=SmallCNN(3, 1).state_dict()
                ),
            ),
            "three.pth",
        ),
    ),
    (
        "pretrained-weights-missing",
        lambda e: (
            e.train("--model", "mobilenet_v3_small", "--pretrained-weights", e.tmp / "imagenet.pth"),
            "imagenet.pth",
        ),
    ),
    # --- resume
    ("resume-missing", lambda e: (e.train("--resume", e.tmp / "train_19990101_000000"), "train_19990101_000000")),
    ("resume-not-a-run-dir", lambda e: (e.train("--resume", e.root), str(e.root))),
    ("resume-a-model-file", lambda e: (e.train("--resume", e.model), "good.pth")),
    ("resume-other-architecture", lambda e: (("train", ["--resume", str(e.run), "--model", "resnet18"]), "resnet18")),
    (
        "resume-other-class-count",
        lambda e: (("train", ["--resume", str(e.run), "--label-excel", str(_three_classes(e))]), "stenosis"),
    ),
    (
        "resume-run-config-corrupt",
        lambda e: (("train", ["--resume", str(_run_copy(e, "config.yaml", "options: [\n"))]), "config.yaml"),
    ),
    (
        "resume-run-splits-corrupt",
        lambda e: (("train", ["--resume", str(_run_copy(e, "splits.json", '{"train": ['))]), "splits.json"),
    ),
    # --- evaluate --model
    ("evaluate-model-missing", lambda e: (e.evaluate(e.tmp / "gone.pth"), "gone.pth")),
    ("evaluate-not-a-model-file", lambda e: (e.evaluate(e.file("weights.pth", os.urandom(256))), "weights.pth")),
    (
        "evaluate-state-dict-not-a-carotid-model-file",
        lambda e: (e.evaluate(_save(e.tmp / "bare.pth", SmallCNN(2, 1).state_dict())), "bare.pth"),
    ),
    (
        "evaluate-other-architecture",
        lambda e: (e.evaluate(write_model_file(e.tmp / "liar.pth", arch="mobilenet_v3_small")), "liar.pth"),
    ),
    (
        "evaluate-other-classes",
        lambda e: (e.evaluate(write_model_file(e.tmp / "tumour.pth", class_names=("benign", "malignant"))), "benign"),
    ),
    ("evaluate-run-dir-missing", lambda e: (("evaluate", ["--run-dir", str(e.tmp / "train_x")]), "train_x")),
    # --- predict --model
    ("predict-model-missing", lambda e: (e.predict(e.tmp / "gone.pth"), "gone.pth")),
    ("predict-not-a-model-file", lambda e: (e.predict(e.file("weights.pth", b"\x80\x04K\x01.")), "weights.pth")),
    (
        "predict-unknown-architecture",
        lambda e: (e.predict(write_model_file(e.tmp / "vit.pth", arch="vit_b_16")), "vit_b_16"),
    ),
    (
        "predict-other-class-count",
        lambda e: (e.predict(write_model_file(e.tmp / "three.pth", class_names=("a", "b", "c"))), "three.pth"),
    ),
]


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def run_in_process(cli: str, argv: list[str]) -> int:
    if cli == "train":
        return train_in_process(*argv)
    return {"evaluate": evaluate.main, "predict": predict.main}[cli](argv)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def assert_one_error_line(err: str, needle: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: ") and " — " in line, line  # what, then how to fix it
    assert needle in line, f"{needle!r} not named in: {line}"
    assert "Traceback" not in err
    return line


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(build, shared, tmp_path, capsys):
    env = Env(tmp_path, *shared)
    before = snapshot(env.run)
    (cli, argv), needle = build(env)
    capsys.readouterr()
    status = run_in_process(cli, argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert_one_error_line(err, needle)
    if env.out.is_dir():  # nothing half-made: no run directory, no staging folder, no evaluation or prediction files
        assert [p.name for p in env.out.iterdir()] == []
    assert snapshot(env.run) == before, "a refused --resume leaves the run untouched"


def test_the_table_covers_at_least_forty_cases():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)
    print(f"{len(CASES)} bad-input cases")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod 0o500 (output-dir-under-a-file covers it)")
def test_read_only_output_dir(shared, tmp_path, capsys):
    env = Env(tmp_path, *shared)
    env.out.mkdir()
    env.out.chmod(0o500)
    try:
        (cli, argv) = env.train()
        assert run_in_process(cli, argv) == 2
        assert_one_error_line(capsys.readouterr().err, str(env.out))
        assert list(env.out.iterdir()) == []
    finally:
        env.out.chmod(0o700)


def test_an_unexpected_failure_keeps_its_traceback(shared, tmp_path, monkeypatch):
    """Bugs are not dressed up as user errors: the exception escapes main() (a traceback and exit 1 on the console)."""
    env = Env(tmp_path, *shared)

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("carotid.training.fit.read_labels", broken)
    with pytest.raises(ZeroDivisionError):
        train_in_process(*env.train()[1])


def test_console_shows_one_error_line_and_exit_status_2(shared, tmp_path):
    """Real commands, launched side by side: stderr is exactly one `error:` line, no traceback, exit status 2.

    Two are enough here (each costs a torch import); the table above covers the cases through the same main()."""
    env = Env(tmp_path, *shared)
    commands = {
        "train": (["carotid.train", *env.train(root=tmp_path / "nowhere")[1]], "nowhere"),
        "predict": (["carotid.predict", *env.predict(env.file("model.pth", b"not a model"))[1]], "model.pth"),
    }
    jobs = {
        name: subprocess.Popen(
            [sys.executable, "-m", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for name, (argv, _) in commands.items()
    }
    for name, job in jobs.items():
        out, err = job.communicate(timeout=300)
        assert job.returncode == 2, (name, out, err)
        assert_one_error_line(err, commands[name][1])
        assert "Traceback" not in out
    assert not env.out.exists() or list(env.out.iterdir()) == []
