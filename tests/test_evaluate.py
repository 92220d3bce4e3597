"""carotid-evaluate end to end on a finished run: files, numbers, flags, external validation, errors, 2 processes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from carotid import evaluate
from carotid.data.frames.transforms import NORMALIZATION
from carotid.data.sheet.labels import read_labels
from carotid.evaluation.evaluator import compute_report, format_table
from carotid.evaluation.inference import FramePredictions
from carotid.model.file import ModelFile
from carotid.model.registry import build_model
from carotid.report.outputs import write_evaluation
from tests.conftest import load_model, read_json, run_module, write_xlsx

QUICK = ["--num-workers", "0", "--batch-size", "8", "--bootstrap", "50", "--no-paper-figures"]
LEVEL_KEYS = {
    "auc",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "confusion_matrix",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "threshold",
    "at_threshold_0.5",
}


def assert_same(first, second, key: str = "") -> None:
    """Equal up to 1e-9 for floats, exactly otherwise, through nested dicts and lists."""
    if isinstance(first, dict):
        assert first.keys() == second.keys(), key
        for k in first:
            assert_same(first[k], second[k], f"{key}.{k}")
    elif isinstance(first, list):
        assert len(first) == len(second), key
        for i, (a, b) in enumerate(zip(first, second)):
            assert_same(a, b, f"{key}[{i}]")
    elif isinstance(first, float):
        assert second == pytest.approx(first, abs=1e-9), key
    else:
        assert first == second, key


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """The run's config, splits and models in tmp_path, for tests that write into the run directory."""
    run = tmp_path / trained_run.name
    run.mkdir()
    for name in ("config.yaml", "splits.json"):
        shutil.copy(trained_run / name, run / name)
    shutil.copytree(trained_run / "models", run / "models")
    return run


