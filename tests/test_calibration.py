"""Calibration numbers against hand-made arrays, temperature scaling on an over-confident model, the model
file's temperature, and `--calibrate temperature` end to end (train → evaluate → predict)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from carotid import evaluate, predict
from carotid.core.errors import UserError
from carotid.data.frames.transforms import NORMALIZATION
from carotid.evaluation.calibration import (
    apply_temperature,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    logistic_recalibration,
    mean_nll,
    reliability_bins,
)
from carotid.model.file import ModelFile
from carotid.model.registry import build_model
from tests.conftest import FAST, load_model, only_run_dir, read_json, train_in_process

NAMES = ["normal", "plaque"]


def test_brier_and_ece_of_hand_made_arrays():
    y = np.array([0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.1, 0.9, 0.9, 0.0, 1.0])  # 0.0 falls in the first bin, 1.0 in the last
    probs = np.stack([1 - p, p], 1)
    out, notes = calibration_metrics(y, probs, NAMES, 1)
    # Brier: mean squared error of P(plaque) against 0/1.
    assert out["brier"] == pytest.approx((0.01 + 0.81 + 0.01 + 0.01 + 0.0 + 0.0) / 6)
    # Bins: [0, 0.1) holds 0.0 (negative); [0.1, 0.2) two at 0.1, one positive; [0.9, 1] 0.9, 0.9, 1.0, all positive.
    by_low = {round(b["low"], 1): b for b in out["reliability"] if b["n"]}
    assert {k: b["n"] for k, b in by_low.items()} == {0.0: 1, 0.1: 2, 0.9: 3}
    assert by_low[0.1]["observed"] == 0.5 and by_low[0.9]["mean_predicted"] == pytest.approx(2.8 / 3)
    expected_ece = (1 * 0.0 + 2 * abs(0.5 - 0.1) + 3 * abs(1.0 - 2.8 / 3)) / 6
    assert out["ece"] == pytest.approx(expected_ece)
    assert len(out["reliability"]) == 10 and sum(b["n"] for b in out["reliability"]) == 6


def test_ece_is_zero_when_every_bin_matches_its_rate():
    p = np.repeat([0.25, 0.75], 4)
    hit = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    assert expected_calibration_error(reliability_bins(hit, p)) == pytest.approx(0.0)


def test_multiclass_brier_and_top_label_ece():
    y = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2]])
    out, _ = calibration_metrics(y, probs, ["a", "b", "c"], 2)
    onehot = np.eye(3)[y]
    assert out["brier"] == pytest.approx(((probs - onehot) ** 2).sum(axis=1).mean())
    # Top-label: confidences 0.8, 0.7, 0.8, 0.6 with hits 1, 1, 1, 0.
    assert out["ece"] == pytest.approx((abs(1 - 0.7) + 2 * abs(1 - 0.8) + abs(0 - 0.6)) / 4)
    assert "calibration_slope" not in out


def test_recalibration_slope_and_intercept_recover_a_known_miscalibration():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.98, 20_000)
    y = rng.random(len(p)) < expit(0.5 + 0.6 * logit(p))  # true intercept 0.5, slope 0.6
    out, notes = logistic_recalibration(y, p)
    assert notes == []
    assert out["calibration_slope"] == pytest.approx(0.6, abs=0.05)
    assert out["calibration_intercept"] == pytest.approx(0.5, abs=0.05)
    # The same fit by scikit-learn without penalty.
    reference = LogisticRegression(C=np.inf).fit(logit(p)[:, None], y)
    assert out["calibration_slope"] == pytest.approx(reference.coef_[0, 0], abs=1e-4)
    assert out["calibration_intercept"] == pytest.approx(reference.intercept_[0], abs=1e-4)
    calibrated, _ = logistic_recalibration(rng.random(len(p)) < p, p)
    assert calibrated["calibration_slope"] == pytest.approx(1.0, abs=0.06)
    assert calibrated["calibration_in_the_large"] == pytest.approx(0.0, abs=0.05)


def test_perfect_separation_leaves_the_slope_undefined_with_a_note():
    out, notes = logistic_recalibration(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert out["calibration_slope"] is None and "separate the classes perfectly" in notes[0]
    assert out["calibration_in_the_large"] is not None


def test_saturated_probabilities_give_no_slope_or_intercepts_rather_than_clipping_artefacts():
    # After a very small temperature most probabilities are 0 or 1 in float64: their logit is unknown, and a fit
    # on the clipped values once reported a calibration-in-the-large of 2.25e15.
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(70), np.ones(74)]
    p = np.r_[np.zeros(66), rng.uniform(0.2, 0.9, 4), np.ones(71), rng.uniform(0.1, 0.8, 3)]
    out, notes = logistic_recalibration(y, p)
    assert out == {"calibration_slope": None, "calibration_intercept": None, "calibration_in_the_large": None}
    assert notes == [
        "calibration slope and intercepts are not estimable: 137 of 144 probabilities are 0 or 1 (within 1e-06)"
    ]


def test_a_temperature_that_saturates_the_validation_frames_is_flagged():
    from carotid.evaluation.selection import ValidationOutput, choose_on_validation

    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 72)
    margin = np.where(labels == 1, 1.0, -1.0) * rng.uniform(0.5, 3.0, 144)
    margin[0] = 0.01  # one near-miss, the rest separated: the NLL minimum is a small, finite temperature
    logits = np.stack([np.zeros(144), margin], 1)
    persons = np.repeat([f"p{i}" for i in range(12)], 12)
    choice = choose_on_validation(
        ValidationOutput(labels, logits, persons), aggregation="mean", positive_index=1, calibrate="temperature"
    )
    assert choice["temperature"] < 0.2
    assert any("likely fitted to them rather than to new persons" in note for note in choice["notes"]), choice
    # An over-confident model on overlapping classes (the case temperature scaling is for) is not flagged.
    wide = np.stack([np.zeros(144), 4.0 * (margin + rng.normal(0, 2.0, 144))], 1)
    plain = choose_on_validation(
        ValidationOutput(labels, wide, persons), aggregation="mean", positive_index=1, calibrate="temperature"
    )
    assert plain["temperature"] > 1 and not any("likely fitted" in note for note in plain["notes"])


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model():
    rng = np.random.default_rng(1)
    true_logit = rng.normal(0, 1.5, 4000)
    labels = (rng.random(4000) < expit(true_logit)).astype(int)
    logits = np.stack([np.zeros(4000), 4.0 * true_logit], 1)  # four times too confident
    val, test = slice(0, 2000), slice(2000, None)
    fit = fit_temperature(logits[val], labels[val])
    assert fit["temperature"] == pytest.approx(4.0, rel=0.15)
    assert fit["nll_after"] < fit["nll_before"] - 0.1
    assert fit["nll_before"] == pytest.approx(mean_nll(logits[val], labels[val]))
    # Held-out frames: lower NLL and ECE, same argmax.
    before, after = apply_temperature(logits[test], None), apply_temperature(logits[test], fit["temperature"])
    assert mean_nll(logits[test], labels[test], fit["temperature"]) < mean_nll(logits[test], labels[test])
    ece = [calibration_metrics(labels[test], p, NAMES, 1)[0]["ece"] for p in (before, after)]
    assert ece[1] < ece[0] / 2
    assert (before.argmax(1) == after.argmax(1)).all()
    # The NLL is torch's cross-entropy.
    reference = torch.nn.functional.cross_entropy(
        torch.tensor(logits[val] / fit["temperature"]), torch.tensor(labels[val])
    )
    assert fit["nll_after"] == pytest.approx(float(reference), rel=1e-9)


def _model_file(**extra) -> ModelFile:
    model = build_model("small_cnn", 2, 1)
    return ModelFile(model.state_dict(), "small_cnn", NAMES, 1, 32, NORMALIZATION[1], positive_index=1, **extra)


def test_model_file_keeps_temperature_and_operating_points_and_old_files_load(tmp_path):
    points = [{"name": "sensitivity=0.9", "threshold": 0.21}]
    _model_file(temperature=1.7, temperature_source="fitted", operating_points=points).save(tmp_path / "m.pth")
    loaded = ModelFile.load(tmp_path / "m.pth")
    assert (loaded.temperature, loaded.operating_points) == (1.7, points)
    old = _model_file().to_dict()
    for key in ("temperature", "temperature_source", "operating_points"):
        del old[key]
    old["format_version"] = 2
    torch.save(old, tmp_path / "old.pth")
    loaded = ModelFile.load(tmp_path / "old.pth")
    assert loaded.temperature is None and loaded.operating_points == [] and loaded.format_version == 2
    bad = _model_file().to_dict() | {"temperature": -1.0}
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="'temperature' is -1.0"):
        ModelFile.load(tmp_path / "bad.pth")


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_calibrate_temperature_end_to_end(data_dir, tmp_path, capsys):
    """Train with --calibrate temperature and operating points; evaluate reports before/after; predict applies T."""
    root, label = data_dir
    output = tmp_path / "out"
    status = train_in_process(
        *("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(output), "--epochs", "2"),
        *("--train-ratio", "0.5", "--val-ratio", "0.25", "--test-ratio", "0.25", *FAST),
        *("--calibrate", "temperature", "--operating-point", "sensitivity=0.9", "--operating-point", "youden"),
    )
    assert status == 0
    run = only_run_dir(output)
    best = load_model(run / "models" / "best_model.pth")
    assert best["temperature"] > 0 and "validation persons" in best["temperature_source"]
    assert [p["name"] for p in best["operating_points"]] == ["sensitivity=0.9", "youden"]
    assert "after temperature scaling" in best["threshold_source"]
    assert load_model(run / "models" / "final_model.pth")["temperature"] > 0
    report = read_json(run / "eval_test_best" / "metrics.json")
    calibration = report["calibration"]
    assert calibration["temperature"] == pytest.approx(best["temperature"])
    for level in ("image", "person"):
        for key in ("brier", "ece", "calibration_in_the_large"):
            assert calibration[level][key] is not None and calibration["before_temperature"][level][key] is not None
    assert calibration["binning"].startswith("10 equal-width bins")
    assert [p["name"] for p in report["operating_points"]] == ["sensitivity=0.9", "youden"]
    assert report["operating_points"][0]["person"]["threshold"] == best["operating_points"][0]["threshold"]
    assert (run / "eval_test_best" / "reliability_diagram.png").stat().st_size > 0
    assert "calibration (10 equal-width bins" in capsys.readouterr().out

    # predict gives the evaluation's (temperature-scaled) person probabilities; without T they differ.
    out = tmp_path / "pred.csv"
    test_persons = read_json(run / "splits.json")["test"]
    assert (
        predict.main(
            [
                "--model",
                str(run / "models" / "best_model.pth"),
                "--input",
                str(root),
                "--out",
                str(out),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    predicted = {r["person_id"]: float(r["prob_plaque"]) for r in _rows(tmp_path / "pred_persons.csv")}
    evaluated = {
        r["person_id"]: float(r["prob_plaque"]) for r in _rows(run / "eval_test_best" / "person_predictions.csv")
    }
    for person in test_persons:
        assert predicted[person] == pytest.approx(evaluated[person], abs=2e-6)
    plain = ModelFile.load(run / "models" / "best_model.pth")
    plain.temperature = None
    plain.save(tmp_path / "plain.pth")
    assert (
        predict.main(
            [
                "--model",
                str(tmp_path / "plain.pth"),
                "--input",
                str(root),
                "--out",
                str(tmp_path / "plain.csv"),
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    unscaled = {r["person_id"]: float(r["prob_plaque"]) for r in _rows(tmp_path / "plain_persons.csv")}
    assert any(abs(unscaled[p] - predicted[p]) > 1e-3 for p in test_persons)


def test_evaluate_calibrate_writes_a_model_file_with_the_temperature(trained_run, tmp_path):
    out = tmp_path / "cal"
    argv = ["--run-dir", str(trained_run), "--out", str(out), "--num-workers", "0", "--bootstrap", "50"]
    assert evaluate.main([*argv, "--calibrate", "temperature", "--operating-point", "specificity=0.9"]) == 0
    chosen = ModelFile.load(out / "model.pth")
    report = read_json(out / "metrics.json")
    assert chosen.temperature > 0 and report["calibration"]["temperature"] == pytest.approx(chosen.temperature)
    assert report["model_file"] == str(out / "model.pth") and report["threshold"] == pytest.approx(chosen.threshold)
    assert [p["name"] for p in chosen.operating_points] == ["specificity=0.9"]
    assert report["calibration"]["before_temperature"]["person"]["brier"] is not None


def test_calibrate_needs_validation_persons(data_dir, tmp_path, capsys):
    root, label = data_dir
    status = train_in_process(
        *("--root-dir", str(root), "--label-excel", str(label), "--output-dir", str(tmp_path)),
        *("--train-ratio", "0.75", "--val-ratio", "0", "--test-ratio", "0.25", "--calibrate", "temperature", *FAST),
    )
    assert status == 2 and "--val-ratio is 0" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_tiny_test_set_gives_one_calibration_line_not_one_per_failed_fit():
    from carotid.evaluation.calibration import MIN_CALIBRATION_PERSONS, calibration_section

    y = np.array([0, 0, 1, 1])  # 4 persons, perfectly separated: every recalibration fit fails
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9]])
    frames = (np.repeat(y, 3), np.repeat(probs, 3, axis=0))
    section, notes = calibration_section({"image": frames, "person": (y, probs)}, ["normal", "plaque"], 1)
    assert notes == [
        f"4 persons are too few to judge calibration (at least {MIN_CALIBRATION_PERSONS} advised): its slope and "
        "intercepts are undefined or unreliable here; Brier score and ECE are shown as measured"
    ]
    assert section["person"]["brier"] == pytest.approx(np.mean((probs[:, 1] - y) ** 2))
    # A fit that converges on 6 persons is flagged by the same rule (no model kind is spared).
    six = (
        np.array([0, 0, 0, 1, 1, 1]),
        np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.6, 0.4], [0.2, 0.8], [0.1, 0.9]]),
    )
    section, notes = calibration_section({"person": six}, ["normal", "plaque"], 1)
    assert section["person"]["calibration_slope"] is not None and "6 persons are too few" in notes[0]
    many = (np.tile(y, 6), np.tile(probs, (6, 1)))  # 24 persons, still separated: each failed fit is named
    _, notes = calibration_section({"image": many, "person": many}, ["normal", "plaque"], 1)
    assert len(notes) >= 2 and all("separate the classes perfectly" in n for n in notes)


def _untrained(kind: str) -> ModelFile:
    """A frame model, an attention person model and a timm frame model, untrained (what is judged is the rule)."""
    from carotid.model import canonical_arch
    from carotid.model.person import PersonModel

    torch.manual_seed(0)
    arch = "convnext_atto" if kind == "timm" else "small_cnn"
    network = PersonModel(arch, 2, 1, pooling="attention") if kind == "attention" else build_model(arch, 2, 1)
    return ModelFile(
        network.state_dict(), canonical_arch(arch), ["normal", "plaque"], 1, 32, {"mean": [0.5], "std": [0.25]},
        positive_index=1, person_model="attention" if kind == "attention" else "frames", bag_size=4,
    )  # fmt: skip


def test_the_too_few_persons_calibration_warning_fires_for_every_model_kind_and_in_compare(data_dir, tmp_path):
    from carotid import compare

    root, label = data_dir
    folders = []
    for kind in ("frames", "attention", "timm"):
        _untrained(kind).save(tmp_path / f"{kind}.pth")
        out = tmp_path / kind / "eval_test_best"
        argv = ["--model", str(tmp_path / f"{kind}.pth"), "--root-dir", str(root), "--label-excel", str(label)]
        assert evaluate.main([*argv, "--out", str(out), "--num-workers", "0", "--bootstrap", "20"]) == 0
        metrics = read_json(out / "metrics.json")
        calibration = [w for w in metrics["warnings"] if w.startswith("calibration, ")]
        assert calibration == [f"calibration, {metrics['n_persons']} persons are too few to judge calibration "
                               "(at least 20 advised): its slope and intercepts are undefined or unreliable here; "
                               "Brier score and ECE are shown as measured"], kind  # fmt: skip
        folders.append(out)
    assert compare.main([*map(str, folders), "--out", str(tmp_path / "compared"), "--bootstrap", "20"]) == 0
    result = read_json(tmp_path / "compared" / "compare.json")
    assert sum("too few to judge calibration" in n for n in result["notes"]) == 1
    assert all(m["notes"] == [] for m in result["models"])
