"""The pooled results of a cross-validation (carotid.training.cv), once every fold has run: the out-of-fold
predictions and metrics (each person predicted by the fold that held them out, at that fold's threshold),
cv_metrics.json, the CV page, and with test persons the mean of the K best models evaluated on them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from accelerate import Accelerator

from carotid.core.files import file_sha256
from carotid.core.run_dir import RunDir
from carotid.core.runtime import RunLog
from carotid.data.manifest import DataManifest
from carotid.evaluation.evaluator import compute_report, format_table
from carotid.evaluation.inference import run_inference
from carotid.evaluation.pooling import (
    fold_mean_sd,
    format_cv_table,
    mean_of_models,
    pooled_metrics,
    read_fold_evaluation,
    write_oof_persons,
)
from carotid.evaluation.records import CV_METRICS_SCHEMA, CVMetricsRecord, write_cv_metrics
from carotid.evaluation.subgroups import subgroup_aucs
from carotid.model.file import ModelFile
from carotid.report.cv_page import write_cv_figures, write_cv_report
from carotid.report.outputs import write_evaluation
from carotid.training.config import TrainConfig
from carotid.training.epoch import eval_batch_size


def summarise(
    accelerator: Accelerator, cfg: TrainConfig, manifest: DataManifest, plan: dict, cv_dir: Path, log: RunLog
) -> None:
    """oof_person_predictions.csv, cv_metrics.json and, with test persons, the fold ensemble on them."""
    class_names = manifest.class_names
    # The class read_labels chose and the folds trained with, not --positive-class alone (None unless given).
    positive = manifest.positive_index
    folds = [cv_dir / f"fold_{k}" for k in range(1, cfg.folds + 1)]
    ensemble = None
    if cfg.test and plan["test"]:
        ensemble = evaluate_ensemble(
            accelerator, cfg, manifest, plan, folds, RunDir(cv_dir).evaluation("test", "ensemble").path, log
        )
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    evaluations = [read_fold_evaluation(RunDir(f).evaluation().path, class_names) for f in folds]
    pooled, frames, persons = pooled_metrics(
        [(preds, report["threshold"]) for preds, report in evaluations],
        class_names,
        positive,
        aggregation=cfg.person_aggregation,
        bootstrap=cfg.bootstrap,
        proportions=cfg.ci,
        seed=cfg.seed,
    )
    write_oof_persons(cv_dir / "oof_person_predictions.csv", folds, class_names)
    if cfg.subgroup_column:  # the pooled persons' AUC per value (each fold has its own threshold: AUC only)
        pooled["subgroups"] = subgroup_aucs(
            {column: manifest.person_columns[column] for column in cfg.subgroup_column},
            (persons.person_ids, persons.labels, persons.probs),
            class_names,
            positive,
            min_persons=cfg.subgroup_min_persons,
            bootstrap=cfg.bootstrap,
            seed=cfg.seed,
        )
        pooled["subgroup_min_persons"] = cfg.subgroup_min_persons
    binary = len(class_names) == 2
    reports = [report for _, report in evaluations]
    metrics: CVMetricsRecord = {
        "schema_version": CV_METRICS_SCHEMA,
        "folds": cfg.folds,
        "class_names": class_names,
        "positive_class": class_names[positive] if binary else None,
        "person_aggregation": cfg.person_aggregation,
        "n_persons": int(len(np.unique(frames.person_ids))),
        "n_images": int(sum(report["n_images"] for _, report in evaluations)),
        "split_method": plan.get("method"),
        "out_of_fold": pooled,
        "per_fold": [
            {
                "fold": k,
                "n_persons": r["n_persons"],
                "n_images": r["n_images"],
                "model_epoch": r["model_epoch"],
                "threshold": r["threshold"],
                "threshold_source": r["threshold_source"],
                "best_epoch": r["best_epoch"],  # how the fold's best epoch was chosen (ties, saturation)
                "image": r["image"],
                "person": r["person"],
                "ci": r["ci"],
            }
            for k, r in enumerate(reports, start=1)
        ],
        "fold_mean_sd": fold_mean_sd(reports, binary),
        "test_ensemble": ensemble,
    }
    write_cv_metrics(RunDir(cv_dir).cv_metrics, metrics)
    write_cv_figures(cv_dir, pooled, frames, persons, class_names, positive)
    log(f"out of fold ({metrics['n_persons']} persons, {metrics['n_images']} images), each at its fold's threshold:")
    for note in pooled["warnings"]:
        log(f"warning: {note}")
    log(format_cv_table(metrics, binary))
    log(f"cross-validation written to {cv_dir}")
    log(f"report: {write_cv_report(cv_dir)}")
    accelerator.wait_for_everyone()


def evaluate_ensemble(
    accelerator: Accelerator,
    cfg: TrainConfig,
    manifest: DataManifest,
    plan: dict,
    folds: list[Path],
    out_dir: Path,
    log: RunLog,
) -> dict | None:
    """Collective: the K best models on the test persons, their mean probability evaluated like one model at
    the mean of the folds' thresholds. Returns the evaluation's summary on the main process."""
    frames = dataclasses.replace(manifest, splits={"test": plan["test"]}).frames_of("test")
    paths = [RunDir(f).best_model for f in folds]
    model_files = [ModelFile.load(path) for path in paths]
    predictions = [
        run_inference(
            accelerator,
            mf.build_model(),
            mf,
            frames,
            batch_size=eval_batch_size(cfg),
            num_workers=cfg.num_workers,
            cache=cfg.cache,
            cache_dir=cfg.cache_dir,
        )
        for mf in model_files
    ]
    if not accelerator.is_main_process:
        return None
    thresholds = [mf.threshold for mf in model_files]
    threshold = float(np.mean(thresholds)) if all(t is not None for t in thresholds) else None
    preds = mean_of_models(predictions)
    report, persons = compute_report(
        preds,
        model_files[0],
        model_path=", ".join(map(str, paths)),
        split="test",
        bootstrap=cfg.bootstrap,
        ci=cfg.ci,
        aggregation=cfg.person_aggregation,
        seed=cfg.seed,
        threshold=threshold,
        context={"run_dir": str(out_dir.parent), "data": {"root_dir": cfg.root_dir, "label_excel": cfg.label_excel}},
    )
    report |= {
        "arch": f"ensemble: mean probability of {len(folds)} x {model_files[0].arch}",
        "model_epoch": [mf.epoch for mf in model_files],
        "ensemble": {
            "rule": f"mean probability of the {len(folds)} folds' best models",
            "models": [
                {
                    "fold": k,
                    "path": str(path),
                    "sha256": file_sha256(path),
                    "epoch": mf.epoch,
                    "threshold": mf.threshold,
                }
                for k, (path, mf) in enumerate(zip(paths, model_files), start=1)
            ],
        },
        "threshold_source": f"mean of the {len(folds)} folds' thresholds {[round(t, 4) for t in thresholds]}"
        if threshold is not None
        else None,
    }
    write_evaluation(report, preds, persons, model_files[0], out_dir)
    log("test persons, fold ensemble (mean of the folds' best models):")
    log(format_table(report))
    kept = ("n_persons", "n_images", "threshold", "threshold_source", "image", "person", "ci", "ensemble")
    return {key: report[key] for key in kept}