def test_evaluate_test_split_of_a_run(trained_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate.main(["--run-dir", str(trained_run), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "per person" in printed and f"evaluation written to {out}; report: {out / 'report.html'}" in printed
    for name in ("metrics.json", "predictions.csv", "person_predictions.csv", "roc_curve.png", "confusion_matrix.png"):
        assert (out / name).is_file(), name
    report = read_json(out / "metrics.json")
    test_persons = read_json(trained_run / "splits.json")["test"]
    assert report["n_persons"] == len(test_persons) == len(rows(out / "person_predictions.csv"))
    assert report["n_images"] == len(rows(out / "predictions.csv")) == 4 * len(test_persons)
    assert sorted(r["person_id"] for r in rows(out / "person_predictions.csv")) == sorted(test_persons)
    assert report["split"] == "test" and report["class_names"] == ["normal", "plaque"]
    assert report["model_file"].endswith("best_model.pth")
    for level in ("image", "person"):
        assert LEVEL_KEYS <= set(report[level])
        assert {"auc", "accuracy", "sensitivity", "specificity"} <= set(report["ci"][level])
    model = load_model(trained_run / "models" / "best_model.pth")
    assert report["threshold"] == pytest.approx(model["threshold"])
    assert "Youden" in report["threshold_source"]
    assert report["person_aggregation"] == model["aggregation"]


def test_evaluate_reproduces_the_trainers_test_evaluation(trained_run, tmp_path):
    """Same persons, threshold, seed and bootstrap count as carotid-train's RUN/eval_test_best."""
    out = tmp_path / "again"
    assert (
        evaluate.main(["--run-dir", str(trained_run), "--out", str(out), "--num-workers", "0", "--batch-size", "8"])
        == 0
    )
    again, trainer = read_json(out / "metrics.json"), read_json(trained_run / "eval_test_best" / "metrics.json")
    for key in ("n_images", "n_persons", "threshold", "image", "person", "ci"):
        assert_same(again[key], trainer[key], key)


def test_threshold_flag_is_used_and_reported(trained_run, tmp_path):
    out = tmp_path / "t"
    assert evaluate.main(["--run-dir", str(trained_run), "--out", str(out), "--threshold", "0.3", *QUICK]) == 0
    report = read_json(out / "metrics.json")
    assert report["threshold"] == 0.3 and report["threshold_source"] == "--threshold"
    assert report["person"]["threshold"] == 0.3 and report["person"]["at_threshold_0.5"]["threshold"] == 0.5
    for row in rows(out / "person_predictions.csv") + rows(out / "predictions.csv"):
        assert row["predicted_label"] == ("plaque" if float(row["prob_plaque"]) >= 0.3 else "normal")


def test_split_model_and_default_out_dir(run_copy, capsys):
    assert (
        evaluate.main(
            ["--run-dir", str(run_copy), "--split", "val", "--model", "final", "--person-aggregation", "max", *QUICK]
        )
        == 0
    )
    report = read_json(run_copy / "eval_val_final" / "metrics.json")
    assert report["split"] == "val" and report["model_file"].endswith("final_model.pth")
    assert report["person_aggregation"] == "max"
    assert report["n_persons"] == len(read_json(run_copy / "splits.json")["val"])


def test_external_validation_evaluates_every_labelled_person_and_marks_persons_it_trained_on(
    run_copy, data_dir, capsys
):
    root, label = data_dir
    model = run_copy / "models" / "best_model.pth"
    argv = [
        "--model",
        str(model),
        "--root-dir",
        str(root),
        "--label-excel",
        str(label),
        "--max-imgs-per-person",
        "2",
        *QUICK,
    ]
    assert evaluate.main(argv) == 0
    out = run_copy / f"eval_external_{root.name}_best"
    report = read_json(out / "metrics.json")
    assert report["split"] == "external" and report["run_dir"] is None
    assert report["n_persons"] == 12 and report["n_images"] == 24
    assert report["data"]["root_dir"] == str(root.resolve())
    # The run's own data: its train and val persons make this no external test, and every output says so.
    splits = read_json(run_copy / "splits.json")
    seen = len(splits["train"]) + len(splits["val"])
    assert report["seen_by_model"] | {"first": []} == {
        "count": seen, "of": 12, "splits": ["train", "val"], "first": [], "splits_file": str(run_copy / "splits.json")
    }  # fmt: skip
    (warning,) = [w for w in report["warnings"] if w.startswith("not external: ")]
    assert warning.startswith(f"not external: {seen} persons of 12 in the data (")
    printed = capsys.readouterr().out
    assert f"warning: {seen} persons of 12 in the data (" in printed and "marks it not external" in printed
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"external data, not external: {seen} of 12 persons seen in training" in page


def not_a_model(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(2)}, path)
    return path


def partial_data(tmp_path: Path, root: Path) -> Path:
    """The data with only one person folder: the run's test persons are missing."""
    kept = tmp_path / "partial"
    first = sorted(p for p in root.iterdir() if p.is_dir())[0]
    shutil.copytree(first, kept / first.name)
    return kept


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing run dir", "run dir not found"),
        ("run dir without config", "no config.yaml"),
        ("unknown split", "invalid choice"),
        ("missing model file", "model file not found"),
        ("not a carotid model", "not a carotid model file"),
        ("persons of the split missing", "not in the data"),
        ("split without run dir", "--split needs --run-dir"),
        ("nothing to evaluate", "nothing to evaluate"),
        ("external without data", "needs the data"),
        ("bad threshold", "--threshold must be between 0 and 1"),
    ],
)
def test_user_errors_exit_2_before_any_output(case, fragment, trained_run, data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    run = str(trained_run)
    argv = {
        "missing run dir": ["--run-dir", str(tmp_path / "nope")],
        "run dir without config": ["--run-dir", str(tmp_path)],
        "unknown split": ["--run-dir", run, "--split", "holdout"],
        "missing model file": ["--run-dir", run, "--model", str(tmp_path / "nope.pth")],
        "not a carotid model": ["--run-dir", run, "--model", str(not_a_model(tmp_path))],
        "persons of the split missing": ["--run-dir", run, "--root-dir", str(partial_data(tmp_path, data_dir[0]))],
        "split without run dir": ["--model", str(trained_run / "models" / "best_model.pth"), "--split", "val"],
        "nothing to evaluate": [],
        "external without data": ["--model", str(trained_run / "models" / "best_model.pth")],
        "bad threshold": ["--run-dir", run, "--threshold", "2"],
    }[case]
    assert evaluate.main([*argv, "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and fragment in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.slow
def test_two_processes_give_the_same_evaluation_as_one(trained_run, tmp_path):
    """Batch size 5 over 12 frames: the last batch is split unevenly and padded by Accelerate."""
    common = ["--run-dir", str(trained_run), "--num-workers", "0", "--batch-size", "5", "--bootstrap", "100"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert evaluate.main([*common, "--out", str(one)]) == 0
    result = run_module("carotid.evaluate", *common, "--out", str(two), nproc=2)  # run_module picks a free port
    assert result.returncode == 0, result.stderr[-3000:]
    assert "with 2 processes" in result.stdout
    first, second = read_json(one / "metrics.json"), read_json(two / "metrics.json")
    assert second["n_images"] == first["n_images"] == 12
    for key in ("n_persons", "counts", "threshold", "image", "person", "ci", "unreadable_images"):
        assert_same(first[key], second[key], key)
    assert [r["path"] for r in rows(two / "predictions.csv")] == [r["path"] for r in rows(one / "predictions.csv")]


def test_one_class_data_gives_null_metrics_with_a_warning(run_copy, data_dir, tmp_path, capsys):
    """External data whose persons are all 'normal': AUC and sensitivity are null, the run still finishes."""
    root, label = data_dir
    normal = [p for p, name in read_labels(label).labels.items() if name == "normal"]
    only_normal = tmp_path / "normal_only"
    for person in normal:
        shutil.copytree(root / person, only_normal / person)
    out = tmp_path / "eval"
    argv = [
        "--model",
        str(run_copy / "models" / "best_model.pth"),
        "--root-dir",
        str(only_normal),
        "--label-excel",
        str(label),
        "--out",
        str(out),
        *QUICK,
    ]
    assert evaluate.main(argv) == 0
    printed = capsys.readouterr().out
    report = read_json(out / "metrics.json")
    assert report["n_persons"] == len(normal) and report["counts"]["persons"] == {"normal": len(normal), "plaque": 0}
    assert report["person"]["auc"] is None and report["person"]["sensitivity"] is None
    assert report["ci"]["person"]["auc"] is None and report["ci"]["person"]["specificity"] is not None
    assert "person: AUC is undefined: only one class is present" in report["warnings"]
    assert "warning: person: AUC is undefined" in printed and "sheet rows have no person folder" in printed


def test_multiclass_report_table_and_files(tmp_path):
    """Three classes: macro AUC, per-class numbers in the table, argmax labels, figures drawn."""
    rng = np.random.default_rng(0)
    names = ["normal", "stenosis", "plaque"]
    persons = np.repeat([f"p{i}" for i in range(9)], 3)
    labels = np.repeat(np.arange(9) % 3, 3)
    probs = rng.dirichlet([1, 1, 1], size=len(labels)) + np.eye(3)[labels]
    probs /= probs.sum(axis=1, keepdims=True)
    paths = np.array([f"/x/{p}/{i}.png" for i, p in enumerate(persons)])
    preds = FramePredictions(paths, np.zeros(len(paths), dtype=int), persons, labels, probs)
    model = build_model("small_cnn", 3, 1)
    data = ModelFile(model.state_dict(), "small_cnn", names, 1, 32, NORMALIZATION[1], positive_index=2)
    report, person_table = compute_report(
        preds,
        data,
        model_path="m.pth",
        split="test",
        bootstrap=50,
        aggregation="mean",
        seed=0,
        threshold=None,
        context={},
    )
    assert report["threshold"] is None and report["positive_class"] is None
    assert set(report["person"]["per_class"]) == set(names) and report["ci"]["person"]["auc"] is not None
    table = format_table(report)
    assert "per person, class stenosis: auc" in table and "sensitivity" not in table.splitlines()[2]
    write_evaluation(report, preds, person_table, data, tmp_path)
    predicted = [r["predicted_label"] for r in rows(tmp_path / "predictions.csv")]
    assert predicted == [names[k] for k in probs.argmax(axis=1)]
    assert (tmp_path / "roc_curve.png").stat().st_size > 0 and (tmp_path / "confusion_matrix.png").is_file()


def test_evaluate_with_cache_gives_the_uncached_numbers_and_fills_the_cache(trained_run, tmp_path):
    """--cache used to fail with "not available in this installation" (it looked for a module that moved)."""
    plain, cached, cache_dir = tmp_path / "plain", tmp_path / "cached", tmp_path / "cache"
    assert evaluate.main(["--run-dir", str(trained_run), "--out", str(plain), *QUICK]) == 0
    args = ["--run-dir", str(trained_run), "--out", str(cached), "--cache", "--cache-dir", str(cache_dir), *QUICK]
    assert evaluate.main(args) == 0
    (folder,) = cache_dir.iterdir()
    assert any(p.name.endswith(".npy") for p in folder.iterdir())
    first, second = read_json(plain / "metrics.json"), read_json(cached / "metrics.json")
    for key in ("n_images", "n_persons", "image", "person"):
        assert_same(first[key], second[key], key)


def test_evaluating_a_run_on_changed_labels_warns_with_the_persons(trained_run, data_dir, tmp_path, capsys):
    """The run's data_report.json holds each person's label; a label file that changed them is a warning."""
    _, label = data_dir
    labels = read_labels(label).labels
    test_person = sorted(read_json(trained_run / "splits.json")["test"])[0]
    flipped = {p: ({"normal": "plaque", "plaque": "normal"}[c] if p == test_person else c) for p, c in labels.items()}
    changed = write_xlsx(tmp_path / "changed.xlsx", [["患者编号", "诊断"], *map(list, sorted(flipped.items()))])
    args = ["--run-dir", str(trained_run), "--label-excel", str(changed), "--out", str(tmp_path / "e"), *QUICK]
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    warning = f"warning: 1 of the {len(read_json(trained_run / 'splits.json')['test'])} persons evaluated have another"
    assert warning in out and f"'{test_person}' '{labels[test_person]}' → '{flipped[test_person]}'" in out
    same = write_xlsx(tmp_path / "same.xlsx", [["患者编号", "诊断"], *map(list, sorted(labels.items()))])
    args[args.index(str(changed))] = str(same)
    args[args.index(str(tmp_path / "e"))] = str(tmp_path / "s")
    assert evaluate.main(args) == 0
    out = capsys.readouterr().out
    assert "have the labels they had in training" in out and "have another label" not in out
