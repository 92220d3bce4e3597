"""The options of every command but training, each declared once (evaluate, predict, compare, export,
demo). Where an option means what a training option means, it is `like()` that one (same help and choices).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from carotid.core.errors import UserError
from carotid.core.options import like, opt, parse_options
from carotid.evaluation.registry import DEFAULT_BOOTSTRAP, DEFAULT_SEED, OPERATING_POINT_HELP
from carotid.training.config import (
    TrainConfig,
    check_header_row,
    check_non_negative,
    check_operating_points,
    check_positive,
    check_subgroup_columns,
    check_threshold,
)

# ---------------------------------------------------------------------------------------------
# carotid-evaluate
# ---------------------------------------------------------------------------------------------


@dataclass
class EvaluateOptions:
    run_dir: str | None = opt(
        None,
        "A run directory made by carotid-train: its splits.json, config.yaml and models/.",
        group="what",
        metavar="RUN",
    )
    model: str | None = opt(
        None,
        "RUN/models/best_model.pth (default), final_model.pth, or any model file.",
        group="what",
        metavar="best|final|PATH",
    )
    split: str | None = opt(
        None,
        "Which persons of RUN's splits.json to evaluate (default: test).",
        choices=("test", "val", "train"),
        group="what",
    )
    root_dir: str | None = like(
        TrainConfig, "root_dir", help="Folder of person folders (default: the run's). Needed without --run-dir."
    )
    label_excel: str | None = like(
        TrainConfig, "label_excel", help="Excel label file (default: the run's). Needed without --run-dir."
    )
    sheet: str | None = like(
        TrainConfig, "sheet", help="Sheet of the label file (default: the run's, else the active visible sheet)."
    )
    header_row: int | None = like(
        TrainConfig, "header_row", help="Row number of the column headers (default: the run's, else found)."
    )
    id_column: str | None = like(
        TrainConfig, "id_column", help="Header of the person-ID column (default: the run's, else recognised)."
    )
    label_column: str | None = like(
        TrainConfig, "label_column", help="Header of the label column (default: the run's, else recognised)."
    )
    strict_matching: bool | None = like(
        TrainConfig, "strict_matching", None, help="Every sheet row needs a folder and every folder a row."
    )
    max_imgs_per_person: int | None = like(
        TrainConfig,
        "max_imgs_per_person",
        help="Frames per person, spread evenly; 0 = all (default: the run's cap; without --run-dir all frames).",
    )
    out: str | None = opt(
        None,
        "Output folder (default: RUN/eval_<split>_<model>/; external validation: see docs/EVALUATION.md).",
        group="output",
        metavar="DIR",
    )
    bootstrap: int | None = like(
        TrainConfig,
        "bootstrap",
        help=f"Person resamples for the 95% CIs, 0 = none (default: the run's, else {DEFAULT_BOOTSTRAP}).",
        group="output",
    )
    ci: str | None = like(
        TrainConfig,
        "ci",
        None,
        help="Per-person proportions' CIs: wilson, exact (Clopper–Pearson) or bootstrap (default: the run's, else "
        "wilson).",
        group="output",
    )
    seed: int | None = like(
        TrainConfig,
        "seed",
        help=f"Seed of the bootstrap (default: the run's seed, else {DEFAULT_SEED}).",
        group="output",
    )
    paper_figures: bool = like(TrainConfig, "paper_figures", True, group="output")
    person_aggregation: str | None = like(
        TrainConfig,
        "person_aggregation",
        help="Frame → person probability (default: the model file's).",
        group="output",
    )
    threshold: float | None = opt(
        None,
        "Binary: positive if P(positive) ≥ T (default: the model file's Youden threshold).",
        group="output",
        metavar="T",
    )
    calibrate: str | None = like(
        TrainConfig,
        "calibrate",
        help="temperature = fit a temperature on RUN's validation persons and evaluate with it; the model file "
        "with it is written to OUT/model.pth (default: the model file's temperature, if any).",
        group="study",
    )
    operating_point: list[str] = like(
        TrainConfig,
        "operating_point",
        help=f"Choose this operating point on RUN's validation persons ({OPERATING_POINT_HELP}) and report the "
        "metrics at it; OUT/model.pth stores them (default: the model file's operating points).",
        group="study",
    )
    subgroup_column: list[str] = like(
        TrainConfig,
        "subgroup_column",
        help="A column of the label sheet (e.g. hospital, sex, age band): the metrics per value of it, with CIs.",
        group="study",
    )
    subgroup_min_persons: int = like(TrainConfig, "subgroup_min_persons", 10, group="study")
    reader_column: str | None = opt(
        None,
        "A column of the label sheet holding a reader's call (class name or 0/1) or score (probability or any "
        "number, higher = more likely positive): scored on the same persons into OUT_reader_<COL>/, "
        "for carotid-compare.",
        group="study",
        metavar="COL",
    )
    reader_threshold: float | None = opt(
        None,
        "Reader scores: positive if score ≥ T (default: 0.5 for probabilities; needed for other scores).",
        group="study",
        metavar="T",
    )
    heatmaps: int = opt(
        0,
        "Write OUT/heatmaps/<person>.png for every person: its N most decisive frames with Grad-CAM overlays "
        "(0 = none; the failure gallery always gets its montages).",
        group="output",
        metavar="N",
    )
    failures: int = opt(
        8, "Most wrong persons shown in the failure gallery of report.html (0 = none).", group="output", metavar="K"
    )
    batch_size: int = like(TrainConfig, "batch_size", 64, help="Frames per batch on each process.", group="run")
    num_workers: int | None = like(TrainConfig, "num_workers", group="run")
    cache: bool = like(TrainConfig, "cache", False, group="run")
    cache_dir: str | None = like(TrainConfig, "cache_dir", group="run")

    def __post_init__(self) -> None:
        check_non_negative(self, "bootstrap", "num_workers", "max_imgs_per_person", "heatmaps", "failures")
        check_positive(self, "batch_size", "subgroup_min_persons")
        check_header_row(self.header_row)
        check_threshold(self.threshold)
        check_operating_points(self.operating_point)
        check_subgroup_columns(self.subgroup_column)


EVALUATE_GROUPS = {
    "what": "what to evaluate",
    "data": "data",
    "output": "metrics and output",
    "study": "calibration, operating points, subgroups and readers",
    "run": "processes and loading",
}


def parse_evaluate_args(argv: Sequence[str] | None) -> EvaluateOptions:
    return parse_options(
        EvaluateOptions,
        argv,
        "carotid-evaluate",
        "Evaluate a carotid model file per image and per person, with 95% CIs.",
        EVALUATE_GROUPS,
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-predict
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("auto", "persons", "person", "images")


@dataclass
class PredictOptions:
    model: str | None = opt(
        None, "A model file, e.g. RUN/models/best_model.pth.", group="what", metavar="PATH", required=True
    )
    input: str | None = opt(
        None,
        "A folder of person folders, one person's folder, a folder of images, or one image file.",
        group="what",
        metavar="DIR|FILE",
        required=True,
    )
    out: str | None = opt(
        None,
        "Per-image predictions; the per-person table goes beside it as FILE_persons.csv "
        "(default: ./predictions_<DIR name>.csv).",
        group="output",
        metavar="FILE.csv",
    )
    layout: str = opt(
        "auto",
        "persons = one sub-folder per person; person = every image below DIR is one person's; images = each "
        "image on its own (default auto: 'persons' if DIR holds only person folders with images, 'person' if it "
        "holds only images; a mix, or folders nested two levels, is an error asking for --layout).",
        choices=LAYOUTS,
        group="what",
    )
    person_aggregation: str | None = like(EvaluateOptions, "person_aggregation")
    threshold: float | None = opt(
        None,
        "Binary models: positive if P(positive) ≥ T (default: the model file's threshold).",
        group="output",
        metavar="T",
    )
    heatmaps: int = like(
        EvaluateOptions,
        "heatmaps",
        0,
        help="Write FILE_heatmaps/<person>.png for every person: its N most decisive frames with Grad-CAM overlays "
        "(0 = none).",
    )
    report: bool = opt(
        False,
        "Also write FILE_report.html: one self-contained page with each person's verdict, probability and "
        "threshold, top frames, attention over the frame order (person models), heat maps (with --heatmaps) and "
        "what the model was trained on.",
        group="output",
    )
    batch_size: int = like(EvaluateOptions, "batch_size", 64)
    num_workers: int | None = like(EvaluateOptions, "num_workers")

    def __post_init__(self) -> None:
        check_non_negative(self, "num_workers", "heatmaps")
        check_positive(self, "batch_size")
        check_threshold(self.threshold)


def parse_predict_args(argv: Sequence[str] | None) -> PredictOptions:
    return parse_options(
        PredictOptions,
        argv,
        "carotid-predict",
        "Predict per image and per person with a carotid model file; no labels needed.",
        {"what": "what to predict", "output": "output", "run": "processes and loading"},
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-compare
# ---------------------------------------------------------------------------------------------


@dataclass
class CompareOptions:
    evaluations: list[str] = opt(
        [],
        "Two or more evaluation folders of the same persons (each with person_predictions.csv and metrics.json): "
        "models, or a model and a reader.",
        group="what",
        metavar="EVAL_DIR",
        positional=True,
    )
    name: list[str] = opt(
        [],
        "A name for each evaluation, in their order (default: backbone · person model, e.g. 'resnet18 · "
        "attention', or the reader's column).",
        group="what",
        metavar="NAME",
    )
    shared_persons: bool = opt(
        False,
        "Compare on the persons every folder holds when their person sets differ (default: refuse).",
        group="what",
    )
    subgroup_column: list[str] = like(
        EvaluateOptions,
        "subgroup_column",
        help="A column of the label sheet (e.g. hospital, sex): each model's AUC per value of it, in a forest plot "
        "(default: the columns the evaluations were given).",
        group="what",
    )
    subgroup_min_persons: int = like(EvaluateOptions, "subgroup_min_persons", 10, group="what")
    label_excel: str | None = opt(
        None,
        "The label sheet holding the subgroup columns (default: the one the evaluations recorded).",
        group="what",
        metavar="FILE",
    )
    out: str | None = opt(
        None,
        "Folder for compare.json and compare.html (default: compare/ beside the first evaluation, numbered "
        "when taken).",
        group="output",
        metavar="DIR",
    )
    bootstrap: int = like(
        TrainConfig,
        "bootstrap",
        DEFAULT_BOOTSTRAP,
        help="Paired person resamples for the CIs of each AUC and of the differences.",
        group="output",
    )
    seed: int = like(TrainConfig, "seed", DEFAULT_SEED, help="Seed of the bootstrap.", group="output")
    paper_figures: bool = like(TrainConfig, "paper_figures", True, group="output")

    def __post_init__(self) -> None:
        check_positive(self, "bootstrap", "subgroup_min_persons")
        check_subgroup_columns(self.subgroup_column)
        if len(self.evaluations) < 2:
            raise UserError(
                f"carotid-compare needs two or more evaluation folders, got {len(self.evaluations)}",
                "pass e.g. RUN_A/eval_test_best RUN_B/eval_test_best",
            )
        if self.name and len(self.name) != len(self.evaluations):
            raise UserError(
                f"{len(self.name)} --name for {len(self.evaluations)} evaluations",
                "give one --name per evaluation folder, in their order, or none",
            )
        if len(set(self.name)) < len(self.name):
            raise UserError(f"--name values repeat: {self.name}", "give each evaluation its own name")


def parse_compare_args(argv: Sequence[str] | None) -> CompareOptions:
    return parse_options(
        CompareOptions,
        argv,
        "carotid-compare",
        "Compare two or more evaluations of the same persons in one table: AUC, sensitivity, specificity, PPV, "
        "NPV, Brier score and calibration slope of each, and pairwise DeLong tests of the AUCs and McNemar tests "
        "of sensitivity and specificity with Holm-adjusted p-values.",
        {"what": "what to compare", "output": "output"},
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-export
# ---------------------------------------------------------------------------------------------


@dataclass
class ExportOptions:
    model: str | None = opt(
        None, "A model file, e.g. RUN/models/best_model.pth.", group="what", metavar="PATH", required=True
    )
    format: str = opt(
        "onnx",
        "onnx (onnxruntime, any language) or torchscript (PyTorch without this package).",
        choices=("onnx", "torchscript"),
        group="what",
    )
    out: str | None = opt(
        None, "Output file (default: beside the model file, .onnx or .pt).", group="what", metavar="FILE"
    )
    frames: str | None = opt(
        None,
        "Folder of real frames to check the export against PyTorch on (default: the model's training data).",
        group="what",
        metavar="DIR",
    )


def parse_export_args(argv: Sequence[str] | None) -> ExportOptions:
    return parse_options(
        ExportOptions,
        argv,
        "carotid-export",
        "Export a carotid model file to ONNX or TorchScript, with its input contract, classes and threshold "
        "as metadata, checked against PyTorch on real frames.",
        {"what": "what to export"},
    )[0]


# ---------------------------------------------------------------------------------------------
# carotid-demo
# ---------------------------------------------------------------------------------------------


@dataclass
class DemoOptions:
    out: str | None = opt(
        None, "Folder to write the person folders and label.xlsx into.", group="demo", metavar="DIR", required=True
    )
    persons: int = opt(
        60,
        "Number of persons, half of them with plaque (with --sites: over all sites, dealt by --site-mix).",
        group="demo",
    )
    frames: int = opt(12, "Frames per person (the most, with --min-frames).", group="demo")
    min_frames: int | None = opt(
        None,
        "Give each person between N and --frames frames, drawn at random (default: all get --frames).",
        group="demo",
    )
    finding_frames: int | None = opt(
        None,
        "How many consecutive frames of a plaque person show the plaque; their other frames look like a normal "
        "person's (default: all frames). findings.csv lists which frames show it.",
        group="demo",
    )
    size: int = opt(128, "Frame width in pixels; height is 3/4 of it.", group="demo")
    seed: int = opt(0, "Random seed.", group="demo")
    sites: int | None = opt(
        None,
        "Deal the persons to N hospitals for federated training: OUT/site_1 … OUT/site_N, each with its own "
        "label.xlsx (and headers of its own), and OUT/test, held-out persons common to all; OUT/sites.csv says "
        "who went where.",
        group="demo",
    )
    site_mix: str = opt(
        "noniid",
        "How --sites are dealt: noniid (one site mostly plaque, one mostly normal, one small, in a cycle; each "
        "its own scanner gain) or iid (equal sites, half plaque, one scanner).",
        choices=("iid", "noniid"),
        group="demo",
    )
    test_persons: int | None = opt(
        None, "With --sites: persons of the common test set (default: a third of --persons).", group="demo"
    )
    first_id: int = opt(
        1001,
        "ID of the first person; the others count up from it. Another ID range (e.g. 2001) makes persons that a "
        "model trained on the default demo data has never seen.",
        group="demo",
    )

    def __post_init__(self) -> None:
        # --min-frames and --finding-frames: make_demo_data checks them
        check_positive(self, "persons", "frames", "first_id")
        if self.sites is None and self.test_persons is not None:
            raise UserError("--test-persons needs --sites", "add e.g. --sites 3, or leave --test-persons out")
        if self.sites is not None and self.finding_frames is not None:
            raise UserError(
                "--finding-frames does not go with --sites", "leave one out: site data show the plaque in every frame"
            )
        if self.sites is not None and self.first_id != 1001:
            raise UserError("--first-id does not go with --sites", "leave --first-id out: site persons are numbered")
        if self.size < 16:
            raise UserError(f"--size must be at least 16, got {self.size}", "use e.g. 128")


def parse_demo_args(argv: Sequence[str] | None, description: str) -> DemoOptions:
    return parse_options(DemoOptions, argv, "carotid-demo", description, {"demo": "demo data"})[0]
