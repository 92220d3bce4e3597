"""carotid-predict on unlabelled folders: persons root, one person's folder, unreadable images, errors."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from carotid import predict
from tests.conftest import load_model

QUICK = ["--num-workers", "0", "--batch-size", "8"]


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def model_of(run: Path) -> str:
    return str(run / "models" / "best_model.pth")


def test_predict_a_folder_of_persons(trained_run, data_dir, tmp_path, capsys):
    root, _ = data_dir
    out = tmp_path / "new" / "preds.csv"
    assert predict.main(["--model", model_of(trained_run), "--input", str(root), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    frames, persons = rows(out), rows(tmp_path / "new" / "preds_persons.csv")
    assert len(frames) == 48 and len(persons) == 12
    header = ["path", "frame", "person_id", "prob_normal", "prob_plaque", "predicted_label", "attention"]
    assert list(frames[0]) == header and all(r["attention"] == "" for r in frames)  # a frame model: no attention
    assert list(persons[0]) == ["person_id", "n_frames", "prob_normal", "prob_plaque", "predicted_label"]
    assert all(r["n_frames"] == "4" for r in persons)
    assert all(Path(r["path"]).relative_to(root).parts[0] == r["person_id"] for r in frames)
    assert "layout: persons" in printed and "P(plaque)" in printed
    assert all(r["person_id"] in printed for r in persons)
    threshold = load_model(trained_run / "models" / "best_model.pth")["threshold"]
    assert f"threshold {threshold:.3f}" in printed
    for row in persons + frames:
        p = float(row["prob_plaque"])
        if (
            abs(p - threshold) > 1e-6
        ):  # the CSV rounds to 6 decimals; the threshold is a validation person's probability
            assert row["predicted_label"] == ("plaque" if p >= threshold else "normal")


def test_predict_one_persons_folder(trained_run, data_dir, tmp_path, capsys, monkeypatch):
    root, _ = data_dir
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    monkeypatch.chdir(tmp_path)  # the default output goes to the working directory
    assert (
        predict.main(["--model", model_of(trained_run), "--input", str(person), "--person-aggregation", "max", *QUICK])
        == 0
    )
    frames, persons = (
        rows(tmp_path / f"predictions_{person.name}.csv"),
        rows(tmp_path / f"predictions_{person.name}_persons.csv"),
    )
    assert len(frames) == 4 and [r["person_id"] for r in persons] == [person.name]
    assert float(persons[0]["prob_plaque"]) == pytest.approx(max(float(r["prob_plaque"]) for r in frames), abs=1e-6)
    assert "layout: person" in capsys.readouterr().out


def test_layout_person_forces_one_person(trained_run, data_dir, tmp_path):
    root, _ = data_dir
    out = tmp_path / "all.csv"
    argv = ["--model", model_of(trained_run), "--input", str(root), "--layout", "person", "--out", str(out), *QUICK]
    assert predict.main(argv) == 0
    assert [r["person_id"] for r in rows(tmp_path / "all_persons.csv")] == [root.name]
    assert len(rows(out)) == 48


def test_unreadable_images_are_reported_and_skipped(trained_run, data_dir, tmp_path, capsys):
    root, _ = data_dir
    person = sorted(p for p in root.iterdir() if p.is_dir())[0]
    folder = tmp_path / person.name
    shutil.copytree(person, folder)
    (folder / "broken.png").write_bytes(b"not an image at all")
    good = sorted(folder.glob("*.png"))[0].read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])  # valid header, pixels cut off
    out = tmp_path / "p.csv"
    assert predict.main(["--model", model_of(trained_run), "--input", str(folder), "--out", str(out), *QUICK]) == 0
    printed = capsys.readouterr().out
    assert "2 unreadable images skipped" in printed
    names = {Path(r["path"]).name for r in rows(out)}
    assert len(names) == 4 and not names & {"broken.png", "truncated.png"}
    assert {Path(r["path"]).name for r in rows(tmp_path / "p_unreadable.csv")} == {"broken.png", "truncated.png"}


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing input", "input folder not found"),
        ("no images", "no images"),
        ("missing model", "model file not found"),
    ],
)
def test_user_errors_exit_2(case, fragment, trained_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "1001").mkdir(parents=True)
    model = str(tmp_path / "nope.pth") if case == "missing model" else model_of(trained_run)
    source = str(tmp_path / "nope") if case == "missing input" else str(empty)
    out = tmp_path / "out.csv"
    assert predict.main(["--model", model, "--input", source, "--out", str(out), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and fragment in err
    assert not out.exists()
