"""report.html: a run's and an evaluation's whole result on one self-contained page.

Built only from the files a run and an evaluation leave (config.yaml, data_report.json, metrics.csv,
curves.png, metrics.json, person_predictions.csv, failures.csv, the figures and heat maps), so it can be
rebuilt any time. One file: images are embedded as base64 data URIs and the styles inline; it makes no
request and runs no script, so it opens offline, in an e-mail client, or archived with a paper.
"""

from __future__ import annotations

import json
import time
from html import escape
from pathlib import Path

import yaml

from carotid.core.files import atomic_write_text
from carotid.core.run_dir import EvalDir, RunDir
from carotid.evaluation.intervals import describe as describe_intervals
from carotid.evaluation.records import read_metrics
from carotid.evaluation.registry import table_metrics
from carotid.report.checklist import checklist
from carotid.report.figures import PERSON_FIGURES, figures_section
from carotid.report.heatmaps import file_name
from carotid.report.methods import results_sentence, weights_sentence, write_methods
from carotid.report.page import (
    attention_line,
    calibration_table,
    checklist_table,
    document,
    flow_boxes,
    image,
    notes,
    number,
    persons_table,
    read_attention,
    read_config,
    read_csv,
    read_json,
    read_model,
    read_uniform,
    table,
    with_ci,
)

MAX_HEATMAPS = 60  # heat-map montages embedded; the folder has them all

# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def section_data(data_report: dict, metrics: dict) -> str:
    if not data_report:
        if not metrics:
            return ""
        counts = metrics.get("counts", {})
        rows = [[name, counts["persons"][name], counts["images"][name]] for name in counts.get("persons", {})]
        return "<h2>Data</h2>" + table(["class", "persons", "frames"], rows) + notes(metrics.get("data_notes", []))
    without_folder = data_report.get("persons_without_folder", {}).get("count", 0)
    without_images = data_report.get("persons_without_images", {}).get("count", 0)
    splits = data_report.get("splits", {})
    classes = sorted({c for s in splits.values() for c in s.get("persons", {})})
    rows = [
        [split]
        + [f"{counts['persons'].get(c, 0)} / {counts['images'].get(c, 0)}" for c in classes]
        + [f"{sum(counts['persons'].values())} / {sum(counts['images'].values())}"]
        for split, counts in splits.items()
    ]
    extra = [data_sentence(data_report, without_folder, without_images), frames_sentence(data_report)]
    sheet_notes = data_report.get("label_file", {}).get("notes", []) + data_report.get("split_notes", [])
    return (
        '<h2 id="data">Data flow</h2>'
        + flow_boxes(data_report, ["per split and class (persons / frames)"])
        + (table(["split", *classes, "all"], rows) if rows else "")
        + notes(extra + sheet_notes)
    )


def data_sentence(data_report: dict, without_folder: int, without_images: int) -> str:
    """Folders and sheet rows in words; examples only when there are any."""
    unlabelled = data_report.get("folders_without_label", {})
    count, first = unlabelled.get("count", 0), unlabelled.get("first", [])
    examples = f" (e.g. {', '.join(first)})" if count and first else ""
    return (
        f"{data_report.get('person_folders', 0)} person folders; {count} without a row in the sheet{examples}; "
        f"{without_folder} sheet persons without a folder; {without_images} folders without an image"
    )


def frames_sentence(data_report: dict) -> str:
    cap = data_report.get("max_imgs_per_person")
    limit = f"at most {cap} per person" if cap else "every frame of each person"
    return (
        f"frames found {data_report.get('images_found')}, used {data_report.get('images_used')} ({limit}); "
        f"{len(data_report.get('unreadable_images', []))} unreadable frames skipped"
    )


def section_training(run_dir: Path | None, model: dict) -> str:
    if not run_dir or not RunDir(run_dir).metrics_csv.is_file():
        return ""
    rows = read_csv(RunDir(run_dir).metrics_csv)
    best = f"best_model.pth: epoch {model.get('epoch')} by {model.get('monitor')}" if model else ""
    return f'<h2 id="training">Training</h2><p>{len(rows)} epochs. {escape(best)}</p>' + image(
        RunDir(run_dir).curves, "training curves"
    )


