"""The reporting checklist of report.html: the CLAIM 2024 and TRIPOD+AI topics this tool can fill from
what it recorded (data partitions, counts, preprocessing, model, training, selection, metrics with CIs,
calibration, failure analysis), and the topics only the researcher can write, marked as such.

Topics are named in words, not item numbers, so the list stays right whichever edition a journal uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from carotid.core.text import plural
from carotid.evaluation.intervals import describe as describe_intervals


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


GREY = (
    "grayscale (1 channel: palettes applied and DICOM YBR converted to RGB first, colour to grey by Pillow's "
    "convert('L'), weights 0.299, 0.587, 0.114; grey of more than 8 bits scaled by 255/(2^bits - 1), DICOM after "
    "its rescale and VOI window)"
)


@dataclass
class Item:
    topic: str
    guidelines: str  # where CLAIM 2024 and TRIPOD+AI ask for it
    text: str | None  # what the tool filled in; None = the researcher must write it
    hint: str = ""  # what to write, for the researcher's items


def _counts(data_report: dict, metrics: dict | None) -> str | None:
    splits = data_report.get("splits") or {}
    parts = []
    for split, counts in splits.items():
        persons, images = counts.get("persons", {}), counts.get("images", {})
        by_class = ", ".join(
            f"{c}: {plural(persons[c], 'person')} / {plural(images.get(c, 0), 'frame')}" for c in persons
        )
        parts.append(f"{split}: {plural(sum(persons.values()), 'person')} ({by_class})")
    if not parts and metrics:
        counts = metrics.get("counts", {})
        per_class = ", ".join(
            f"{c}: {plural(n, 'person')} / {plural(counts.get('images', {}).get(c, 0), 'frame')}"
            for c, n in (counts.get("persons") or {}).items()
        )
        parts.append(
            f"{metrics.get('split')}: {plural(metrics.get('n_persons', 0), 'person')}, "
            f"{plural(metrics.get('n_images', 0), 'frame')} ({per_class})"
        )
    return "; ".join(parts) or None


def _exclusions(data_report: dict) -> str | None:
    if not data_report:
        return None
    left = [
        f"{data_report[key]['count']} {label}"
        for key, label in (
            ("persons_without_folder", "persons of the sheet without a folder"),
            ("folders_without_label", "folders without a row in the sheet"),
            ("persons_without_images", "persons without an image"),
        )
        if isinstance(data_report.get(key), dict)
    ]
    unreadable = len(data_report.get("unreadable_images", []))
    return (
        f"{data_report.get('persons_in_sheet')} persons in the label sheet; left out: {', '.join(left)}; "
        f"{unreadable} unreadable frames skipped (listed in data_report.json)"
    )


def _threshold(metrics: dict) -> str:
    if metrics.get("threshold") is None:
        return "predicted class = argmax"
    where = metrics.get("threshold_source")
    return f"threshold {metrics['threshold']:.3f} on P({metrics.get('positive_class')}) ({where})"


# What only the researcher can write: (topic, checklist references, what to write).
RESEARCHER_TOPICS = (
    ("Study design and goal", "CLAIM: study design; TRIPOD+AI: objectives", "retrospective or prospective"),
    ("Data sources, setting and dates", "CLAIM: data sources; TRIPOD+AI: data sources", "sites, devices, dates"),
    ("Eligibility criteria", "CLAIM: eligibility; TRIPOD+AI: participants", "inclusion and exclusion"),
    ("Reference standard", "CLAIM: ground truth; TRIPOD+AI: outcome", "who labelled, how, blinded to what"),
    ("De-identification", "CLAIM: de-identification", "how the images were anonymised"),
    ("Sample size", "CLAIM: sample size; TRIPOD+AI: sample size", "how the number of persons was chosen"),
    ("Characteristics per partition", "CLAIM: demographics; TRIPOD+AI: participants", "age, sex, site"),
    ("Fairness and subgroups", "TRIPOD+AI: fairness", "performance in relevant subgroups"),
    ("Intended use and limitations", "CLAIM: limitations; TRIPOD+AI: intended use", "clinical role"),
    ("Ethics, funding, registration", "TRIPOD+AI: open science", "approval, funding, protocol"),
)


def checklist(options: dict, data_report: dict, metrics: dict | None, model: dict) -> list[Item]:
    """The items, filled from the run's options (config.yaml), data_report.json, metrics.json and the model file:
    how the data and model were handled, then what the evaluation found, then the researcher's own topics."""
    o, m = options, metrics or {}
    return (
        _method_items(o, data_report, metrics, model)
        + _result_items(o, m, model)
        + [Item(topic, refs, None, hint) for topic, refs, hint in RESEARCHER_TOPICS]
    )


