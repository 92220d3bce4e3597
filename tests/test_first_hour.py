"""What a new user meets first: --help that states each default once, worker counts within the CPUs,
messages with correct plurals, a predict table aligned for Chinese IDs, and predict's heat maps."""

from __future__ import annotations

import os

import numpy as np
import pytest

from carotid import commands, predict
from carotid.core.options import build_parser
from carotid.core.text import display_width, plural
from carotid.data.loaders import default_workers
from carotid.evaluation.inference import PersonPredictions
from carotid.training import config

SCHEMAS = {
    "carotid-train": (config.TrainConfig, config.TRAIN_GROUPS),
    "carotid-evaluate": (commands.EvaluateOptions, commands.EVALUATE_GROUPS),
    "carotid-predict": (commands.PredictOptions, {"what": "", "output": "", "run": ""}),
    "carotid-export": (commands.ExportOptions, {"what": ""}),
    "carotid-demo": (commands.DemoOptions, {"demo": ""}),
}


@pytest.mark.parametrize("prog", SCHEMAS)
def test_help_states_each_default_once(prog):
    schema, groups = SCHEMAS[prog]
    parser = build_parser(schema, prog, "", groups, config_file=prog == "carotid-train")
    for action in parser._actions:
        assert (action.help or "").count("default") <= 1, f"{prog} {action.option_strings}: {action.help}"
    assert "(default: None)" not in parser.format_help()  # also: formatting --help must not fail (a bare %)


def test_default_workers_never_exceed_the_cpus_available():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 1 <= default_workers() <= min(4, cpus)


def test_plurals():
    assert [plural(n, "person") for n in (0, 1, 2)] == ["0 persons", "1 person", "2 persons"]
    assert plural(1, "process", "processes") == "1 process" and plural(3, "image") == "3 images"


def test_predict_table_aligns_double_width_ids_and_class_names():
    persons = PersonPredictions(
        np.array(["张三", "1002", "李四五六"]), np.array([[0.2, 0.8], [0.9, 0.1], [0.5, 0.5]]), np.array([3, 12, 4])
    )
    table = predict.summary_table(persons, np.array([1, 0, 1]), ["正常", "斑块"], 1, True)
    lines = table.splitlines()
    assert "P(斑块)" in lines[0] and "张三" in lines[1]
    # Every column ends in the same terminal cell on every line (wide characters count twice).
    frames_end = {display_width(line[: line.index(str(n)) + len(str(n))]) for line, n in zip(lines[1:], (3, 12, 4))}
    assert len(frames_end) == 1 and display_width(lines[0][: lines[0].index("frames") + 6]) in frames_end
    probability_end = {display_width(line[: line.index(p) + 5]) for line, p in zip(lines[1:], ("0.800", "0.100"))}
    assert len(probability_end) == 1 and display_width(lines[0][: lines[0].index(")") + 1]) in probability_end


def test_predict_heatmaps_write_one_montage_per_person(trained_run, data_dir, tmp_path, capsys):
    root, _ = data_dir
    out = tmp_path / "preds.csv"
    args = ["--model", str(trained_run / "models" / "best_model.pth"), "--input", str(root), "--out", str(out)]
    assert predict.main([*args, "--heatmaps", "2", "--num-workers", "0"]) == 0
    folder = tmp_path / "preds_heatmaps"
    persons = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert sorted(p.stem for p in folder.glob("*.png")) == persons
    printed = capsys.readouterr().out
    assert f"heat maps (2 frames per person): {folder}" in printed and "12 persons, 48 images" in printed


def test_report_sentences_are_plain_words():
    """No "(e.g. -)" when nothing is left out, no "at most all", early stopping off in words, no launcher jargon."""
    from carotid.report.checklist import early_stopping
    from carotid.report.html import data_sentence, frames_sentence

    report = {"person_folders": 12, "folders_without_label": {"count": 0, "first": []}, "images_found": 48}
    assert "e.g." not in data_sentence(report, 0, 0) and "0 without a row in the sheet;" in data_sentence(report, 0, 0)
    report["folders_without_label"] = {"count": 2, "first": ["9001", "9002"]}
    assert "2 without a row in the sheet (e.g. 9001, 9002)" in data_sentence(report, 0, 0)
    assert "every frame of each person" in frames_sentence({**report, "max_imgs_per_person": None})
    assert "at most 8 per person" in frames_sentence({**report, "max_imgs_per_person": 8})
    assert early_stopping({"early_stopping_patience": 0}) == "no early stopping"
    assert early_stopping({"early_stopping_patience": 5}) == "early stopping after 5 epochs without improvement"


def test_model_help_names_timm_examples_that_a_bare_name_gives_timm():
    """--help's timm examples are names only timm has; a name both have is said to be torchvision's."""
    from carotid.model import MODEL_HELP, TORCHVISION

    timm_examples = MODEL_HELP.split("e.g. ", 1)[1].split(")")[0].split(", ")
    assert timm_examples and not set(timm_examples) & set(TORCHVISION)
    assert "efficientnet_b0, convnext_tiny, …) means torchvision's" in MODEL_HELP