def section_metrics(metrics: dict) -> str:
    if not metrics:
        return ""

    binary = metrics.get("threshold") is not None
    person_level = metrics.get("image", {}) is None  # a person model: no probability per image
    rows = [
        [key, "not applicable" if person_level else with_ci(metrics, "image", key), with_ci(metrics, "person", key)]
        for key in table_metrics(binary)
    ]
    pooling = f"{metrics['person_aggregation']}" + ("" if person_level else " of its frames")
    head = (
        f"{metrics['split']} split{' (not external: seen in training)' if metrics.get('seen_by_model') else ''}: "
        f"{metrics['n_persons']} persons, {metrics['n_images']} frames; person probability "
        f"= {pooling}"
    )
    if binary:
        head += (
            f"; positive class {metrics['positive_class']}, threshold {metrics['threshold']:.3f} "
            f"({metrics['threshold_source']})"
        )
    method = (metrics.get("ci") or {}).get("method")
    ci = f"[{describe_intervals(method)}]" if method else "(no confidence intervals: --bootstrap 0)"
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in metrics.get("warnings", []))
    cards = "".join(
        f'<div class="card">{key} per person<br><b>{escape(with_ci(metrics, "person", key))}</b></div>'
        for key in (("auc", "sensitivity", "specificity") if binary else ("auc", "accuracy", "balanced_accuracy"))
    )
    return (
        f'<h2 id="metrics">Metrics</h2><p>{escape(head)}</p>{cards}{warnings}'
        + table(["metric", "per image", "per person"], rows)
        + f"<p class='sub'>{escape(ci)} Tables: tables/metrics.csv, .tex, .md"
        + (", tables/subgroups.*" if metrics.get("subgroups") else "")
        + ".</p>"
    )


def section_figures(eval_dir: Path, metrics: dict) -> str:
    parts = ['<h2 id="figures">ROC and confusion matrix</h2>']
    parts += [image(EvalDir(eval_dir).roc, "ROC curve"), image(EvalDir(eval_dir).confusion, "confusion")]
    calibration = metrics.get("calibration")
    pictures = sorted({*eval_dir.glob("*calibration*.png"), *eval_dir.glob("*reliability*.png")})
    pictures = [p for p in pictures if p.stem not in PERSON_FIGURES]  # shown with the paper's figures
    if calibration or pictures:
        parts.append('<h2 id="calibration">Calibration</h2>')
        parts += [image(p, "calibration") for p in pictures]
        if isinstance(calibration, dict) and {"binning", "person"} <= set(calibration):
            parts.append(calibration_table(calibration))
        elif isinstance(calibration, dict):
            scalars = [[k, number(v)] for k, v in calibration.items() if isinstance(v, (int, float, str)) or v is None]
            parts.append(table(["calibration", "value"], scalars) if scalars else "")
            numbers = escape(json.dumps(calibration, indent=1, ensure_ascii=False))
            parts.append(f"<details><summary>all calibration numbers</summary><pre>{numbers}</pre></details>")
    return "".join(parts) + figures_section(eval_dir)


def section_persons(eval_dir: Path) -> str:
    return persons_table(read_csv(EvalDir(eval_dir).person_predictions), "person_predictions.csv", "Per person")


def section_failures(eval_dir: Path, pooling: str) -> str:
    rows = read_csv(eval_dir / "failures.csv")
    if not (eval_dir / "failures.csv").is_file():
        return ""
    if not rows:
        return '<h2 id="failures">Failure gallery</h2><p>No person of this split is misclassified.</p>'
    attention = read_attention(EvalDir(eval_dir).predictions)
    uniform = read_uniform(EvalDir(eval_dir).person_predictions)
    strip = "each frame's attention" if attention else "frame probabilities"
    parts = [
        '<h2 id="failures">Failure gallery</h2><p>The most wrong persons (false negatives first in a binary task): '
        f"{strip} (the frames in the montage in red) and the Grad-CAM montage.</p>"
    ]
    for row in rows:
        parts.append(
            f"<h3>#{row['rank']} {escape(row['person_id'])}: {escape(row['kind'])} "
            f"(true {escape(row['true_label'])}, predicted {escape(row['predicted_label'])}, "
            f"{escape(row['score'])})</h3>"
            + attention_line(
                attention.get(row["person_id"]), uniform=uniform.get(row["person_id"], False), pooling=pooling
            )
            + image(eval_dir / row["strip"], f"{strip} of {row['person_id']}")
            + (image(eval_dir / row["montage"], f"heat maps of {row['person_id']}") if row["montage"] else "")
        )
    return "".join(parts)


