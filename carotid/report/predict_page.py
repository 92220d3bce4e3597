"""The page `carotid-predict --report` writes beside its CSVs: one self-contained HTML file per input, one row per
person with the verdict, the probability against the threshold (both from the model file), the frames that
drove it (highest probability for a frame model, highest attention for a person model, each named by its file
and 1-based frame number), the attention over the frame order for a person model, the heat-map montage when
--heatmaps wrote one, and what the model was trained and validated on. Every text is escaped."""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np

from carotid.core.files import atomic_write_text
from carotid.evaluation.attention import person_uniform, uniform_sentence
from carotid.report.attention import attention_png
from carotid.report.heatmaps import file_name
from carotid.report.page import document, frame_name, image, png_image, table

TOP_FRAMES = 3  # frames named per person


def trained_on(model_file) -> list[list[str]]:
    """What the model is and what it learned from, as the model file records it."""
    config = model_file.config or {}
    rows = [
        ["model", f"{model_file.arch} ({model_file.person_model} person model)"],
        ["classes", ", ".join(model_file.class_names)],
        ["positive class", model_file.class_names[model_file.positive_index]],
        ["input", f"{model_file.image_size} px, {model_file.in_channels} channel(s)"],
        ["trained epochs / chosen epoch", f"{config.get('epochs', 'not recorded')} / {model_file.epoch}"],
        ["training labels", str(config.get("label_excel", "not recorded"))],
        ["training images", str(config.get("root_dir", "not recorded"))],
        [
            "split",
            f"train/val/test = {config.get('train_ratio')}/{config.get('val_ratio')}/{config.get('test_ratio')}, "
            f"seed {config.get('seed')}"
            if config
            else "not recorded",
        ],
    ]
    return [[k, v] for k, v in rows]


def person_rows(preds, persons, predicted, class_names, positive: int, threshold) -> list[dict]:
    """Per person: verdict, probability, and its top frames (with weight or probability) in frame order."""
    rows = []
    paths, frames, ids = np.asarray(preds.paths), np.asarray(preds.frames), np.asarray(preds.person_ids)
    for i, person in enumerate(persons.person_ids):
        mine = np.flatnonzero(ids == person)
        order = np.lexsort((frames[mine], paths[mine]))  # frame order: file, then frame number
        mine = mine[order]
        names = [frame_name(paths[j], frames[j]) for j in mine]
        if preds.person_level:
            weights, what = np.asarray(preds.attention)[mine], "attention"
        else:
            weights, what = np.asarray(preds.probs)[mine, positive], f"P({class_names[positive]})"
        top = np.argsort(-weights, kind="stable")[:TOP_FRAMES]
        rows.append(
            {
                "person_id": str(person),
                "verdict": class_names[predicted[i]],
                "probability": float(persons.probs[i, positive]),
                "threshold": threshold,
                "top": [(names[t], float(weights[t])) for t in top],
                "top_positions": top,
                "what": what,
                "attention": weights if preds.person_level else None,  # in frame order
            }
        )
    return rows


def attention_strip(row: dict, pooling: str) -> str:
    """A person model's attention over the frame order: report.attention's strip (the run report's drawing, its
    top frames in red), embedded; '' for a frame model."""
    weights = row["attention"]
    if weights is None:
        return ""
    png = attention_png(
        weights,
        title=f"{row['person_id']}: attention over its {len(weights)} frames",
        marked=row["top_positions"],
        note=uniform_sentence(pooling) if person_uniform(weights) else None,
    )
    return png_image(png, f"attention of {row['person_id']}")


def build_predict_page(rows: list[dict], model_file, source: str, heatmap_dir: Path | None, note: str) -> str:
    positive = model_file.class_names[model_file.positive_index]
    title = f"carotid — predictions for {Path(source).name}"
    summary = [
        [
            r["person_id"],
            r["verdict"],
            f"{r['probability']:.3f}",
            "argmax" if r["threshold"] is None else f"{r['threshold']:.3f}",
            "; ".join(f"{n} ({w:.3f})" for n, w in r["top"]),
        ]
        for r in rows
    ]
    header = ["person", "verdict", f"P({positive})", "threshold", "top frames (weight)"]
    taken: set[str] = set()
    montages = {p: file_name(p, taken) for p in sorted(r["person_id"] for r in rows)}
    details = []
    for r in rows:
        montage = (
            image(heatmap_dir / f"{montages[r['person_id']]}.png", f"heat maps of {r['person_id']}")
            if heatmap_dir
            else ""
        )
        details.append(
            f"<h3>{escape(r['person_id'])}: {escape(r['verdict'])} (P({escape(positive)}) {r['probability']:.3f})</h3>"
            + attention_strip(r, model_file.person_model)
            + (montage or "<p class='sub'>no heat maps (pass --heatmaps N)</p>")
        )
    body = [
        f"<h1>{escape(title)}</h1><p class='sub'>{escape(note)}</p>",
        '<h2 id="persons">Per person</h2>' + table(header, summary),
        '<h2 id="model">What the model was trained on</h2>' + table(["what", "value"], trained_on(model_file)),
        '<h2 id="details">Frames, attention and heat maps</h2>' + "".join(details),
    ]
    return document(title, body)


def write_predict_page(path: Path, rows: list[dict], model_file, source: str, heatmap_dir, note: str) -> Path:
    atomic_write_text(path, build_predict_page(rows, model_file, source, heatmap_dir, note))
    return path