def _partitions(o: dict) -> str:
    if o.get("folds"):  # a cross-validation's own evaluation (its test-set ensemble, a fold)
        return (
            f"{o['folds']}-fold cross-validation of the persons not in the test set (test ratio {o.get('test_ratio')}; "
            f"within each fold validation ratio {o.get('val_ratio')}); the folds are in the cross-validation's "
            "report.html"
        )
    return f"train/val/test = {o.get('train_ratio')}/{o.get('val_ratio')}/{o.get('test_ratio')}" if o else "(not a run)"


def _method_items(o: dict, data_report: dict, metrics: dict | None, model: dict) -> list[Item]:
    """Partitions, counts, exclusions, preprocessing, the model and its training."""
    ratios = _partitions(o)
    return [
        Item(
            "Data partitions and their level",
            "CLAIM: data partitions, independence of partitions; TRIPOD+AI: data splitting",
            f"split by person (never by frame; no person in two partitions), stratified by label, seed "
            f"{o.get('seed')}, {ratios}; saved in splits.json"
            if o
            else None,
            "how the evaluated persons were chosen (external site, period)",
        ),
        Item(
            "Counts per partition and class",
            "CLAIM: flow of participants, partition sizes; TRIPOD+AI: participants, flow diagram",
            _counts(data_report, metrics),
        ),
        Item("Exclusions the tool made", "CLAIM: missing data; TRIPOD+AI: missing data", _exclusions(data_report)),
        Item(
            "Preprocessing",
            "CLAIM: preprocessing steps; TRIPOD+AI: data preparation",
            f"{GREY if model.get('in_channels') == 1 else 'RGB (3 channels; grey frames copied into each)'}; "
            f"{model.get('geometry')}; scaled to [0, 1] and normalised with mean "
            f"{model.get('normalization', {}).get('mean')} and std {model.get('normalization', {}).get('std')}; "
            f"{frames_per_person(o)}; training augmentation: {augmentation(o)}"
            if model
            else None,
        ),
        Item(
            "Model",
            "CLAIM: model description, initialisation; TRIPOD+AI: model type and building",
            f"{model.get('arch')}, {len(model.get('class_names', []))} classes {model.get('class_names')}"
            + (", global max pooling of its last feature map" if o.get("global_pool") == "max" else "")
            + f"; initialised from {initialisation(o)}"
            + (f" (then {o['load_model']})" if o.get("load_model") else "")
            if model
            else None,
        ),
        Item(
            "Training details",
            "CLAIM: training approach, hyperparameters; TRIPOD+AI: model building, hyperparameter tuning",
            f"AdamW lr {o.get('lr')}, weight decay {o.get('weight_decay')}, {o.get('scheduler')} schedule "
            f"({warmup(o)}), {o.get('epochs')} epochs, batch {o.get('batch_size')} per "
            f"process x {o.get('gradient_accumulation_steps')} accumulation, cross-entropy (label smoothing "
            f"{o.get('label_smoothing')}, class weights {o.get('class_weights')}), {early_stopping(o)}, "
            f"mixed precision {o.get('mixed_precision') or 'as set by the accelerate launch configuration'}"
            + (
                "; each step's persons drawn from every class in its share of the training persons (stratified)"
                if o.get("person_model", "frames") != "frames" and o.get("stratified_steps")
                else ""
            )
            if o
            else None,
        ),
    ]


def _result_items(o: dict, m: dict, model: dict) -> list[Item]:
    """Model selection, the metrics with their CIs, calibration, failures, software."""
    ci = (m.get("ci") or {}).get("method") or {}
    return [
        Item(
            "Model selection and operating point",
            "CLAIM: model selection; TRIPOD+AI: model selection, threshold",
            f"best epoch by {model.get('monitor')} on the validation partition (epoch {model.get('epoch')}); "
            f"{_threshold(m)}; {person_probability(m)}"
            if model and m
            else None,
        ),
        Item(
            "Performance metrics with confidence intervals",
            "CLAIM: metrics, statistical measures of significance; TRIPOD+AI: performance measures, uncertainty",
            f"AUC, accuracy, balanced accuracy, sensitivity, specificity, PPV, NPV, F1, {_levels(m)}, on "
            f"the {m.get('split')} partition; {describe_intervals(ci)}"
            if ci
            else ("metrics without CIs (--bootstrap 0)" if m else None),
            "the clinical interpretation of these numbers",
        ),
        Item(
            "Calibration",
            "TRIPOD+AI: calibration; CLAIM: performance metrics",
            calibration_words(m, _curve_drawn(m.get("threshold") is not None, (m.get("counts") or {}).get("persons")))
            if m.get("calibration")
            else None,
            "assess calibration (e.g. a reliability diagram) or state why not",
        ),
        Item(
            "Failure analysis",
            "CLAIM: failure analysis of incorrectly classified cases",
            "the most wrong persons are listed with their frame probabilities and Grad-CAM montages (failure gallery)"
            if m
            else None,
            "what the failures have in common (image quality, plaque type, device)",
        ),
        Item(
            "Software and code",
            "CLAIM: software, code availability; TRIPOD+AI: code availability",
            "versions and commit in the provenance section",
            "where the code and the model can be obtained",
        ),
    ]