def section_heatmaps(eval_dir: Path, failures: set[str], pooling: str, positive: str | None = None) -> str:
    files = sorted(p for p in (eval_dir / "heatmaps").glob("*.png") if p.name not in failures)
    if not files:
        return ""
    more = f"<p class='sub'>… {len(files) - MAX_HEATMAPS} more in heatmaps/</p>" if len(files) > MAX_HEATMAPS else ""
    attention, taken = read_attention(EvalDir(eval_dir).predictions), set()
    uniform = read_uniform(EvalDir(eval_dir).person_predictions)
    # The montages are named as gallery.write_person_figures names them: file_name over the sorted person IDs.
    person_of = {
        file_name(r["person_id"], taken): r["person_id"] for r in read_csv(EvalDir(eval_dir).person_predictions)
    }
    target = f"P({positive})" if positive else "P(the predicted class)"  # heatmaps.explained_class: one class
    which = "the frames of highest attention" if attention else f"the frames of highest {target}"
    strips = " and its attention over the frame order (the montage's frames in red)" if attention else ""

    def person(p: Path) -> str:
        who = person_of.get(p.stem, "")
        line = attention_line(attention.get(who), uniform=uniform.get(who, False), pooling=pooling)
        strip = image(eval_dir / "heatmaps" / "attention" / p.name, f"attention of {p.stem}") if attention else ""
        return line + strip + image(p, f"heat maps {p.stem}")

    return (
        f'<h2 id="heatmaps">Heat maps</h2><p>Per person, {escape(which)}, with Grad-CAM for {escape(target)}{strips}; '
        "each frame named by its file and, in a multi-frame file, its frame number counted from 1. A blank map "
        "(nothing in the frame moved the score) is labelled as such.</p>"
        + "".join(person(p) for p in files[:MAX_HEATMAPS])
        + more
    )


def section_checklist(options: dict, data_report: dict, metrics: dict, model: dict) -> str:
    return checklist_table(checklist(options, data_report, metrics, model), "this run recorded")


def model_rows(metrics: dict, model: dict) -> list[list[str]]:
    """The model file and its SHA-256; each of an ensemble's model files with theirs."""
    models = (metrics.get("ensemble") or {}).get("models")
    if models:
        return [
            [f"model file, fold {m['fold']} (epoch {m['epoch']})", f"{m['path']} (SHA-256 {m['sha256']})"]
            for m in models
        ]
    return [["model file", metrics.get("model_file", "-")], ["model file SHA-256", model.get("sha256", "-")]]


def section_provenance(config: dict, metrics: dict, model: dict, run_dir: Path | None) -> str:
    versions = config.get("versions", {})
    rows = [[k, v] for k, v in versions.items()]
    rows += [
        ["run directory", str(run_dir) if run_dir else "-"],
        ["run created", config.get("created", "-")],
        [
            "label file",
            (config.get("options") or {}).get("label_excel") or (metrics.get("data") or {}).get("label_excel") or "-",
        ],
        ["label file SHA-256 (training)", config.get("label_file_sha256", "-")],
        *model_rows(metrics, model),
        ["report written", time.strftime("%Y-%m-%d %H:%M:%S %z")],
    ]
    options = yaml.safe_dump(config.get("options", {}), allow_unicode=True, sort_keys=False)
    return (
        '<h2 id="provenance">Provenance</h2>'
        + table(["what", "value"], rows)
        + f"<details><summary>all options of the run (config.yaml)</summary><pre>{escape(options)}</pre></details>"
    )


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def _split_words(split: str, metrics: dict | None = None) -> str:
    seen = (metrics or {}).get("seen_by_model")
    if seen:  # an "external" evaluation on persons the model trained or validated on
        return f"{split} data, not external: {seen['count']} of {seen['of']} persons seen in training"
    return f"{split} split" if split in ("train", "val", "test") else split


