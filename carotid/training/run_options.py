"""carotid-train's run options: the run directory, checkpoints and resuming, tracking, evaluation and thresholds."""

from __future__ import annotations

from dataclasses import dataclass

from carotid.core.options import opt
from carotid.core.trackers import CHOICES as TRACKER_CHOICES
from carotid.evaluation.registry import CALIBRATIONS, CI_METHODS, OPERATING_POINT_HELP
from carotid.model import AGGREGATIONS


@dataclass
class RunOptions:
    """The options of --help's run group (a part of `TrainConfig`)."""

    output_dir: str = opt("./output", "Each run makes output_dir/train_YYYYMMDD_HHMMSS/.", group="run")
    resume: str | None = opt(None, "Continue a run: its directory or one checkpoint folder inside it.", group="run")
    keep_checkpoints: int = opt(2, "Resumable checkpoints kept in RUN/checkpoints/.", group="run")
    checkpoint_every_steps: int = opt(
        0, "Also checkpoint every N optimizer steps inside an epoch (0 = end of epoch only).", group="run"
    )
    report_to: str = opt(
        "tensorboard",
        "Experiment tracker, through Accelerate: tensorboard (the default: event files in RUN/tensorboard/), mlflow "
        "(a file store in RUN/mlruns/ unless MLFLOW_TRACKING_URI is set), wandb, aim, comet_ml, clearml, dvclive, "
        "swanlab, trackio, or none (metrics.csv, curves.png and train.log are written either way). TensorBoard "
        "comes with carotid; the others need their package (pip install 'carotid[mlflow]', wandb, …).",
        choices=TRACKER_CHOICES,
        group="run",
    )
    test: bool = opt(
        True,
        "After training, evaluate best_model.pth on the test split into RUN/eval_test_best/ (--no-test skips it).",
        group="run",
    )
    bootstrap: int = opt(
        1000, "Bootstrap resamples of persons for the test metrics' confidence intervals.", group="run"
    )
    paper_figures: bool = opt(
        True,
        "Also write each figure of an evaluation as SVG, PDF and a 300-dpi PNG under its figures/ folder, for a "
        "paper (--no-paper-figures: the report's screen PNGs only, about 0.3 s less per figure on a CPU core).",
        group="run",
    )
    ci: str = opt(
        CI_METHODS[0],
        "Confidence intervals of per-person sensitivity, specificity, PPV, NPV and accuracy: wilson (score "
        "interval), exact (Clopper–Pearson) or bootstrap (the person bootstrap, as AUC always).",
        choices=CI_METHODS,
        group="run",
    )
    subgroup_column: list[str] = opt(
        [],
        "A column of the label sheet (e.g. hospital, sex, age band): the test metrics per value of it, with CIs "
        "(a cross-validation: also the out-of-fold AUC per value), and a forest plot.",
        group="run",
        metavar="COL",
    )
    subgroup_min_persons: int = opt(
        10, "Subgroups with fewer persons (or one class only) are listed but marked as too small.", group="run"
    )
    person_aggregation: str = opt(
        "mean", "How frame probabilities become a person's probability.", choices=AGGREGATIONS, group="run"
    )
    calibrate: str | None = opt(
        None,
        "temperature = fit one temperature T on the validation frames' logits (lowest NLL) and store it in the "
        "model file; evaluate and predict then give softmax(logits / T). Default: no calibration.",
        choices=CALIBRATIONS,
        group="run",
    )
    operating_point: list[str] = opt(
        [],
        f"Binary: a threshold chosen on the validation persons and stored in the model file: {OPERATING_POINT_HELP}. "
        "Evaluations report the metrics at each, with CIs.",
        group="run",
        metavar="SPEC",
    )
    dist_timeout_minutes: int = opt(
        60, "How long ranks wait for each other (e.g. while rank 0 builds the cache) before failing.", group="run"
    )
