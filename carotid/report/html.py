"""report.html: a run's and an evaluation's whole result on one self-contained page.

Built only from the files a run and an evaluation leave (config.yaml, data_report.json, metrics.csv,
curves.png, metrics.json, person_predictions.csv, failures.csv, the figures and heat maps), so it can be
rebuilt any time. One file: images are embedded as base64 data URIs and the styles inline; it makes no
request and runs no script, so it opens offline, in an e-mail client, or archived with a paper.
"""

from __future__ import annotations

import base64
import csv
import json
import time
from html import escape
from pathlib import Path

import yaml

from carotid.files import atomic_write_text, file_sha256
from carotid.report.checklist import checklist

MAX_TABLE_ROWS = 500  # persons listed in the per-person table; the CSV has them all
MAX_HEATMAPS = 60  # heat-map montages embedded; the folder has them all

STYLE = """
body{font-family:"DejaVu Sans","Noto Sans CJK SC","Noto Sans",Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:36px}
.sub{color:#666}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.wrong td{background:#fde8e8}img{max-width:100%;border:1px solid #eee;margin:4px 0}
.flow{display:flex;align-items:center;flex-wrap:wrap;gap:6px}.box{border:1px solid #89a;border-radius:6px;
padding:6px 10px;background:#f4f8fc;text-align:center}.box b{font-size:1.3em;display:block}.arrow{font-size:1.5em}
.todo{color:#a15c00;font-weight:bold}tr.todorow td{background:#fff8ec}
tr.todorow td:nth-child(3){color:#a15c00;font-weight:bold}.card{display:inline-block;
border:1px solid #ccc;border-radius:6px;padding:8px 14px;margin:4px;background:#fafafa}.card b{font-size:1.4em}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px;margin:6px 0}
details{margin:8px 0}code,pre{font-size:.85em;background:#f6f6f6}
"""


# ---------------------------------------------------------------------------------------------
# Reading what the run and the evaluation left
# ---------------------------------------------------------------------------------------------


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _config(run_dir: Path | None) -> dict:
    path = run_dir / "config.yaml" if run_dir else None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path and path.is_file() else {}


def _model_contract(model_path: str | None) -> dict:
    """The model file's contract (no weights), or {} when it is not there any more."""
    if not model_path or not Path(model_path).is_file():
        return {}
    from carotid.model.file import ModelFile

    model = ModelFile.load(model_path)
    keys = (
        "arch",
        "class_names",
        "in_channels",
        "image_size",
        "normalization",
        "preprocessing",
        "epoch",
        "monitor",
        "aggregation",
    )
    return {k: getattr(model, k) for k in keys} | {"sha256": file_sha256(model_path)}


# ---------------------------------------------------------------------------------------------
# Pieces of HTML
# ---------------------------------------------------------------------------------------------