def build_report(eval_dir: Path | None, run_dir: Path | None) -> str:
    """The HTML text of the report of an evaluation folder and/or a run directory."""
    metrics = read_metrics(EvalDir(eval_dir).metrics) if eval_dir and EvalDir(eval_dir).metrics.is_file() else {}
    run_dir = run_dir or (Path(metrics["run_dir"]) if metrics.get("run_dir") else None)
    config = read_config(run_dir)
    data_report = read_json(RunDir(run_dir).data_report) if run_dir else {}
    models = (metrics.get("ensemble") or {}).get("models") or []  # a cross-validation's fold ensemble
    model_path = models[0]["path"] if models else metrics.get("model_file")
    model = read_model(model_path or (str(RunDir(run_dir).best_model) if run_dir else None))
    title = (
        f"carotid — {_split_words(metrics['split'], metrics)}, {Path(metrics['model_file']).name}"
        if metrics
        else "carotid run"
    )
    if models:
        title = f"carotid — {_split_words(metrics['split'])}, ensemble of the {len(models)} fold models"
    classes = ", ".join(model.get("class_names", []))
    sub = f"{model.get('arch', '')} · {run_dir.name if run_dir else ''} · classes {classes}"
    failures = {Path(r["montage"]).name for r in read_csv(eval_dir / "failures.csv")} if eval_dir else set()
    pooling = metrics.get("person_model", "frames")  # a person model's pooling: what its attention lines say
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(sub)}</p>",
        section_metrics(metrics),
        section_data(data_report, metrics),
        section_training(run_dir, model),
    ]
    if eval_dir:
        body += [section_figures(eval_dir, metrics), section_persons(eval_dir), section_failures(eval_dir, pooling)]
        body.append(section_heatmaps(eval_dir, failures, pooling, metrics.get("positive_class")))
    body += [section_checklist(config.get("options", {}), data_report, metrics, model)]
    body.append(section_provenance(config, metrics, model, run_dir))
    return document(title, body)


def write_report(path: Path, eval_dir: Path | None = None, run_dir: Path | None = None) -> Path:
    """report.html (and methods.md beside it, from the same files)."""
    page = build_report(eval_dir, run_dir)
    write_report_methods(path.parent, eval_dir, run_dir)
    if run_dir is not None and path.parent.resolve() == Path(run_dir).resolve():  # the run's own page
        end = page.index("</p>", page.index("<h1>")) + len("</p>")  # after the title and its subtitle
        page = page[:end] + section_evaluations(Path(run_dir)) + page[end:]
    atomic_write_text(path, page)
    return path


def write_report_methods(folder: Path, eval_dir: Path | None, run_dir: Path | None) -> None:
    """methods.md of an evaluation (and its run): the checklist's filled items, the results, the software."""
    metrics = read_metrics(EvalDir(eval_dir).metrics) if eval_dir and EvalDir(eval_dir).metrics.is_file() else {}
    if not metrics:
        return
    run_dir = run_dir or (Path(metrics["run_dir"]) if metrics.get("run_dir") else None)
    config = read_config(run_dir)
    data_report = read_json(RunDir(run_dir).data_report) if run_dir else {}
    model = read_model(metrics.get("model_file") or (str(RunDir(run_dir).best_model) if run_dir else None))
    items = checklist(config.get("options", {}), data_report, metrics, model)
    where = f"On the {_split_words(metrics['split'], metrics)} ({metrics['n_persons']} persons)"
    title = f"Methods — {_split_words(metrics['split'], metrics)}, {Path(str(metrics['model_file'])).name}"
    extra = [weights_sentence(config.get("initial_weights"))]  # the intervals: in the metrics item already
    write_methods(folder, title, items, results_sentence(metrics, where), config.get("versions"), extra)


def write_run_report(run_dir: Path) -> Path:
    """RUN/report.html again: the run, its test evaluation, and a link to every evaluation folder of the run."""
    evaluation = RunDir(run_dir).evaluation().path
    return write_report(RunDir(run_dir).report, evaluation if evaluation.is_dir() else None, run_dir)


def section_evaluations(run_dir: Path) -> str:
    """Every evaluation folder of the run (eval_*/ with a metrics.json), each linked to its own report.html."""
    rows = []
    for folder in sorted(p.parent for p in run_dir.glob("eval_*/metrics.json")):
        metrics = read_json(folder / "metrics.json")
        auc = (metrics.get("person") or {}).get("auc")
        written = time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / "metrics.json").stat().st_mtime))
        cells = [
            f'<a href="{escape(folder.name)}/report.html">{escape(folder.name)}</a>',
            escape(str(metrics.get("split", "n/a"))),
            escape(Path(str(metrics.get("model_file", "n/a")).split(", ")[0]).name),
            str(metrics.get("n_persons", "n/a")),
            number(auc),
            written,
        ]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        return ""
    head = "".join(
        f"<th>{h}</th>" for h in ("evaluation", "split evaluated", "model", "persons", "person AUC", "written")
    )
    return (
        '<h2 id="evaluations">Evaluations of this run</h2><p>Each has its own report.html; a later '
        "<code>carotid.evaluate</code> adds its folder here.</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    )
