"""TrainConfig is the one schema: argparse and the YAML are built from it, checks live in it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from carotid.commands import EvaluateOptions, PredictOptions
from carotid.core.errors import UserError
from carotid.core.options import build_parser
from carotid.core.trackers import tracker_of
from carotid.training.config import TRAIN_GROUPS, TrainConfig, parse_train_args, train_yaml

REPO = Path(__file__).resolve().parents[1]


def test_every_option_has_a_flag_with_help():
    parser = build_parser(TrainConfig, "carotid-train", "", TRAIN_GROUPS)
    flags = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in flags and flags[f.name].help
        assert flags[f.name].help.count("default") <= 1, f"--{f.name} shows its default twice: {flags[f.name].help}"


def test_the_issue_command_line_parses():
    cfg, given = parse_train_args(
        "--root-dir DATA --label-excel label.xlsx --batch-size 4 --epochs 50 --lr 1e-4 "
        "--weight-decay 1e-5 --max-imgs-per-person 1000 --train-ratio 0.5 --val-ratio 0.3 "
        "--test-ratio 0.2 --num-workers 4 --seed 42 --output-dir ./output".split()
    )
    assert (cfg.batch_size, cfg.max_imgs_per_person, cfg.val_ratio, cfg.weight_decay) == (4, 1000, 0.3, 1e-5)
    assert "batch_size" in given and "model" not in given


def test_yaml_changes_defaults_and_flags_still_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("batch-size: 16\nlr: 1e-3\nmodel: small_cnn\ncache: true\n")
    cfg, given = parse_train_args(["--config", str(path), "--batch-size", "8"])
    assert (cfg.batch_size, cfg.lr, cfg.model, cfg.cache) == (8, 1e-3, "small_cnn", True)
    assert {"batch_size", "lr", "model", "cache"} <= given


def test_mixed_precision_no_unquoted_in_yaml_is_the_choice_no(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\n")  # YAML 1.1: false
    cfg, _ = parse_train_args(["--config", str(path)])
    assert cfg.mixed_precision == "no"


def test_a_config_yaml_from_before_tensorboard_was_the_default_still_means_no_tracker(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("report_to: null\n")  # what every run's config.yaml said while the default was no tracker
    cfg, _ = parse_train_args(["--config", str(path)])
    assert tracker_of(cfg.report_to) is None
    assert parse_train_args([])[0].report_to == "tensorboard"


@pytest.mark.parametrize(
    "text,message",
    [
        ("batch_sise: 4\n", "unknown key 'batch_sise'"),
        ("epochs: many\n", "'epochs' must be an integer, got 'many'"),
        ("cache: 1\n", "'cache' must be true or false"),
        ("model: tv/vgg\n", "unknown model 'tv/vgg'"),
        ("- a\n- b\n", "must be a mapping"),
        ("model: no\n", r"'model' must be text, got False \(YAML reads an unquoted no, off, yes or on as a boolean\)"),
    ],
)
def test_bad_yaml_is_a_user_error(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        parse_train_args(["--config", str(path)])


@pytest.mark.parametrize(
    "argv,message",
    [
        ("--train-ratio 0.5 --val-ratio 0.3 --test-ratio 0.3", "must sum to 1"),
        ("--val-ratio -0.1 --train-ratio 0.95 --test-ratio 0.15", "--val-ratio must be between 0 and 1, got -0.1"),
        ("--batch-size 0", "--batch-size must be ≥ 1, got 0"),
        ("--lr 0", "--lr must be > 0, got 0.0"),
        ("--max-imgs-per-person 0", "--max-imgs-per-person must be ≥ 1, got 0"),
        ("--model tv/vgg", "unknown model 'tv/vgg'"),
        ("--epochs two", "invalid int value: 'two'"),
        ("--root-dir -DATA", "expected one argument — a value starting with '-' is written --root-dir=-DATA"),
        ("--root-dir --epochs 3", "expected one argument — see carotid-train --help"),
        ("--person-model frames --attention-dropout 0.25", "act on attention; --person-model is frames"),
        ("--person-model mean --mask-top-frames 1", "act on attention; --person-model is mean"),
        ("--person-model attention --attention-dropout 1", "--attention-dropout must be in"),
    ],
)
def test_bad_flags_are_user_errors_naming_the_value(argv, message):
    with pytest.raises(UserError, match=message):
        parse_train_args(argv.split())


def test_default_yaml_is_in_sync_and_loads():
    shipped = (REPO / "configs" / "train" / "default.yaml").read_text(encoding="utf-8")
    assert shipped == train_yaml(), "regenerate with: python -m carotid.training.config > configs/train/default.yaml"
    assert set(yaml.safe_load(shipped)) == {f.name for f in dataclasses.fields(TrainConfig)}
    cfg, _ = parse_train_args(["--config", str(REPO / "configs" / "train" / "default.yaml")])
    assert cfg == TrainConfig()


def test_a_run_config_yaml_repeats_that_run(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"options": {"model": "small_cnn", "epochs": 3, "resume": "x"}, "versions": {"torch": "2"}})
    )
    cfg, _ = parse_train_args(["--config", str(path)])
    assert (cfg.model, cfg.epochs, cfg.resume) == ("small_cnn", 3, None)


def test_evaluate_and_predict_share_train_definitions():
    """One definition per option: evaluate and predict take train's help and choices, not copies."""
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for schema in (EvaluateOptions, PredictOptions):
        for f in dataclasses.fields(schema):
            if f.name in train and f.name not in ("model",):
                assert f.metadata["choices"] == train[f.name].metadata["choices"], (schema.__name__, f.name)
    from carotid.data.loaders import default_workers

    assert EvaluateOptions().num_workers is None and 1 <= default_workers() <= 4
