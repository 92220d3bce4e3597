"""The numbers of an evaluation: predictions → the metrics.json dict (`compute_report`) and its console table.

`carotid.report.outputs.evaluate_model` runs the inference, this, and writes the evaluation folder.
See docs/EVALUATION.md for every key of metrics.json.
"""

from __future__ import annotations

import numpy as np

from carotid.core.text import plural
from carotid.evaluation.aggregation import aggregate_persons
from carotid.evaluation.attention import uniform_warning
from carotid.evaluation.bootstrap import bootstrap_ci
from carotid.evaluation.calibration import apply_temperature, calibration_section, format_calibration
from carotid.evaluation.inference import (
    FramePredictions,
    PersonPredictions,
    decision_threshold,
    person_predictions,
    predicted_labels,
)
from carotid.evaluation.metrics import classification_metrics
from carotid.evaluation.operating_points import format_operating_points, operating_point_report
from carotid.evaluation.records import METRICS_SCHEMA, MetricsRecord
from carotid.evaluation.registry import table_metrics
from carotid.evaluation.seen import seen_warning
from carotid.evaluation.subgroups import format_subgroups, subgroup_report
from carotid.model.file import ModelFile

NEAR_TIE = 1e-6  # a probability this close to the threshold is reported as a near-tie


def compute_report(
    preds: FramePredictions,
    model_file: ModelFile,
    *,
    model_path: str,
    split: str,
    bootstrap: int,
    aggregation: str,
    seed: int,
    threshold: float | None,
    ci: str = "wilson",
    context: dict,
    subgroups: dict[str, dict[str, str | None]] | None = None,
    subgroup_min_persons: int = 10,
) -> tuple[MetricsRecord, PersonPredictions]:
    """(the metrics.json record, the per-person table it was computed from), section by section.

    A person model's predictions are one probability per person: its numbers are computed on one row per
    person, and the image level is left empty (None: not applicable) rather than filled with person numbers.
    Over 60 lines because the record is written out here once, key by key (its type is MetricsRecord)."""
    class_names, positive = model_file.class_names, model_file.positive_index
    threshold, source = decision_threshold(model_file, threshold)
    cut = 0.5 if threshold is None else threshold  # multi-class metrics ignore it
    persons = person_predictions(preds, aggregation, positive, labelled=True)
    n_frames, frame_labels = len(preds.labels), preds.labels
    person_level = preds.person_level
    if person_level:
        preds = preds.person_rows()
    image, image_notes = classification_metrics(preds.labels, preds.probs, class_names, positive, cut)
    person, person_notes = classification_metrics(persons.labels, persons.probs, class_names, positive, cut)

    def ci_at(cut_at: float) -> dict | None:
        """Person-bootstrap CIs of every metric at the threshold `cut_at`."""
        if not bootstrap:
            return None
        return bootstrap_ci(
            preds.person_ids,
            preds.labels,
            preds.probs,
            n_classes=len(class_names),
            positive_index=positive,
            threshold=cut_at,
            n_resamples=bootstrap,
            seed=seed,
            aggregation=aggregation,
            proportions=ci,
        )

    levels = {"image": (preds.labels, preds.probs), "person": (persons.labels, persons.probs)}
    calibration, calibration_notes = _calibration(preds, persons, levels, model_file, aggregation)
    points = (
        operating_point_report(model_file.operating_points, levels, positive, ci_at) if threshold is not None else []
    )
    groups = None
    if subgroups:
        groups = subgroup_report(
            subgroups,
            (preds.person_ids, preds.labels, preds.probs),
            (persons.person_ids, persons.labels, persons.probs),
            class_names=class_names,
            positive_index=positive,
            threshold=cut,
            aggregation=aggregation,
            bootstrap=bootstrap,
            proportions=ci,
            seed=seed,
            min_persons=subgroup_min_persons,
        )
    report: MetricsRecord = {
        "schema_version": METRICS_SCHEMA,
        "model_file": model_path,
        "arch": model_file.arch,
        "model_epoch": model_file.epoch,
        "split": split,
        "run_dir": context.get("run_dir"),
        "data": context.get("data"),
        "data_notes": context.get("data_notes", []),
        "class_names": class_names,
        "positive_class": class_names[positive] if threshold is not None else None,
        "n_images": int(n_frames),
        "n_persons": int(len(persons.person_ids)),
        "counts": _class_counts(class_names, frame_labels, persons),
        "person_model": model_file.person_model,
        "person_aggregation": aggregation if not person_level else f"{model_file.person_model} pooling of embeddings",
        "threshold": threshold,
        "threshold_source": source,
        "image": image,
        "person": person,
        "ci": ci_at(cut),
        "calibration": calibration,
        "operating_points": points,
        "subgroups": groups,
        "subgroup_min_persons": subgroup_min_persons if groups else None,
        "warnings": [f"image: {n}" for n in image_notes]
        + [f"person: {n}" for n in person_notes]
        + [f"calibration, {n}" for n in calibration_notes],
        "best_epoch": model_file.best_epoch,
        "unreadable_images": context.get("unreadable_images", []) + preds.unreadable,
        "decoding": preds.decoding,
        "seen_by_model": context.get("seen_by_model"),
    }
    report["warnings"] += _model_warnings(report, persons, model_file)
    report["warnings"] += _data_warnings(report, preds, persons, model_file, context)
    report["warnings"] += _near_ties(persons, positive, threshold)
    if person_level:
        _without_image_level(report)
    return report, persons


