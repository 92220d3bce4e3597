"""Cross-validation (--folds) and --group-column: the fold plan, the CV directory, 1 vs 2 processes, resume."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from carotid.core.errors import UserError
from carotid.data.demo import make_demo_data
from carotid.data.split import cv_splits, person_groups, split_persons
from tests.conftest import (
    FAST,
    cv_args,
    cv_data,
    module_command,
    only_cv_dir,
    run_module,
    subprocess_env,
    tensorboard_scalars,
    train_in_process,
    write_xlsx,
)

# ---------------------------------------------------------------------------------------------
# The fold plan
# ---------------------------------------------------------------------------------------------


@st.composite
def cohorts(draw):
    """Person labels (2-3 classes, every class ≥ 3 persons) and, half the time, groups of 1-3 persons."""
    n_classes = draw(st.integers(2, 3))
    sizes = draw(st.lists(st.integers(3, 12), min_size=n_classes, max_size=n_classes))
    labels = {f"p{i:03d}": c for i, c in enumerate(c for c, n in enumerate(sizes) for _ in range(n))}
    groups = None
    if draw(st.booleans()):
        ids = sorted(labels)
        cuts = draw(st.lists(st.integers(1, 3), min_size=len(ids), max_size=len(ids)))
        groups, start = {}, 0
        for g, size in enumerate(cuts):
            for p in ids[start : start + size]:
                groups[p] = f"patient{g}"
            start += size
    return labels, groups


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohort=cohorts(), folds=st.integers(2, 4), test_ratio=st.sampled_from([0.0, 0.2]), seed=st.integers(0, 99))
def test_folds_partition_the_persons_stratified_group_whole_and_reproducible(cohort, folds, test_ratio, seed):
    labels, sheet_groups = cohort
    groups = person_groups(sorted(labels), sheet_groups)
    try:
        plan, notes = cv_splits(labels, folds, 0.6, 0.4 - test_ratio, test_ratio, seed, groups)
    except UserError as err:
        # Few groups: fewer groups than folds once the test groups are out, or a fold whose other persons are one
        # group, left with none for validation (6 persons in groups of 1, 1, 3, 1 over 2 folds, balanced by
        # persons as 3 + 3). Those, with groups only, and nothing else are refused.
        refusals = ("group(s) of persons are too few for", "form one group: none is left for validation")
        assert groups is not None and any(r in str(err) for r in refusals), err
        return
    held_out = [fold["held_out"] for fold in plan["folds"]]
    everyone = plan["test"] + [p for fold in held_out for p in fold]
    assert sorted(everyone) == sorted(labels), "test + folds: every person exactly once"
    assert len(held_out) == folds and all(held_out)
    for fold in plan["folds"]:
        inside = fold["train"] + fold["val"]
        assert sorted(inside + fold["held_out"]) == sorted(set(labels) - set(plan["test"]))
        assert not set(fold["train"]) & set(fold["val"]) and fold["train"]
    unit = groups or {p: p for p in labels}
    where = {}
    for name, persons in [("test", plan["test"])] + [(f"fold{i}", f) for i, f in enumerate(held_out)]:
        for p in persons:
            assert where.setdefault(unit[p], name) == name, "a group split over folds"
    for fold in plan["folds"]:
        assert not {unit[p] for p in fold["train"]} & {unit[p] for p in fold["val"]}
    if groups is None:  # persons alone: each class spread evenly over the folds
        for c in set(labels.values()):
            per_fold = [sum(labels[p] == c for p in f) for f in held_out]
            assert max(per_fold) - min(per_fold) <= 1, per_fold
    assert cv_splits(labels, folds, 0.6, 0.4 - test_ratio, test_ratio, seed, groups) == (plan, notes)


def test_other_seeds_give_other_folds_of_the_same_persons():
    labels = {f"p{i:02d}": i % 2 for i in range(30)}
    plans = [cv_splits(labels, 4, 0.6, 0.2, 0.2, seed)[0] for seed in (0, 1)]
    assert plans[0]["folds"] != plans[1]["folds"]
    for plan in plans:
        assert sorted(plan["test"] + [p for f in plan["folds"] for p in f["held_out"]]) == sorted(labels)
        assert all(Counter(labels[p] for p in f["held_out"]) == {0: 3, 1: 3} for f in plan["folds"])


def test_plain_split_keeps_groups_whole():
    labels = {f"p{i:02d}": (i // 2) % 2 for i in range(40)}
    groups = person_groups(sorted(labels), {p: f"patient{int(p[1:]) // 2}" for p in labels})  # both sides together
    splits, notes = split_persons(labels, 0.6, 0.2, 0.2, 3, groups)
    assert sorted(sum(splits.values(), [])) == sorted(labels)
    for i in range(0, 40, 2):
        side = [name for name, persons in splits.items() if f"p{i:02d}" in persons]
        other = [name for name, persons in splits.items() if f"p{i + 1:02d}" in persons]
        assert side == other, f"patient {i // 2} split over {side} and {other}"
    assert any("whole groups" in n for n in notes) and len(splits["test"]) == 8


# ---------------------------------------------------------------------------------------------
# The CV directory
# ---------------------------------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cv_directory_holds_each_person_once_out_of_fold_and_pooled_metrics(cv_run):
    cv_dir, root, _ = cv_run
    plan = json.loads((cv_dir / "splits.json").read_text())
    assert not (cv_dir / "models").exists(), "a CV folder's models are in its folds"
    for k in (1, 2):
        fold = cv_dir / f"fold_{k}"
        for name in ("config.yaml", "splits.json", "models/best_model.pth", "eval_test_best/metrics.json"):
            assert (fold / name).is_file(), f"fold_{k}/{name}"
        assert json.loads((fold / "splits.json").read_text())["test"] == plan["folds"][k - 1]["held_out"]
    oof = read_csv(cv_dir / "oof_person_predictions.csv")
    assert sorted(r["person_id"] for r in oof) == sorted(p for f in plan["folds"] for p in f["held_out"])
    assert not {r["person_id"] for r in oof} & set(plan["test"]), "no test person out of fold"
    for row in oof:
        assert row["person_id"] in plan["folds"][int(row["fold"]) - 1]["held_out"], "the fold that held it out"

    metrics = json.loads((cv_dir / "cv_metrics.json").read_text())
    y = [r["true_label"] == "plaque" for r in oof]
    auc = roc_auc_score(y, [float(r["prob_plaque"]) for r in oof])
    assert metrics["out_of_fold"]["person"]["auc"] == pytest.approx(auc, abs=1e-5)
    interval = metrics["out_of_fold"]["ci"]["person"]["auc"]
    assert interval["low"] <= auc <= interval["high"]
    called = [r["predicted_label"] == "plaque" for r in oof]  # each fold's own threshold
    sensitivity = sum(c and t for c, t in zip(called, y)) / sum(y)
    assert metrics["out_of_fold"]["person"]["sensitivity"] == pytest.approx(sensitivity)
    folds = [json.loads((cv_dir / f"fold_{k}/eval_test_best/metrics.json").read_text()) for k in (1, 2)]
    aucs = [f["person"]["auc"] for f in folds]
    assert metrics["fold_mean_sd"]["person"]["auc"]["mean"] == pytest.approx(np.mean(aucs))
    assert metrics["fold_mean_sd"]["person"]["auc"]["sd"] == pytest.approx(np.std(aucs, ddof=1))
    # Every warning of the CV's start-up block (cv.log up to the first fold) is in its data_report.json.
    startup = (cv_dir / "cv.log").read_text(encoding="utf-8").split("fold 1/2: training")[0]
    said = {line.split(" warning: ", 1)[1] for line in startup.splitlines() if " warning: " in line}
    assert any("look like images but are not read" in w for w in said)
    assert said <= set(json.loads((cv_dir / "data_report.json").read_text())["warnings"])


def test_each_fold_has_its_own_tracker_records(cv_run):
    """A fold's tracker is closed before the next fold starts its own (Accelerate keeps every tracker it was
    given): each fold's TensorBoard files hold that fold's epochs, once."""
    cv_dir, _, _ = cv_run
    for k in (1, 2):
        assert tensorboard_scalars(cv_dir / f"fold_{k}", "val_loss") == [1, 2], f"fold_{k}"


def test_test_ensemble_is_the_mean_of_the_fold_models(cv_run, tmp_path):
    cv_dir, root, _ = cv_run
    test = set(json.loads((cv_dir / "splits.json").read_text())["test"])
    ensemble = read_csv(cv_dir / "eval_test_ensemble" / "predictions.csv")
    assert {r["person_id"] for r in ensemble} == test
    per_model = []
    for k in (1, 2):
        out = tmp_path / f"fold{k}.csv"
        model = str(cv_dir / f"fold_{k}" / "models" / "best_model.pth")
        assert run_module("carotid.predict", "--model", model, "--input", str(root), "--out", str(out)).returncode == 0
        per_model.append({r["path"]: float(r["prob_plaque"]) for r in read_csv(out)})
    for row in ensemble:
        path = next(p for p in per_model[0] if Path(p).resolve() == Path(row["path"]).resolve())
        assert float(row["prob_plaque"]) == pytest.approx((per_model[0][path] + per_model[1][path]) / 2, abs=2e-6)
    thresholds = [
        json.loads((cv_dir / f"fold_{k}/eval_test_best/metrics.json").read_text())["threshold"] for k in (1, 2)
    ]
    report = json.loads((cv_dir / "eval_test_ensemble" / "metrics.json").read_text())
    assert report["threshold"] == pytest.approx(np.mean(thresholds))


def test_group_column_keeps_groups_together_in_plain_split_and_is_checked(tmp_path, capsys):
    root = tmp_path / "frames"
    make_demo_data(root, persons=16, frames=2, size=32, seed=2)
    rows = [["id", "label", "patient"]]
    persons = sorted(p.name for p in root.iterdir() if p.is_dir())
    from carotid.data.sheet.labels import read_labels

    demo = read_labels(root / "label.xlsx").labels
    rows += [[p, demo[p], f"pt{i // 2}"] for i, p in enumerate(persons)]
    label = write_xlsx(tmp_path / "groups.xlsx", rows)
    common = ["--root-dir", str(root), "--label-excel", str(label), *FAST, "--epochs", "1", "--no-test"]
    assert train_in_process(*common, "--output-dir", str(tmp_path / "o"), "--group-column", "patient") == 0
    splits = json.loads(next((tmp_path / "o").glob("train_*/splits.json")).read_text())
    split_of = {p: name for name, ps in splits.items() for p in ps}
    assert len(split_of) == len(persons)
    for i in range(0, len(persons), 2):
        assert split_of[persons[i]] == split_of[persons[i + 1]], f"pt{i // 2} split"
    assert "groups from column 'patient': 8 group(s) for 16 persons" in capsys.readouterr().out

    assert train_in_process(*common, "--output-dir", str(tmp_path / "x"), "--group-column", "site") == 2
    assert "error: --group-column 'site' is not a column header" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").glob("train_*"))


# ---------------------------------------------------------------------------------------------
# Processes and resume
# ---------------------------------------------------------------------------------------------


def oof_probabilities(cv_dir: Path) -> dict[str, tuple[str, float]]:
    return {
        r["person_id"]: (r["fold"], float(r["prob_plaque"])) for r in read_csv(cv_dir / "oof_person_predictions.csv")
    }


@pytest.mark.slow
def test_two_process_cv_equals_the_one_process_cv(cv_run, tmp_path):
    cv_dir, root, label = cv_run
    # 2 processes x 4 frames take the same 8-frame optimizer steps as 1 process x 8 (GroupNorm, no augmentation).
    args = cv_args(root, label, tmp_path, "--epochs", "2", "--batch-size", "4")
    result = run_module("carotid.train", *args, nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "processes: 2" in result.stdout
    two = only_cv_dir(tmp_path)
    assert (two / "splits.json").read_bytes() == (cv_dir / "splits.json").read_bytes()
    ours, theirs = oof_probabilities(two), oof_probabilities(cv_dir)
    assert ours.keys() == theirs.keys() and all(ours[p][0] == theirs[p][0] for p in ours)
    assert [ours[p][1] for p in sorted(ours)] == pytest.approx([theirs[p][1] for p in sorted(ours)], abs=1e-4)


@pytest.mark.slow
def test_killed_cv_run_resumes_in_the_unfinished_fold_and_ends_as_the_uninterrupted_one(cv_run, tmp_path):
    cv_dir, root, label = cv_run
    args = cv_args(root, label, tmp_path, "--epochs", "2", "--checkpoint-every-steps", "1")
    job = subprocess.Popen(
        module_command("carotid.train", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        start_new_session=True,
    )
    try:
        import time

        deadline = time.time() + 240
        while not list(tmp_path.glob("cv_*/fold_2/checkpoints/checkpoint-00000001")):
            assert job.poll() is None and time.time() < deadline, job.communicate()[0][-3000:]
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait()
    killed = only_cv_dir(tmp_path)
    assert not (killed / "cv_metrics.json").exists()
    fold_1_log = (killed / "fold_1" / "train.log").read_text()
    resumed = run_module("carotid.train", "--resume", str(killed / "fold_2"))  # a fold's folder means its CV
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "fold 1/2: finished before, kept" in resumed.stdout and "resumed from checkpoint-" in resumed.stdout
    assert (killed / "fold_1" / "train.log").read_text() == fold_1_log, "fold 1 was not trained again"
    # Probabilities are written with every digit; the uninterrupted run trained in this process with its own thread
    # count, so they agree to float32's precision (what the CSV's former 6 significant digits compared), not bitwise.
    ours, theirs = read_csv(killed / "oof_person_predictions.csv"), read_csv(cv_dir / "oof_person_predictions.csv")
    numbers = ("prob_normal", "prob_plaque")
    assert [{k: v for k, v in r.items() if k not in numbers} for r in ours] == [
        {k: v for k, v in r.items() if k not in numbers} for r in theirs
    ]
    for mine, reference in zip(ours, theirs):
        assert [float(mine[k]) for k in numbers] == pytest.approx([float(reference[k]) for k in numbers], rel=1e-6)


def relabel(label: Path, names: dict[str, str]) -> Path:
    """The demo sheet with its classes renamed (plaque → names['plaque'], normal → names['normal'])."""
    book = openpyxl.load_workbook(label)
    for row in book.active.iter_rows(min_row=2):
        row[1].value = names[row[1].value]
    book.save(label)
    return label


@pytest.mark.parametrize("positive, negative", [("斑块", "正常"), ("心脏", "非心脏")])
def test_cv_headline_uses_the_positive_class_the_folds_trained_with(tmp_path, positive, negative):
    # 斑块 sorts before 正常 and 心脏 before 非心脏: the last class in sorted order is the negative one.
    root, label = cv_data(tmp_path / "frames")
    relabel(label, {"plaque": positive, "normal": negative})
    assert train_in_process(*cv_args(root, label, tmp_path / "out", "--epochs", "1")) == 0
    cv_dir = only_cv_dir(tmp_path / "out")
    metrics = json.loads((cv_dir / "cv_metrics.json").read_text(encoding="utf-8"))
    assert metrics["positive_class"] == positive
    for k in (1, 2):
        fold = json.loads((cv_dir / f"fold_{k}/eval_test_best/metrics.json").read_text(encoding="utf-8"))
        assert fold["positive_class"] == positive
    oof = read_csv(cv_dir / "oof_person_predictions.csv")
    truth = np.array([r["true_label"] == positive for r in oof])
    called = np.array([r["predicted_label"] == positive for r in oof])  # each at its own fold's threshold
    headline = metrics["out_of_fold"]["person"]
    assert headline["sensitivity"] == pytest.approx((called & truth).sum() / truth.sum())
    assert headline["specificity"] == pytest.approx((~called & ~truth).sum() / (~truth).sum())
    assert headline["accuracy"] == pytest.approx((called == truth).mean())
    assert headline["auc"] == pytest.approx(roc_auc_score(truth, [float(r[f"prob_{positive}"]) for r in oof]), abs=1e-5)
    page = (cv_dir / "report.html").read_text(encoding="utf-8")
    assert f"positive class {positive}" in page and f"positive class {negative}" not in page
