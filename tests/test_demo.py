"""The synthetic demo data with sparse findings: a plaque person's plaque shows in --finding-frames of their frames.

Checked without a model: the plaque's own mask (carotid.data.demo.plaque_mask) says where it lies, so the pixels
there tell whether a frame shows it, and a plaque person's other frames are compared with normal persons' frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import ks_2samp

from carotid import demo as demo_cli
from carotid import train as train_cli
from carotid.core.files import read_records
from carotid.data.demo import make_demo_data, make_persons, plaque_mask
from carotid.training.config import TrainConfig
from carotid.training.fit import read_data

SIZE = 64


def frames_by_person(root: Path) -> dict[str, list[dict]]:
    persons: dict[str, list[dict]] = {}
    for row in read_records(root / "findings.csv"):
        persons.setdefault(row["person_id"], []).append(row)
    return persons


def plaque_contrast(root: Path, person: dict, row: dict, count: int) -> float:
    """Mean pixel inside where the person's plaque lies (or would lie) over the frame's mean pixel."""
    pixels = np.asarray(Image.open(root / row["path"]), dtype=np.float64)
    k = int(Path(row["path"]).stem.split("_")[1])
    mask = plaque_mask(person, k / count, SIZE, SIZE * 3 // 4)
    return float(pixels[mask].mean() / pixels.mean())


def test_sparse_findings_show_in_n_consecutive_frames_and_the_other_frames_look_normal(tmp_path):
    root = tmp_path / "sparse"
    make_demo_data(root, persons=40, frames=10, size=SIZE, seed=3, finding_frames=2, min_frames=6)
    persons = {str(p["id"]): p for p in make_persons(40, np.random.default_rng(3))}
    shown, hidden, normal = [], [], []
    for person_id, rows in frames_by_person(root).items():
        person, flags = persons[person_id], [int(row["finding"]) for row in rows]
        assert 6 <= len(rows) <= 10 and all((root / row["path"]).is_file() for row in rows)
        assert len(list((root / person_id).rglob("*.png"))) == len(rows)
        if not person["plaque"]:
            assert sum(flags) == 0
        else:  # exactly two, next to each other
            assert sum(flags) == 2 and flags.index(1) + 1 == len(flags) - 1 - flags[::-1].index(1)
        contrasts = [plaque_contrast(root, person, row, len(rows)) for row in rows]
        if person["plaque"]:
            shown.append(np.mean([c for c, f in zip(contrasts, flags, strict=True) if f]))
            hidden.append(np.mean([c for c, f in zip(contrasts, flags, strict=True) if not f]))
        else:
            normal.append(np.mean(contrasts))
    # Per person (frames of one person share their geometry): a shown plaque lifts the brightness where it lies far
    # beyond the spread between persons; the frames without it are like a normal person's frames.
    assert np.mean(shown) - np.mean(normal) > 3 * np.std(normal) and min(shown) > np.median(normal)
    assert abs(np.mean(hidden) - np.mean(normal)) < 0.5 * np.std(normal)
    assert ks_2samp(hidden, normal).pvalue > 0.1


def test_sparse_data_differ_from_the_full_data_only_where_the_plaque_is_hidden(tmp_path):
    make_demo_data(tmp_path / "full", persons=8, frames=6, size=SIZE, seed=4)
    make_demo_data(tmp_path / "all", persons=8, frames=6, size=SIZE, seed=4, finding_frames=6)
    make_demo_data(tmp_path / "sparse", persons=8, frames=6, size=SIZE, seed=4, finding_frames=1)
    persons = {str(p["id"]): p for p in make_persons(8, np.random.default_rng(4))}
    for person_id, rows in frames_by_person(tmp_path / "sparse").items():
        for k, row in enumerate(rows):
            full, every, sparse = (
                np.asarray(Image.open(tmp_path / name / row["path"])) for name in ("full", "all", "sparse")
            )
            assert np.array_equal(full, every)  # --finding-frames equal to the frame count is today's data
            hidden = persons[person_id]["plaque"] and row["finding"] == "0"
            mask = plaque_mask(persons[person_id], k / 6, SIZE, SIZE * 3 // 4)
            assert np.array_equal(full[~mask], sparse[~mask])
            assert np.array_equal(full[mask], sparse[mask]) != hidden
            if hidden:
                assert sparse[mask].mean() < full[mask].mean()


def test_demo_cli_writes_sparse_data_and_refuses_more_findings_than_frames(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["--out", str(out), "--persons", "6", "--frames", "4", "--size", "32", "--finding-frames", "5"]
    assert demo_cli.main(argv) == 2
    assert "error: --finding-frames must be between 1 and the frames per person (4)" in capsys.readouterr().err
    assert not out.exists()
    assert demo_cli.main([*argv[:-1], "1"]) == 0
    assert "(the plaque in 1 frame of each plaque person)" in capsys.readouterr().out
    flags = [int(row["finding"]) for row in frames_by_person(out)["1002"]]
    assert flags.count(1) == 1 and len(flags) == 4


def test_train_refuses_finding_frames_without_demo(tmp_path, capsys):
    assert train_cli.main(["--finding-frames", "2", "--output-dir", str(tmp_path)]) == 2
    assert "error: --finding-frames 2 needs --demo" in capsys.readouterr().err


def test_train_demo_makes_sparse_data_in_a_folder_of_its_own(tmp_path):
    cfg = TrainConfig(demo=True, finding_frames=2, output_dir=str(tmp_path))
    manifest, table, root_dir, _ = read_data(cfg)
    assert Path(root_dir) == (tmp_path / "demo_data_finding2").resolve() and not (tmp_path / "demo_data").exists()
    plaque = [p for p, label in table.labels.items() if label == "plaque"]
    rows = frames_by_person(Path(root_dir))
    assert plaque and all(sum(int(r["finding"]) for r in rows[p]) == 2 for p in plaque)
    assert {p: len(f) for p, f in manifest.frames.items()} == {p: len(r) for p, r in rows.items()}