def _calibration(
    preds: FramePredictions, persons: PersonPredictions, levels: dict, model_file: ModelFile, aggregation: str
) -> tuple[dict, list[str]]:
    """The calibration section, before and after the model's temperature when it has one."""
    before = None
    if preds.temperature is not None:  # the same frames without the temperature: calibration before and after
        raw = apply_temperature(preds.logits, None)
        before = {
            "image": (preds.labels, raw),
            "person": (
                persons.labels,
                aggregate_persons(preds.person_ids, raw, aggregation, model_file.positive_index)[1],
            ),
        }
    return calibration_section(
        levels,
        model_file.class_names,
        model_file.positive_index,
        before=before,
        temperature=preds.temperature,
        temperature_source=model_file.temperature_source,
    )


def _class_counts(class_names: list[str], frame_labels: np.ndarray, persons: PersonPredictions) -> dict:
    return {
        level: dict(zip(class_names, np.bincount(y, minlength=len(class_names)).tolist()))
        for level, y in (("images", frame_labels), ("persons", persons.labels))
    }


def _model_warnings(report: MetricsRecord, persons: PersonPredictions, model_file: ModelFile) -> list[str]:
    """What about the model a reader of the numbers must know: attention that prefers no frame, and a best epoch
    chosen by val_loss because the monitored metric saturated."""
    warnings = []
    if persons.attention is not None:
        binary = report["threshold"] is not None
        called = predicted_labels(persons.probs, report["threshold"], model_file.positive_index)
        group = f" called {model_file.positive_class}" if binary else ""
        uniform = uniform_warning(
            persons.attention, model_file.person_model, called == model_file.positive_index if binary else None, group
        )
        warnings += [f"attention: {uniform}"] if uniform else []
    chosen = model_file.best_epoch or {}
    if chosen.get("saturated") and chosen.get("epoch") == model_file.epoch:
        warnings.append(f"validation: {chosen['message']}")
    return warnings


def _data_warnings(
    report: MetricsRecord, preds: FramePredictions, persons: PersonPredictions, model_file: ModelFile, context: dict
) -> list[str]:
    """What about the evaluated frames a reader of the numbers must know: unreadable, colour, flat, lost persons."""
    warnings = []
    if report["unreadable_images"]:
        warnings.append(
            f"{plural(len(report['unreadable_images']), 'frame')} could not be decoded and are left out "
            f"(e.g. {report['unreadable_images'][0]['path']}; all listed under unreadable_images)"
        )
    if preds.decoding.get("colour_frames") and model_file.in_channels == 1:
        warnings.append(
            f"{plural(preds.decoding['colour_frames'], 'colour frame')} converted to grey for this 1-channel model"
        )
    if preds.decoding.get("low_range_frames"):
        warnings.append(f"{preds.decoding['low_range_frames']} frame(s) use under 16 grey levels")
    seen = context.get("seen_by_model")
    if seen:
        warnings.append(f"not external: {seen_warning(seen, 'the data')}")
    lost = sorted(set(context.get("persons", [])) - set(persons.person_ids.tolist()))
    if lost:
        warnings.append(f"{len(lost)} person(s) have no decodable frame and are not evaluated: {', '.join(lost[:5])}")
    return warnings


