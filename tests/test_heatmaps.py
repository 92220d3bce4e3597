"""Grad-CAM heat maps for every architecture and channel count, the choice of decisive frames, the failure
gallery's order, and `evaluate --heatmaps` on one and two processes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from carotid.model import ARCHITECTURES
from carotid.model.file import ModelFile
from carotid.model.gradcam import TARGET_LAYERS
from carotid.model.person import PersonModel
from carotid.model.registry import build_model
from carotid.report.gallery import most_wrong
from carotid.report.heatmaps import (
    GradCamRenderer,
    PersonFrames,
    decisive_frames,
    explained_class,
    file_name,
    group_persons,
    write_montage,
)
from tests.conftest import read_json, run_module


def model_file_of(arch: str, channels: int, size: int) -> ModelFile:
    torch.manual_seed(0)
    model = build_model(arch, 2, channels)
    norm = {"mean": [0.449] * channels, "std": [0.226] * channels}
    return ModelFile(model.state_dict(), arch, ["normal", "plaque"], channels, size, norm, positive_index=1)


def test_every_architecture_has_a_grad_cam_layer():
    assert set(TARGET_LAYERS) == set(ARCHITECTURES)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grad_cam_works_for_every_architecture_and_channel_count(arch, channels, data_dir):
    root, _ = data_dir
    frames = [(str(p), 0) for p in sorted(root.rglob("*.png"))[:3]]
    size = 64 if arch in ("resnet50", "densenet121", "convnext_tiny") else 32  # deep stages need some pixels
    renderer = GradCamRenderer(model_file_of(arch, channels, size))
    try:
        pixels, maps = renderer.maps(frames, target=1)
    finally:
        renderer.close()
    assert pixels.shape == (3, channels, size, size) and pixels.dtype == np.uint8
    assert maps.shape == (3, size, size) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6


def person(pid: str, true: int | None, predicted: int, frame_p: list[float]) -> PersonFrames:
    p = np.array(frame_p)
    probs = np.stack([1 - p, p], axis=1)
    return PersonFrames(pid, np.arange(len(p)), probs, probs.mean(axis=0), predicted, true)


def test_decisive_frames_are_those_of_highest_p_positive_whatever_the_call():
    caught = person("a", 1, 1, [0.2, 0.9, 0.6, 0.95])
    missed = person("b", 1, 0, [0.2, 0.9, 0.1, 0.3])
    assert explained_class(caught, positive=1, binary=True) == 1
    assert decisive_frames(caught, 1, 2).tolist() == [3, 1]  # highest P(plaque) first
    assert explained_class(missed, positive=1, binary=True) == 1  # one class in every binary montage
    assert decisive_frames(missed, 1, 2).tolist() == [1, 3]  # the frames that came closest to plaque


def test_a_negative_persons_montage_is_in_the_positive_class_too_and_a_multiclass_one_in_its_call():
    normal = person("c", 0, 0, [0.1, 0.4, 0.05, 0.2])
    assert explained_class(normal, positive=1, binary=True) == 1
    assert decisive_frames(normal, 1, 2).tolist() == [1, 3]
    assert explained_class(normal, positive=1, binary=False) == 0  # multi-class: the class it was called


def test_a_person_models_montage_shows_the_frames_of_highest_attention_first():
    # Two persons whose frame rows interleave; the person model's probability is repeated on each frame.
    frame_ids = np.array(["b", "a", "a", "b", "a", "a"])
    attention = np.array([0.7, 0.1, 0.5, 0.3, 0.15, 0.25])
    person_probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    grouped = group_persons(frame_ids, person_probs[[1, 0, 0, 1, 0, 0]], np.array(["a", "b"]), person_probs,
                            np.array([1, 0]), np.array([1, 0]), attention)  # fmt: skip
    a, b = grouped
    assert a.attention.tolist() == [0.1, 0.5, 0.15, 0.25] and b.attention.tolist() == [0.7, 0.3]
    for target in (0, 1):  # whichever class is explained: the frames the pooling rests on
        assert decisive_frames(a, target, 3).tolist() == [1, 3, 2]
    assert decisive_frames(b, 1, 5).tolist() == [0, 1]


def test_grad_cam_of_a_person_model_explains_each_frame_on_its_own(data_dir):
    root, _ = data_dir
    torch.manual_seed(0)
    model = PersonModel("small_cnn", 2, 1)
    norm = {"mean": [0.449], "std": [0.226]}
    model_file = ModelFile(
        model.state_dict(), "small_cnn", ["normal", "plaque"], 1, 32, norm, 1, person_model="attention"
    )
    frames = [(str(p), 0) for p in sorted(root.rglob("*.png"))[:3]]
    renderer = GradCamRenderer(model_file)
    try:
        pixels, maps = renderer.maps(frames, target=1)
        _, alone = renderer.maps(frames[1:2], target=1)
    finally:
        renderer.close()
    assert pixels.shape == (3, 1, 32, 32) and maps.shape == (3, 32, 32) and np.isfinite(maps).all()
    np.testing.assert_allclose(alone[0], maps[1], atol=1e-5)  # not a function of the frames beside it


def test_failure_gallery_lists_false_negatives_first_then_the_most_confidently_wrong():
    persons = [
        person("fp_mild", 0, 1, [0.55]),
        person("fn_mild", 1, 0, [0.45]),
        person("ok", 1, 1, [0.9]),
        person("fp_bad", 0, 1, [0.99]),
        person("fn_bad", 1, 0, [0.02]),
    ]
    worst = most_wrong(persons, positive=1, binary=True, threshold=0.5, k=10)
    assert [p.person_id for p in worst] == ["fn_bad", "fn_mild", "fp_bad", "fp_mild"]
    assert [p.person_id for p in most_wrong(persons, 1, True, 0.5, k=1)] == ["fn_bad"]


def test_file_names_are_safe_and_unique():
    taken: set[str] = set()
    names = [file_name(p, taken) for p in ("患者/01", "患者 01", "..", "A", "a")]
    assert names == ["患者_01", "患者_01_2", "person", "A", "a_2"]


def rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("nproc", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_evaluate_heatmaps_write_one_montage_per_person_and_the_gallery(nproc, trained_run, tmp_path):
    out = tmp_path / f"eval{nproc}"
    args = ["--run-dir", str(trained_run), "--out", str(out), "--heatmaps", "2", "--num-workers", "0"]
    result = run_module("carotid.evaluate", *args, "--bootstrap", "20", nproc=nproc, launcher=nproc > 1)
    assert result.returncode == 0, result.stderr[-3000:]
    persons = rows(out / "person_predictions.csv")
    montages = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert montages == sorted(f"{r['person_id']}.png" for r in persons)  # once each, no temp files left
    failures = rows(out / "failures.csv")
    wrong = [r for r in persons if r["true_label"] != r["predicted_label"]]
    assert len(failures) == min(len(wrong), 8)
    assert [r["kind"] for r in failures] == sorted(r["kind"] for r in failures)  # "false negative" < "positive"
    for row in failures:
        assert (out / row["strip"]).is_file() and (out / row["montage"]).is_file()
    assert read_json(out / "metrics.json")["n_persons"] == len(persons)
    assert (out / "report.html").is_file()


def _montage_texts(renderer, who: PersonFrames, frames, tmp_path, monkeypatch) -> tuple[list[str], str]:
    """(each panel's caption, the title) of the montage write_montage draws; the figure is captured, not saved."""
    from carotid.report import heatmaps

    figures = []
    monkeypatch.setattr(heatmaps, "save_figure", lambda fig, path, **_: figures.append(fig))
    names = renderer.model_file.class_names
    write_montage(
        renderer, who, frames, tmp_path / "m.png", n_frames=2, class_names=names, positive=1, threshold=0.5,
        aggregation="mean",
    )  # fmt: skip
    (fig,) = figures
    return [ax.get_title() for ax in fig.axes], fig._suptitle.get_text()


def _tiff(path: Path, pages: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)) for _ in range(pages)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def test_a_montage_speaks_of_the_positive_class_and_names_frames_by_file_from_1(trained_run, tmp_path, monkeypatch):
    model_file = ModelFile.load(trained_run / "models" / "best_model.pth")
    negative, positive = model_file.class_names
    clip = _tiff(tmp_path / "clip.tif")
    renderer = GradCamRenderer(model_file)
    try:  # a person called negative, its frames 1 and 3 of a 3-page TIFF (numbers 0 and 2 in the CSVs)
        captions, title = _montage_texts(
            renderer, person("n", 0, 0, [0.3, 0.1]), [(str(clip), 0), (str(clip), 2)], tmp_path, monkeypatch
        )
    finally:
        renderer.close()
    assert [c.splitlines()[0] for c in captions] == ["clip.tif frame 1", "clip.tif frame 3"]
    assert [c.splitlines()[1] for c in captions] == [f"P({positive}) 0.300", f"P({positive}) 0.100"]
    assert f"person P({positive}) 0.200" in title and f"raised P({positive})" in title
    assert f"P({negative})" not in title + "".join(captions)


def test_a_blank_grad_cam_is_labelled_blank(data_dir, tmp_path, monkeypatch):
    from carotid.report.heatmaps import blank_map

    model_file = model_file_of("small_cnn", 1, 32)
    model_file.state_dict["classifier.weight"].zero_()  # no pixel moves any logit: every map is constant
    frames = [(str(p), 0) for p in sorted(data_dir[0].rglob("*.png"))[:2]]
    renderer = GradCamRenderer(model_file)
    try:
        _, maps = renderer.maps(frames, 1)
        captions, _ = _montage_texts(renderer, person("p", 1, 1, [0.6, 0.7]), frames, tmp_path, monkeypatch)
    finally:
        renderer.close()
    assert all(blank_map(m) for m in maps)
    assert all(c.endswith("Grad-CAM blank (constant map)") for c in captions)
    assert not blank_map(np.linspace(0, 1, 16).reshape(4, 4))
