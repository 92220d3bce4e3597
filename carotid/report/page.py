"""The pieces report.html is made of: its style sheet, the files of a run and an evaluation it reads (each
{} or [] when missing, so a page can be built from whatever is there), embedded images, tables and numbers."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

import yaml

from carotid.core.files import file_sha256, read_table
from carotid.core.run_dir import RunDir
from carotid.data.frames.kinds import kind_by_name
from carotid.evaluation.attention import uniform_sentence
from carotid.evaluation.registry import CALIBRATION_METRICS
from carotid.model.file import ModelFile

MAX_TABLE_ROWS = 500  # persons listed in a per-person table; the CSV has them all

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
details{margin:8px 0}code,pre{font-size:.85em;background:#f6f6f6}.attention{margin:2px 0 6px;font-size:.9em}
"""


# ---------------------------------------------------------------------------------------------
# Reading what the run and the evaluation left
# ---------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return read_table(path)


def read_config(run_dir: Path | None) -> dict:
    path = RunDir(run_dir).config if run_dir else None
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}) if path and path.is_file() else {}


def read_model(model_path: str | None) -> dict:
    """The model file's contract (no weights) and its crop and resize in words, or {} when it is not there
    any more."""
    if not model_path or not Path(model_path).is_file():
        return {}

    model = ModelFile.load(model_path)
    keys = (
        "arch",
        "class_names",
        "in_channels",
        "image_size",
        "normalization",
        "epoch",
        "monitor",
        "aggregation",
        "person_model",
    )
    return {k: getattr(model, k) for k in keys} | {"geometry": model.prep.describe(), "sha256": file_sha256(model_path)}


def frame_name(path: str, frame: int | str) -> str:
    """A frame in words, as every page and figure names it: the file's name, with the 1-based frame number for a
    frame of a multi-frame file ('clip.dcm frame 104'; the CSVs' `frame` column counts from 0, as readers index)."""
    kind = kind_by_name(path)
    name = Path(path).name
    # A single image's only frame is the file; frames past the first are a cine loop named as an image (.jpg).
    single = kind is not None and kind.single_frame and str(frame).strip() in ("", "0")
    return name if single else f"{name} frame {int(frame) + 1}"


def read_attention(predictions_csv: Path) -> dict[str, list[tuple[str, float]]]:
    """A person model's attention from predictions.csv: {person ID: [(frame, weight)], highest weight first};
    {} for a frame model (its attention cells are empty) or an older file without the column."""
    persons: dict[str, list[tuple[str, float]]] = {}
    for row in read_csv(predictions_csv):
        if row.get("attention"):
            frame = frame_name(row["path"], row["frame"])
            persons.setdefault(row["person_id"], []).append((frame, float(row["attention"])))
    return {p: sorted(frames, key=lambda f: -f[1]) for p, frames in persons.items()}


# ---------------------------------------------------------------------------------------------
# Pieces of HTML
# ---------------------------------------------------------------------------------------------


def read_uniform(person_csv: Path) -> dict[str, bool]:
    """{person ID: its attention is near uniform} from person_predictions.csv; {} for a frame model."""
    return {r["person_id"]: r["attention_uniform"] == "yes" for r in read_csv(person_csv) if r.get("attention_uniform")}


def attention_line(
    frames: list[tuple[str, float]] | None, shown: int = 8, *, uniform: bool = False, pooling: str = "attention"
) -> str:
    """'Highest attention: a.png 0.412 · b.png 0.201 · …' for one person of a person model; where its attention is
    near uniform, that no frame is preferred (its largest weight against 1/n); '' for a frame model."""
    if not frames:
        return ""
    if uniform:
        return (
            f"<p class='attention'><b>{escape(uniform_sentence(pooling))}</b> (largest weight {frames[0][1]:.3f}, "
            f"equal weights would be {1 / len(frames):.3f} over its {len(frames)} frames)</p>"
        )
    listed = " · ".join(f"{escape(name)} <b>{weight:.3f}</b>" for name, weight in frames[:shown])
    more = f" · … {len(frames) - shown} more" if len(frames) > shown else ""
    return (
        f"<p class='attention'>Highest attention first ({len(frames)} frames; equal weights would be "
        f"{1 / len(frames):.3f}): {listed}{more}</p>"
    )


def image(path: Path, alt: str) -> str:
    """An <img> whose PNG is embedded as a data URI; '' when the file does not exist."""
    return png_image(path.read_bytes(), alt) if path.is_file() else ""


