"""Demo data dealt to federated sites (`carotid.demo --sites N --site-mix noniid|iid`): each site a folder with a
label sheet of its own headers, read by the same code as carotid.train; a held-out test set common to all."""

from __future__ import annotations

import numpy as np
from PIL import Image

from carotid import demo as demo_cli
from carotid.core.files import read_records
from carotid.data.sheet.labels import read_labels
from carotid.training.config import TrainConfig
from carotid.training.fit import read_data

ARGS = ["--frames", "2", "--size", "32"]


def read_folder(folder):
    """(sheet as read by carotid.train's rules, manifest as carotid.train builds it) of one site's folder."""
    table = read_labels(folder / "label.xlsx")
    manifest, _, _, _ = read_data(TrainConfig(root_dir=str(folder), label_excel=str(folder / "label.xlsx")))
    return table, manifest


def mean_pixel(folder) -> float:
    return float(np.mean([np.asarray(Image.open(p), dtype=np.float64).mean() for p in folder.rglob("*.png")]))


def test_noniid_sites_differ_in_labels_size_scanner_and_headers_and_the_test_set_is_shared(tmp_path, capsys):
    out = tmp_path / "fed"
    assert demo_cli.main(["--out", str(out), "--sites", "3", "--persons", "60", "--test-persons", "12", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "site_1  mostly plaque" in printed and "test    held out" in printed

    tables, manifests = {}, {}
    for name in ("site_1", "site_2", "site_3", "test"):
        tables[name], manifests[name] = read_folder(out / name)
        # Every sheet row has its folder with its frames: nothing left out by matching.
        assert sorted(manifests[name].person_labels) == sorted(tables[name].labels)
        assert all(len(frames) == 2 for frames in manifests[name].frames.values())
    counts = {name: [list(t.labels.values()).count(c) for c in ("normal", "plaque")] for name, t in tables.items()}
    assert counts == {"site_1": [5, 20], "site_2": [20, 5], "site_3": [5, 5], "test": [6, 6]}
    # The sheets' headers differ per site; the classes agree, so the sites can train one model.
    assert [(t.id_column, t.label_column) for t in tables.values()] == [
        ("患者编号", "诊断"),
        ("Patient ID", "Diagnosis"),
        ("Case No.", "Class"),
        ("患者编号", "诊断"),
    ]
    assert all(t.class_names == ["normal", "plaque"] for t in tables.values())
    ids = [set(t.labels) for t in tables.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 72  # no person in two folders
    # Each site's own scanner: the darker 0.85 gain at site 2, the brighter 1.15 at site 3.
    brightness = {name: mean_pixel(out / name) for name in ("site_1", "site_2", "site_3")}
    assert brightness["site_2"] < brightness["site_1"] < brightness["site_3"]
    rows = {r["folder"]: r for r in read_records(out / "sites.csv")}
    assert rows["site_2"]["persons"] == "25" and rows["site_3"]["frames"] == "20" and rows["test"]["gain"] == "mixed"


def test_iid_sites_are_alike_and_two_runs_with_one_seed_write_the_same_frames(tmp_path):
    for run in ("a", "b"):
        assert demo_cli.main(["--out", str(tmp_path / run), "--sites", "2", "--site-mix", "iid", *ARGS]) == 0
    tables = [read_labels(tmp_path / "a" / name / "label.xlsx") for name in ("site_1", "site_2")]
    assert [sorted(t.labels.values()).count("plaque") for t in tables] == [15, 15]
    assert [len(t.labels) for t in tables] == [30, 30]
    a, b = (sorted((tmp_path / run).rglob("*.png")) for run in ("a", "b"))
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b))


def test_mistakes_are_one_error_line_and_nothing_is_written_or_overwritten(tmp_path, capsys):
    out = tmp_path / "fed"
    assert demo_cli.main(["--out", str(out), "--sites", "3", "--persons", "20", *ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --persons 20 is too few for 3 noniid sites: site_1 (mostly plaque)") and "—" in err
    assert not out.exists()
    assert demo_cli.main(["--out", str(out), "--test-persons", "8", *ARGS]) == 2
    assert "error: --test-persons needs --sites" in capsys.readouterr().err

    assert demo_cli.main(["--out", str(out), "--sites", "2", "--site-mix", "iid", *ARGS]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert demo_cli.main(["--out", str(out), "--sites", "2", "--site-mix", "iid", *ARGS]) == 2
    assert f"error: {out} already holds site_1, site_2, test" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