def _matrix_counts(matrix: list[list[int]] | None, class_names: list[str]) -> dict[str, int]:
    """Per true class: the row sums of a confusion matrix (rows: true class, in class_names order)."""
    return {c: int(sum(row)) for c, row in zip(class_names, matrix or [])}


def cv_checklist(
    options: dict, data_report: dict, metrics: dict, plan: dict, model: dict, fold_models: list[dict]
) -> list[Item]:
    """The checklist of a cross-validation: the run checklist's items, with those a CV answers differently
    (partitions, counts, selection, metrics, calibration) filled from cv_metrics.json and splits.json."""
    o, k, classes = options, metrics["folds"], metrics["class_names"]
    oof, folds, ensemble = metrics["out_of_fold"], metrics["per_fold"], metrics.get("test_ensemble")
    grouping = (
        f"groups from column {o['group_column']!r} kept whole" if o.get("group_column") else "each person its own group"
    )
    test = len(plan.get("test", []))
    counts = _cv_counts(metrics, classes, k, folds, ensemble)
    selection = _cv_selection(metrics, model, fold_models, k, folds, ensemble)
    ci = (oof.get("ci") or {}).get("method") or {}
    filled = {
        "Data partitions and their level": f"{k}-fold cross-validation by person (never by frame; no person in two "
        f"partitions), {grouping}, stratified by label, seed {o.get('seed')}: {metrics.get('split_method')}; "
        f"{test} test persons set aside from every fold (test ratio {o.get('test_ratio')}); in each fold the "
        f"persons not held out are split into training and validation (val ratio {o.get('val_ratio')}); saved in "
        "splits.json",
        "Counts per partition and class": counts,
        "Model selection and operating point": selection,
        "Performance metrics with confidence intervals": "AUC, accuracy, balanced accuracy, sensitivity, "
        f"specificity, PPV, NPV, F1, {_levels(oof)}: out of fold (pooled over the held-out folds) and on "
        "the test persons (fold ensemble), with mean ± SD over folds; "
        + (describe_intervals(ci) if ci else "no CIs (--bootstrap 0)"),
        "Calibration": "the pooled out-of-fold probabilities, "
        + calibration_words(oof, _curve_drawn(metrics.get("positive_class") is not None, _oof_persons(oof, classes)))
        if oof.get("calibration")
        else None,
        "Failure analysis": "each fold's most wrong held-out persons, with frame probabilities and Grad-CAM "
        "montages, in fold_k/eval_test_best/report.html",
    }
    items = checklist(options, data_report, None, model)
    for item in items:
        if item.topic in filled:
            item.text = filled[item.topic]
        if item.topic == "Preprocessing" and item.text:
            item.text += f"; the same in all {k} folds"
    return items


def _oof_persons(oof: dict, classes: list[str]) -> dict[str, int]:
    return _matrix_counts(oof["person"].get("confusion_matrix"), classes)


def _cv_counts(metrics: dict, classes: list[str], k: int, folds: list[dict], ensemble: dict | None) -> str:
    oof = metrics["out_of_fold"]
    persons = _matrix_counts(oof["person"].get("confusion_matrix"), classes)
    frames = _matrix_counts((oof["image"] or {}).get("confusion_matrix"), classes)  # none for person models
    by_class = ", ".join(
        f"{c}: {plural(persons[c], 'person')}" + (f" / {plural(frames.get(c, 0), 'frame')}" if frames else "")
        for c in persons
    )
    counts = f"out of fold: {plural(metrics['n_persons'], 'person')} ({by_class}) in {k} folds of " + ", ".join(
        f"{f['n_persons']}" for f in folds
    )
    if ensemble:
        counts += f"; test: {plural(ensemble['n_persons'], 'person')}, {plural(ensemble['n_images'], 'frame')}"
    return counts