def png_image(png: bytes, alt: str) -> str:
    """An <img> of PNG bytes, embedded as a data URI."""
    data = base64.b64encode(png).decode("ascii")
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


def number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def with_ci(metrics: dict, level: str, key: str) -> str:
    interval = ((metrics.get("ci") or {}).get(level) or {}).get(key)
    point = number((metrics.get(level) or {}).get(key))
    return point + (f" [{interval['low']:.3f}, {interval['high']:.3f}]" if interval else "")


def calibration_table(section: dict) -> str:
    """metrics.json's calibration section (or cv_metrics.json's) as a table: one row per measure, one column
    per level (and before temperature scaling, when there was one)."""
    # A person model's sections have no image level (None).
    levels = [(name, level) for name, level in (("per image", "image"), ("per person", "person")) if section.get(level)]
    columns = [(name, section[level]) for name, level in levels]
    if section.get("before_temperature"):
        t = section.get("temperature") or 1.0
        columns = [(f"{name}, T=1", section["before_temperature"][level]) for name, level in levels] + [
            (f"{name}, T={t:.2f}", v) for name, v in columns
        ]
    rows = [
        [metric.name.replace("_", " ")] + [number(values.get(metric.name)) for _, values in columns]
        for metric in CALIBRATION_METRICS
        if metric.name in section["person"]
    ]
    return table(["calibration", *(name for name, _ in columns)], rows) + (
        f"<p class='sub'>ECE over {escape(section.get('binning', ''))}; slope and intercept of a logistic "
        "recalibration (1 and 0 when calibrated); n/a: not estimable on these probabilities.</p>"
    )


def notes(lines: list[str]) -> str:
    return "".join(f"<p class='sub'>{escape(line)}</p>" for line in lines)


def flow_boxes(data_report: dict, then: list[str]) -> str:
    """Persons in the sheet → matched to a folder → with readable frames → each of `then`."""
    in_sheet = data_report.get("persons_in_sheet", 0)
    matched = in_sheet - data_report.get("persons_without_folder", {}).get("count", 0)
    steps = [
        ("persons in the label sheet", in_sheet),
        ("matched to a folder", matched),
        ("with readable frames", matched - data_report.get("persons_without_images", {}).get("count", 0)),
    ]
    boxes = [f'<div class="box"><b>{n}</b>{escape(t)}</div>' for t, n in steps]
    boxes.append("".join(f'<div class="box">{escape(t)}</div>' for t in then))
    return '<div class="flow">' + '<span class="arrow">→</span>'.join(boxes) + "</div>"


def persons_table(rows: list[dict], csv_name: str, heading: str) -> str:
    """The rows of a person table (wrong ones shaded), at most MAX_TABLE_ROWS of them."""
    if not rows:
        return ""
    header = list(rows[0])
    wrong = ["wrong" if r.get("true_label") not in (None, r["predicted_label"]) else "" for r in rows]
    shown = rows[:MAX_TABLE_ROWS]
    more = f"<p class='sub'>… {len(rows) - len(shown)} more in {csv_name}</p>" if len(rows) > len(shown) else ""
    n_wrong = sum(1 for w in wrong if w)
    return (
        f'<h2 id="persons">{escape(heading)}</h2><p>{len(rows)} persons, {n_wrong} misclassified (shaded).</p>'
        + table(header, [[r[h] for h in header] for r in shown], wrong[: len(shown)])
        + more
    )


def checklist_table(items: list, recorded: str) -> str:
    rows, classes = [], []
    for item in items:
        status = "filled by carotid" if item.text else "researcher to write"
        rows.append([item.topic, item.guidelines, status, item.text or f"to write: {item.hint}"])
        classes.append("" if item.text else "todorow")
    filled = sum(1 for item in items if item.text)
    return (
        '<h2 id="checklist">Reporting checklist (CLAIM 2024, TRIPOD+AI)</h2>'
        f"<p>{filled} of {len(items)} topics filled from what {recorded}; "
        "<span class='todo'>researcher to write</span> marks what only you can report.</p>"
        + table(["topic", "asked for by", "status", "content"], rows, classes)
    )


def document(title: str, parts: list[str]) -> str:
    """A whole self-contained page: the style sheet inline, no favicon request, the non-empty parts in order."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'  # no favicon request
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(part for part in parts if part)
        + "</body></html>\n"
    )
