"""An evaluation end to end (`evaluate_model`: inference on every process, the numbers, the files) and the
files of an evaluation folder: metrics.json, the prediction tables, subgroups.csv, tables/, the figures
(ROC with its bootstrap bands, reliability, confusion, heat maps, failure gallery) and report.html."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid.core.errors import UserError
from carotid.core.files import write_records
from carotid.core.run_dir import EvalDir
from carotid.data.frames.frame import Frame
from carotid.evaluation.bootstrap import roc_band
from carotid.evaluation.evaluator import compute_report, format_table
from carotid.evaluation.inference import FramePredictions, PersonPredictions, run_inference, write_prediction_tables
from carotid.evaluation.records import write_metrics
from carotid.evaluation.subgroups import subgroup_records
from carotid.model.file import ModelFile
from carotid.report.figures import person_figures
from carotid.report.gallery import write_person_figures
from carotid.report.html import write_report
from carotid.report.plots import fonts_note, plot_confusion, plot_reliability, plot_roc
from carotid.report.tables import write_evaluation_tables


def evaluate_model(
    accelerator: Accelerator,
    model_path: str | Path,
    frames: list[Frame],
    out_dir: str | Path,
    *,
    split: str,
    batch_size: int = 64,
    num_workers: int | None = None,
    bootstrap: int = 1000,
    ci: str = "wilson",
    aggregation: str | None = None,
    seed: int = 0,
    threshold: float | None = None,
    cache: bool = False,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
    model_file: ModelFile | None = None,
    context: dict | None = None,
    subgroups: dict[str, dict[str, str | None]] | None = None,
    subgroup_min_persons: int = 10,
    heatmaps: int = 0,
    failures: int = 8,
) -> dict | None:
    """Predict every frame of `frames` (all processes), then write the evaluation (main process).

    Returns the metrics.json dict on the main process, None elsewhere. `model_file` is model_path's
    content when the caller has loaded it already; `context` adds the data's provenance; `subgroups`
    ({sheet column: {person: value}}) adds the metrics per subgroup. `heatmaps` N
    writes a Grad-CAM montage of N frames for every person; `failures` K lists the K most wrong persons.

    Over 60 lines because its signature holds every option of an evaluation, one per line; the body is four
    steps: inference, `compute_report`, `write_evaluation`, the console lines."""
    model_file = model_file or ModelFile.load(model_path)
    preds = run_inference(
        accelerator,
        model_file.build_model(),
        model_file,
        frames,
        batch_size=batch_size,
        num_workers=num_workers,
        cache=cache,
        cache_dir=cache_dir,
    )
    if len(preds.paths) == 0:
        raise UserError(f"none of the {len(frames)} frames could be decoded", "check the image files")
    report = None
    if accelerator.is_main_process:
        report, persons = compute_report(
            preds,
            model_file,
            model_path=str(model_path),
            split=split,
            bootstrap=bootstrap,
            ci=ci,
            aggregation=aggregation or model_file.aggregation,
            seed=seed,
            threshold=threshold,
            context=context or {},
            subgroups=subgroups,
            subgroup_min_persons=subgroup_min_persons,
        )
        write_evaluation(
            report,
            preds,
            persons,
            model_file,
            Path(out_dir),
            heatmaps=heatmaps,
            failures=failures,
            device=accelerator.device,
            log=log,
        )
        for note in report["warnings"]:
            log(f"warning: {note}")
        log(format_table(report))
        log(f"evaluation written to {out_dir}; report: {EvalDir(out_dir).report}")
    accelerator.wait_for_everyone()
    return report


def write_evaluation(
    report: dict,
    preds: FramePredictions,
    persons: PersonPredictions,
    model_file: ModelFile,
    out_dir: Path,
    *,
    heatmaps: int = 0,
    failures: int = 8,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = print,
) -> None:
    """metrics.json, the prediction tables, the figures, heat maps, the failure gallery and report.html,
    each file written atomically."""
    class_names, positive, threshold = report["class_names"], model_file.positive_index, report["threshold"]
    out_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(EvalDir(out_dir).metrics, report)
    write_evaluation_tables(out_dir, report)
    note = fonts_note(class_names)
    if note:
        log(f"warning: {note}")
    predicted = write_prediction_tables(
        EvalDir(out_dir).predictions,
        EvalDir(out_dir).person_predictions,
        preds,
        persons,
        class_names,
        threshold,
        positive,
    )
    levels = _plot_curves(report, preds, persons, positive, out_dir)
    counts = ", ".join(f"{n} {name}" for name, n in report["counts"].get("persons", {}).items())
    person_figures(out_dir, report, persons.labels, persons.probs, who=f"{report['split']}: {counts}")
    if report["subgroups"]:
        records = subgroup_records(report["subgroups"])
        write_records(EvalDir(out_dir).subgroups, records, list(records[0]))
    plot_confusion(
        {level: report[level]["confusion_matrix"] for level in levels},
        class_names,
        EvalDir(out_dir).confusion,
        threshold=threshold,
        positive_class=report["positive_class"],
    )
    write_person_figures(
        model_file,
        preds,
        persons,
        predicted,
        out_dir,
        heatmaps=heatmaps,
        failures=failures,
        threshold=threshold,
        aggregation=report["person_aggregation"],
        device=device,
    )
    write_report(EvalDir(out_dir).report, eval_dir=out_dir)


def _plot_curves(
    report: dict, preds: FramePredictions, persons: PersonPredictions, positive: int, out_dir: Path
) -> dict:
    """roc_curve.png (with its bootstrap bands) and reliability_diagram.png; returns the levels drawn (a person
    model has no image level)."""
    class_names, threshold = report["class_names"], report["threshold"]
    levels = {"image": (preds.labels, preds.probs), "person": (persons.labels, persons.probs)}
    if report.get("image", {}) is None:  # a person model: nothing per image
        del levels["image"]
    points = {level: report[level] for level in levels} if threshold is not None else None
    plot_roc(
        levels,
        class_names,
        positive,
        EvalDir(out_dir).roc,
        operating_points=points,
        bands=roc_bands(report, preds, persons, positive),
        split=report["split"],
    )
    calibration = report["calibration"]
    plot_reliability(
        {level: calibration[level]["reliability"] for level in levels},
        EvalDir(out_dir).reliability,
        before={level: b["reliability"] for level, b in calibration["before_temperature"].items()}
        if calibration["before_temperature"]
        else None,
        binary=threshold is not None,
    )
    return levels


def roc_bands(
    report: dict, preds: FramePredictions, persons: PersonPredictions, positive: int
) -> dict[str, dict | None] | None:
    """Binary tasks: the ROC curves' 95% bands, per image and per person, from the report's person bootstrap."""
    method = (report.get("ci") or {}).get("method")
    if report["threshold"] is None or not method:
        return None
    frame_person = np.searchsorted(persons.person_ids, preds.person_ids)  # person_ids are sorted and unique
    resample = {"n_resamples": method["resamples"], "seed": method["seed"]}
    image = None
    if report.get("image", {}) is not None:
        image = roc_band(frame_person, preds.labels == positive, preds.probs[:, positive], persons.labels, **resample)
    return {
        "image": image,
        "person": roc_band(
            np.arange(len(persons.person_ids)),
            persons.labels == positive,
            persons.probs[:, positive],
            persons.labels,
            **resample,
        ),
    }
