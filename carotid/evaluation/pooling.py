"""Results pooled over cross-validation folds: out-of-fold metrics with person-bootstrap CIs, the folds'
mean ± SD, and the fold ensemble's predictions.

Out of fold, every person is predicted once, by the model that did not see them, at that fold's own
threshold (Youden's J on the fold's validation persons): AUC comes from the pooled probabilities, the
metrics at a threshold from each fold's own decisions. Pure functions on arrays read back from the folds'
prediction tables, so the pooled numbers can be recomputed from the files alone.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from carotid.core.files import read_table, read_table_rows, write_table
from carotid.core.run_dir import EvalDir, RunDir
from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.calibration import calibration_section
from carotid.evaluation.inference import FramePredictions, PersonPredictions, person_predictions
from carotid.evaluation.metrics import classification_metrics, metrics_at_threshold
from carotid.evaluation.records import read_metrics
from carotid.evaluation.registry import table_metrics

FRAME_ARRAYS = ("paths", "frames", "person_ids", "labels", "probs")  # the FramePredictions arrays pooled over folds


def _rows(path: Path) -> list[dict[str, str]]:
    return read_table(path)


def read_fold_evaluation(eval_dir: Path, class_names: list[str]) -> tuple[FramePredictions, dict]:
    """(the per-image predictions of predictions.csv, metrics.json) of one fold's held-out evaluation; for a
    person model (no probability per frame), one row per person from person_predictions.csv, flagged
    person-level (its `attention` is NaN: the frames' weights are not pooled)."""
    rows = _rows(EvalDir(eval_dir).predictions)
    person_level = bool(rows) and bool(rows[0].get("attention")) and not rows[0].get(f"prob_{class_names[0]}")
    if person_level:
        rows = _rows(EvalDir(eval_dir).person_predictions)
    index = {name: i for i, name in enumerate(class_names)}
    preds = FramePredictions(
        paths=np.array([r.get("path", r["person_id"]) for r in rows], dtype=str),
        frames=np.array([int(r.get("frame") or 0) for r in rows], dtype=np.int64),
        person_ids=np.array([r["person_id"] for r in rows], dtype=str),
        labels=np.array([index[r["true_label"]] for r in rows], dtype=int),
        probs=np.array([[float(r[f"prob_{c}"]) for c in class_names] for r in rows], dtype=np.float64).reshape(
            len(rows), len(class_names)
        ),
        attention=np.full(len(rows), np.nan) if person_level else None,
    )
    return preds, read_metrics(EvalDir(eval_dir).metrics)


def _decisions(p_pos: np.ndarray, thresholds: np.ndarray, positive: int) -> np.ndarray:
    """Two-column 'probabilities' that are 1 for the class each row was called, so that metrics and the
    bootstrap at threshold 0.5 count each fold's own decisions."""
    called = (p_pos >= thresholds).astype(np.float64)
    out = np.empty((len(called), 2))
    out[:, positive], out[:, 1 - positive] = called, 1.0 - called
    return out


def pooled_metrics(
    folds: list[tuple[FramePredictions, float | None]],
    class_names: list[str],
    positive: int,
    *,
    aggregation: str,
    bootstrap: int,
    seed: int,
    proportions: str = "wilson",
) -> tuple[dict, FramePredictions, PersonPredictions]:
    """Out-of-fold image and person metrics (person-bootstrap CIs, calibration of the pooled probabilities)
    from each fold's (predictions, threshold). Returns (the metrics, the pooled per-image and per-person
    predictions). Person models' folds hold one row per person: no image level."""
    person_level = all(p.person_level for p, _ in folds)
    keys = FRAME_ARRAYS + (("attention",) if person_level else ())
    pooled = FramePredictions(**{key: np.concatenate([getattr(p, key) for p, _ in folds]) for key in keys})
    fold_of_frame = np.concatenate([np.full(len(p.labels), k) for k, (p, _) in enumerate(folds)])
    persons = person_predictions(pooled, aggregation, positive, labelled=True)
    binary = len(class_names) == 2
    levels = {"image": (pooled.labels, pooled.probs), "person": (persons.labels, persons.probs)}
    out: dict = {"threshold": "each fold's own" if binary else None, "warnings": []}
    # Binary: these metrics at 0.5 end up in "at_threshold_0.5"; the headline ones are each fold's own decisions.
    where = ", at threshold 0.5 (at_threshold_0.5)" if binary else ""
    for level, (y, probs) in levels.items():
        out[level], notes = classification_metrics(y, probs, class_names, positive, 0.5)
        out["warnings"] += [f"{level}{where}: {n}" for n in notes]
    out["calibration"], notes = calibration_section(levels, class_names, positive)
    out["warnings"] += [f"calibration, {n}" for n in notes]
    ci = None
    if bootstrap:
        common = {"n_classes": len(class_names), "positive_index": positive, "n_resamples": bootstrap, "seed": seed}
        common["proportions"] = proportions
        ci = bootstrap_ci(pooled.person_ids, pooled.labels, pooled.probs, aggregation=aggregation, **common)
    if binary:
        thresholds = np.array([t for _, t in folds], dtype=np.float64)
        first = np.unique(pooled.person_ids, return_index=True)[1]
        person_thresholds = thresholds[fold_of_frame[first]]  # persons sorted as np.unique sorts them
        called = {
            "image": _decisions(pooled.probs[:, positive], thresholds[fold_of_frame], positive),
            "person": _decisions(persons.probs[:, positive], person_thresholds, positive),
        }
        for level, (y, _) in levels.items():
            at_own = metrics_at_threshold(y, called[level][:, positive], positive, 0.5)
            out[level] |= {k: v for k, v in at_own.items() if k != "threshold"} | {"threshold": None}
            for key, called_as in (("ppv", "positive"), ("npv", "negative")):
                if at_own[key] is None:
                    out["warnings"].append(
                        f"{level}, at each fold's threshold: {key} is undefined: no {called_as} call"
                    )
        if ci is not None:
            # The same seed and persons give the same resamples, so AUC and these CIs share their draws.
            ids = {"image": pooled.person_ids, "person": persons.person_ids}
            for level, (y, _) in levels.items():
                own = bootstrap_ci(ids[level], y, called[level], threshold=0.5, aggregation="mean", **common)[level]
                ci[level] = {k: v for k, v in own.items() if k != "auc"} | {"auc": ci[level]["auc"]}
    out["ci"] = ci
    if person_level:
        _without_image_level(out)
    return out, pooled, persons


def _without_image_level(out: dict) -> None:
    """A person model's pooled metrics: the image-level entries (computed on person rows) emptied."""
    out["image"] = None
    out["calibration"]["image"] = None
    out["warnings"] = [w for w in out["warnings"] if not w.startswith(("image", "calibration, image"))]
    if out["ci"] is not None:
        out["ci"]["image"] = None


def fold_mean_sd(fold_reports: list[dict], binary: bool) -> dict:
    """Per level and metric: mean and SD (ddof 1) over the folds where it is defined, and how many those are."""
    out: dict = {}
    for level in ("image", "person"):
        if any(r.get(level) is None for r in fold_reports):  # person models: no image level
            out[level] = None
            continue
        out[level] = {}
        for key in table_metrics(binary):
            values = np.array([r[level][key] for r in fold_reports if r[level].get(key) is not None], dtype=float)
            out[level][key] = {
                "mean": float(values.mean()) if len(values) else None,
                "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
                "n_folds": int(len(values)),
            }
    return out


def mean_of_models(predictions: list[FramePredictions]) -> FramePredictions:
    """The ensemble: per frame, the mean of the models' probabilities (every model saw the same frames)."""
    first = predictions[0]
    for other in predictions[1:]:
        if not (np.array_equal(other.paths, first.paths) and np.array_equal(other.frames, first.frames)):
            raise RuntimeError("the fold models were not applied to the same frames")
    probs = np.mean([p.probs for p in predictions], axis=0)
    return dataclasses.replace(first, probs=probs, unreadable=list(first.unreadable), logits=None)


def format_cv_table(metrics: dict, binary: bool) -> str:
    """Out-of-fold metric [95% CI] and mean ± SD over folds, per person and per image."""
    lines = [f"{'metric':<20}{'out of fold, person':<28}{'folds, person':<20}{'out of fold, image':<28}folds, image"]
    for key in table_metrics(binary):
        cells = []
        for level in ("person", "image"):
            if metrics["out_of_fold"][level] is None:  # a person model
                cells += [f"{'not applicable':<28}", f"{'':<20}"]
                continue
            value = metrics["out_of_fold"][level].get(key)
            interval = ((metrics["out_of_fold"]["ci"] or {}).get(level) or {}).get(key)
            cell = "n/a" if value is None else f"{value:.3f}"
            cell += f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else ""
            spread = metrics["fold_mean_sd"][level][key]
            folds = "n/a" if spread["mean"] is None else f"{spread['mean']:.3f}"
            folds += f" ± {spread['sd']:.3f}" if spread["sd"] is not None else ""
            if spread["mean"] is not None and spread["n_folds"] < len(metrics["per_fold"]):
                folds += f" ({spread['n_folds']}/{len(metrics['per_fold'])})"
            cells += [f"{cell:<28}", f"{folds:<20}"]
        lines.append(f"{key:<20}" + "".join(cells).rstrip())
    if any(f"/{len(metrics['per_fold'])})" in line for line in lines[1:]):
        lines.append(
            f"(n/{len(metrics['per_fold'])}): the mean over the n folds where the metric is defined (a fold without "
            "a class has no AUC, sensitivity or specificity)"
        )
    return "\n".join(lines)


def write_oof_persons(path: Path, folds: list[Path], class_names: list[str]) -> None:
    """The folds' person_predictions.csv tables, one after another, with the fold that predicted each person."""
    header, rows = None, []
    for k, fold in enumerate(folds, start=1):
        table = read_table_rows(RunDir(fold).evaluation().person_predictions)
        header = header or ["person_id", "fold", *table[0][1:]]
        rows += [[row[0], k, *row[1:]] for row in table[1:]]
    write_table(path, header, sorted(rows, key=lambda r: r[0]))