def _cv_selection(
    metrics: dict, model: dict, fold_models: list[dict], k: int, folds: list[dict], ensemble: dict | None
) -> str:
    thresholds = [f["threshold"] for f in folds]
    return (
        f"per fold: the best epoch by {model.get('monitor')} on that fold's validation persons (epochs "
        f"{', '.join(str(m.get('epoch')) for m in fold_models)}); "
        + (
            f"per fold a threshold on P({metrics['positive_class']}) ({folds[0].get('threshold_source')}): "
            f"{', '.join(number(t) for t in thresholds)}; each out-of-fold person is called at its fold's threshold"
            if metrics.get("positive_class")
            else "predicted class = argmax"
        )
        + (
            f"; test persons: mean probability of the {k} fold models at {ensemble['threshold_source']}"
            if ensemble
            else ""
        )
        + f"; {person_probability(_cv_result(metrics, model))}"
    )


def _cv_result(metrics: dict, model: dict) -> dict:
    """What person_probability reads, for a CV: its person model from the fold model file."""
    return {"person_model": model.get("person_model"), "person_aggregation": metrics["person_aggregation"]}


def frames_per_person(options: dict) -> str:
    cap = options.get("max_imgs_per_person")
    if cap:
        return f"at most {cap} frames per person (--max-imgs-per-person), spread evenly over its sorted frames"
    return "all frames of each person"


def augmentation(options: dict) -> str:
    augment = options.get("augment")
    if not augment or augment == "none":
        return "none"
    return f"the {augment} preset (--augment {augment})"


def warmup(options: dict) -> str:
    epochs = options.get("warmup_epochs")
    if not epochs:
        return "no warm-up"
    return f"{epochs:g} warm-up epoch{'' if epochs == 1 else 's'}" if isinstance(epochs, (int, float)) else str(epochs)


def person_probability(metrics: dict) -> str:
    """How a person's probability was made, in words: pooled frame probabilities, or a person model's pooling."""
    model = metrics.get("person_model") or "frames"
    if model != "frames":
        return f"person probability from {model} pooling of its frames' embeddings (a person model)"
    return f"person probability = {metrics.get('person_aggregation')} of its frames' probabilities"


def _levels(metrics: dict) -> str:
    if metrics.get("image", {}) is None:  # a person model: no probability per frame
        return "per person (a person model gives no per-frame probability)"
    return "per frame and per person"


def calibration_words(result: dict, curve: bool) -> str:
    """The person-level calibration numbers of a result (metrics.json, or cv_metrics.json's out of fold) and the
    too-few-persons warning when it fired; `curve`: calibration_curve.png was drawn beside it."""
    section = result["calibration"]
    person = section.get("person") or {}
    numbers = [
        f"{label} {number(person[key])}"
        for key, label in (("brier", "Brier score"), ("ece", "ECE"), ("calibration_slope", "calibration slope"))
        if person.get(key) is not None
    ]
    words = f"per person: {', '.join(numbers)} (ECE over {section.get('binning')})"
    if curve:
        words += "; calibration curve with a person-bootstrap band in calibration_curve.png"
    few = [w.split(", ", 1)[1] for w in result.get("warnings", []) if "too few to judge calibration" in w]
    return words + (f"; {few[0]}" if few else "")


def _curve_drawn(binary: bool, persons_per_class: dict) -> bool:
    """figures.write_person_curves draws the curves of a binary result whose persons hold both classes."""
    return binary and bool(persons_per_class) and all(persons_per_class.values())


def initialisation(options: dict) -> str:
    """Where the run's starting weights came from, and the small-cohort fine-tuning it used, in words."""
    start = (
        f"the weights file {Path(options['pretrained_weights']).name}"
        if options.get("pretrained_weights")
        else "downloaded ImageNet weights"
        if options.get("pretrained")
        else "random weights"
    )
    tuning = [
        f"backbone frozen for {options['freeze_backbone_epochs']} epoch(s)"
        if options.get("freeze_backbone_epochs")
        else "",
        f"layer-wise LR decay {options['layer_decay']}" if options.get("layer_decay") else "",
        f"EMA of the weights (decay {options.get('ema_decay')})" if options.get("ema") else "",
        f"drop-path {options['drop_path']}" if options.get("drop_path") else "",
    ]
    tuning = [t for t in tuning if t]
    return start + (f"; fine-tuning: {', '.join(tuning)}" if tuning else "")


def early_stopping(options: dict) -> str:
    """Patience 0 means early stopping is off: say so in words."""
    patience = options.get("early_stopping_patience")
    return f"early stopping after {patience} epochs without improvement" if patience else "no early stopping"