def image(path: Path, alt: str) -> str:
    """An <img> whose PNG is embedded as a data URI; '' when the file does not exist."""
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        cells = "".join(
            f'<td class="n">{escape(str(c))}</td>' if isinstance(c, (int, float)) else f"<td>{escape(str(c))}</td>"
            for c in row
        )
        body.append(f"<tr{css}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _with_ci(metrics: dict, level: str, key: str) -> str:
    interval = ((metrics.get("ci") or {}).get(level) or {}).get(key)
    point = _num(metrics.get(level, {}).get(key))
    return point + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def section_data(data_report: dict, metrics: dict) -> str:
    if not data_report:
        if not metrics:
            return ""
        counts = metrics.get("counts", {})
        rows = [[name, counts["persons"][name], counts["images"][name]] for name in counts.get("persons", {})]
        return "<h2>Data</h2>" + table(["class", "persons", "frames"], rows) + _notes(metrics.get("data_notes", []))
    in_sheet = data_report.get("persons_in_sheet", 0)
    without_folder = data_report.get("persons_without_folder", {}).get("count", 0)
    without_images = data_report.get("persons_without_images", {}).get("count", 0)
    matched = in_sheet - without_folder
    steps = [
        ("persons in the label sheet", in_sheet),
        ("matched to a folder", matched),
        ("with readable frames", matched - without_images),
    ]
    boxes = '<span class="arrow">→</span>'.join(f'<div class="box"><b>{n}</b>{escape(t)}</div>' for t, n in steps)
    splits = data_report.get("splits", {})
    classes = sorted({c for s in splits.values() for c in s.get("persons", {})})
    rows = [
        [split]
        + [f"{counts['persons'].get(c, 0)} / {counts['images'].get(c, 0)}" for c in classes]
        + [f"{sum(counts['persons'].values())} / {sum(counts['images'].values())}"]
        for split, counts in splits.items()
    ]
    extra = [
        f"{data_report.get('person_folders', 0)} person folders; "
        f"{data_report.get('folders_without_label', {}).get('count', 0)} without a row in the sheet "
        f"(e.g. {', '.join(data_report.get('folders_without_label', {}).get('first', [])) or '-'}); "
        f"{without_folder} sheet persons without a folder; {without_images} folders without an image",
        f"frames found {data_report.get('images_found')}, used {data_report.get('images_used')} "
        f"(at most {data_report.get('max_imgs_per_person') or 'all'} per person); "
        f"{len(data_report.get('unreadable_images', []))} unreadable frames skipped",
    ]
    notes = data_report.get("label_file", {}).get("notes", []) + data_report.get("split_notes", [])
    return (
        '<h2 id="data">Data flow</h2><div class="flow">'
        + boxes
        + '<span class="arrow">→</span><div class="box">per split and class<br>(persons / frames)</div></div>'
        + table(["split", *classes, "all"], rows)
        + _notes(extra + notes)
    )


def _notes(lines: list[str]) -> str:
    return "".join(f"<p class='sub'>{escape(line)}</p>" for line in lines)


def section_training(run_dir: Path | None, model: dict) -> str:
    if not run_dir or not (run_dir / "metrics.csv").is_file():
        return ""
    rows = _csv(run_dir / "metrics.csv")
    best = f"best_model.pth: epoch {model.get('epoch')} by {model.get('monitor')}" if model else ""
    return f'<h2 id="training">Training</h2><p>{len(rows)} epochs. {escape(best)}</p>' + image(
        run_dir / "curves.png", "training curves"
    )


def section_metrics(metrics: dict) -> str:
    if not metrics:
        return ""
    from carotid.evaluation.registry import table_metrics

    binary = metrics.get("threshold") is not None
    rows = [[key, _with_ci(metrics, "image", key), _with_ci(metrics, "person", key)] for key in table_metrics(binary)]
    head = (
        f"{metrics['split']} split: {metrics['n_persons']} persons, {metrics['n_images']} frames; person probability "
        f"= {metrics['person_aggregation']} of its frames"
    )
    if binary:
        head += (
            f"; positive class {metrics['positive_class']}, threshold {metrics['threshold']:.3f} "
            f"({metrics['threshold_source']})"
        )
    method = (metrics.get("ci") or {}).get("method")
    ci = (
        f"[95% CI: {method['resamples']} bootstrap resamples of persons, stratified by {method['stratified_by']}]"
        if method
        else "(no confidence intervals: --bootstrap 0)"
    )
    warnings = "".join(f'<div class="warn">{escape(w)}</div>' for w in metrics.get("warnings", []))
    cards = "".join(
        f'<div class="card">{key} per person<br><b>{escape(_with_ci(metrics, "person", key))}</b></div>'
        for key in (("auc", "sensitivity", "specificity") if binary else ("auc", "accuracy", "balanced_accuracy"))
    )
    return (
        f'<h2 id="metrics">Metrics</h2><p>{escape(head)}</p>{cards}{warnings}'
        + table(["metric", "per image", "per person"], rows)
        + f"<p class='sub'>{escape(ci)}</p>"
    )


def section_figures(eval_dir: Path, metrics: dict) -> str:
    parts = ['<h2 id="figures">ROC and confusion matrix</h2>']
    parts += [image(eval_dir / "roc_curve.png", "ROC curve"), image(eval_dir / "confusion_matrix.png", "confusion")]
    calibration = metrics.get("calibration")
    pictures = sorted({*eval_dir.glob("*calibration*.png"), *eval_dir.glob("*reliability*.png")})
    if calibration or pictures:
        parts.append('<h2 id="calibration">Calibration</h2>')
        parts += [image(p, "calibration") for p in pictures]
        if isinstance(calibration, dict) and {"binning", "image", "person"} <= set(calibration):
            from carotid.evaluation.calibration import format_calibration

            parts.append(f"<pre>{escape(format_calibration(calibration))}</pre>")
        elif isinstance(calibration, dict):
            scalars = [[k, _num(v)] for k, v in calibration.items() if isinstance(v, (int, float, str)) or v is None]
            parts.append(table(["calibration", "value"], scalars) if scalars else "")
            numbers = escape(json.dumps(calibration, indent=1, ensure_ascii=False))
            parts.append(f"<details><summary>all calibration numbers</summary><pre>{numbers}</pre></details>")
    return "".join(parts)


def section_persons(eval_dir: Path) -> str:
    rows = _csv(eval_dir / "person_predictions.csv")
    if not rows:
        return ""
    header = list(rows[0])
    wrong = ["wrong" if r.get("true_label") not in (None, r["predicted_label"]) else "" for r in rows]
    shown = rows[:MAX_TABLE_ROWS]
    more = (
        f"<p class='sub'>… {len(rows) - MAX_TABLE_ROWS} more in person_predictions.csv</p>"
        if len(rows) > len(shown)
        else ""
    )
    n_wrong = sum(1 for w in wrong if w)
    return (
        f'<h2 id="persons">Per person</h2><p>{len(rows)} persons, {n_wrong} misclassified (shaded).</p>'
        + table(header, [[r[h] for h in header] for r in shown], wrong[: len(shown)])
        + more
    )


def section_failures(eval_dir: Path) -> str:
    rows = _csv(eval_dir / "failures.csv")
    if not (eval_dir / "failures.csv").is_file():
        return ""
    if not rows:
        return '<h2 id="failures">Failure gallery</h2><p>No person of this split is misclassified.</p>'
    parts = [
        '<h2 id="failures">Failure gallery</h2><p>The most wrong persons (false negatives first in a binary task): '
        "frame probabilities (the frames in the montage in red) and the Grad-CAM montage.</p>"
    ]
    for row in rows:
        parts.append(
            f"<h3>#{row['rank']} {escape(row['person_id'])}: {escape(row['kind'])} "
            f"(true {escape(row['true_label'])}, predicted {escape(row['predicted_label'])}, "
            f"{escape(row['score'])})</h3>"
            + image(eval_dir / row["strip"], f"frame probabilities of {row['person_id']}")
            + (image(eval_dir / row["montage"], f"heat maps of {row['person_id']}") if row["montage"] else "")
        )
    return "".join(parts)


def section_heatmaps(eval_dir: Path, failures: set[str]) -> str:
    files = sorted(p for p in (eval_dir / "heatmaps").glob("*.png") if p.name not in failures)
    if not files:
        return ""
    more = f"<p class='sub'>… {len(files) - MAX_HEATMAPS} more in heatmaps/</p>" if len(files) > MAX_HEATMAPS else ""
    return (
        '<h2 id="heatmaps">Heat maps</h2><p>Per person, the frames that decided its result, with Grad-CAM.</p>'
        + "".join(image(p, f"heat maps {p.stem}") for p in files[:MAX_HEATMAPS])
        + more
    )


def section_checklist(options: dict, data_report: dict, metrics: dict, model: dict) -> str:
    items = checklist(options, data_report, metrics, model)
    rows, classes = [], []
    for item in items:
        status = "filled by carotid" if item.text else "researcher to write"
        rows.append([item.topic, item.guidelines, status, item.text or f"to write: {item.hint}"])
        classes.append("" if item.text else "todorow")
    filled = sum(1 for item in items if item.text)
    return (
        '<h2 id="checklist">Reporting checklist (CLAIM 2024, TRIPOD+AI)</h2>'
        f"<p>{filled} of {len(items)} topics filled from what this run recorded; "
        "<span class='todo'>researcher to write</span> marks what only you can report.</p>"
        + table(["topic", "asked for by", "status", "content"], rows, classes)
    )


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
        ["model file", metrics.get("model_file", "-")],
        ["model file SHA-256", model.get("sha256", "-")],
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


def build_report(eval_dir: Path | None, run_dir: Path | None) -> str:
    """The HTML text of the report of an evaluation folder and/or a run directory."""
    metrics = _json(eval_dir / "metrics.json") if eval_dir else {}
    run_dir = run_dir or (Path(metrics["run_dir"]) if metrics.get("run_dir") else None)
    config = _config(run_dir)
    data_report = _json(run_dir / "data_report.json") if run_dir else {}
    model_path = metrics.get("model_file") or (str(run_dir / "models" / "best_model.pth") if run_dir else None)
    model = _model_contract(model_path)
    title = f"carotid — {metrics['split']} split, {Path(metrics['model_file']).name}" if metrics else "carotid run"
    classes = ", ".join(model.get("class_names", []))
    sub = f"{model.get('arch', '')} · {run_dir.name if run_dir else ''} · classes {classes}"
    failures = {Path(r["montage"]).name for r in _csv(eval_dir / "failures.csv")} if eval_dir else set()
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(sub)}</p>",
        section_metrics(metrics),
        section_data(data_report, metrics),
        section_training(run_dir, model),
    ]
    if eval_dir:
        body += [section_figures(eval_dir, metrics), section_persons(eval_dir), section_failures(eval_dir)]
        body.append(section_heatmaps(eval_dir, failures))
    body += [section_checklist(config.get("options", {}), data_report, metrics, model)]
    body.append(section_provenance(config, metrics, model, run_dir))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(part for part in body if part)
        + "</body></html>\n"
    )


def write_report(path: Path, eval_dir: Path | None = None, run_dir: Path | None = None) -> Path:
    atomic_write_text(path, build_report(eval_dir, run_dir))
    return path