def _near_ties(persons: PersonPredictions, positive: int, threshold: float | None) -> list[str]:
    """Persons whose probability lies within NEAR_TIE of the threshold: their verdict turns on digits a
    rounded table would not show (person_predictions.csv holds every digit)."""
    if threshold is None:
        return []
    near = np.flatnonzero(np.abs(persons.probs[:, positive] - threshold) <= NEAR_TIE)
    if not len(near):
        return []
    shown = ", ".join(f"{persons.person_ids[i]} ({float(persons.probs[i, positive])!r})" for i in near[:5])
    return [
        f"{plural(len(near), 'person')} within {NEAR_TIE:g} of the threshold {threshold!r}: {shown}; their verdicts "
        "turn on digits beyond the 6th (person_predictions.csv holds every digit)"
    ]


def _without_image_level(report: dict) -> None:
    """Empty every image-level entry of a person model's report (computed on its person rows, they would
    repeat the person numbers under the wrong name)."""
    report["image"] = None
    report["warnings"] = [w for w in report["warnings"] if not w.startswith("image: ")]
    for holder in [
        report["ci"],
        *report["operating_points"],
        *(report["calibration"], report["calibration"].get("before_temperature")),
    ]:
        if isinstance(holder, dict) and "image" in holder:
            holder["image"] = None
    for point in report["operating_points"]:
        if point.get("ci"):
            point["ci"]["image"] = None
    for rows in (report["subgroups"] or {}).values():
        for row in rows:
            row["image"] = None
            row["notes"] = [n for n in row["notes"] if not n.startswith("image: ")]
            if row.get("ci"):
                row["ci"]["image"] = None
    report["warnings"] = [w for w in report["warnings"] if not w.startswith("calibration, image: ")]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(report: dict, level: str, key: str) -> str:
    interval = ((report.get("ci") or {}).get(level) or {}).get(key)
    return _number(report[level].get(key)) + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")


def format_table(report: dict) -> str:
    """A short table: each metric per image and per person, with its 95% CI where one was drawn."""
    binary = report["threshold"] is not None
    person_level = report.get("image", {}) is None
    pooling = report["person_aggregation"] if person_level else f"{report['person_aggregation']} of frames"
    head = (
        f"{report['split']}: {plural(report['n_images'], 'image')}, {plural(report['n_persons'], 'person')}; "
        f"person = {pooling}"
    )
    if binary:
        head += f"; threshold {report['threshold']:.3f} ({report['threshold_source']})"
    keys = table_metrics(binary)
    if person_level:
        lines = [head, "per image: not applicable (a person model gives one probability per person)"]
        lines += [f"{'metric':<20}per person"] + [f"{key:<20}{_cell(report, 'person', key)}" for key in keys]
    else:
        lines = [head, f"{'metric':<20}{'per image':<26}per person"]
        lines += [f"{key:<20}{_cell(report, 'image', key):<26}{_cell(report, 'person', key)}" for key in keys]
    if binary:
        at_half = report["person"]["at_threshold_0.5"]
        lines.append(
            "at threshold 0.5, per person: "
            + ", ".join(f"{key} {_number(at_half[key])}" for key in ("accuracy", "sensitivity", "specificity"))
        )
    else:
        for name, values in report["person"]["per_class"].items():
            shown = ", ".join(f"{key} {_number(values[key])}" for key in values)
            lines.append(f"per person, class {name}: {shown}")
    lines.append(format_calibration(report["calibration"]))
    if report["operating_points"]:
        lines.append(format_operating_points(report["operating_points"]))
    if report["subgroups"]:
        lines.append(format_subgroups(report["subgroups"], report["subgroup_min_persons"]))
    return "\n".join(lines)
