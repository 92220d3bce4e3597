"""Evaluate a model file per image and per person, with person-bootstrap confidence intervals.

    python -m carotid.evaluate --run-dir output/train_YYYYMMDD_HHMMSS [--split test] [--model best]
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid import checkpoint as ckpt
from carotid.data import frame_dataset, make_loader
from carotid.engine import predict_loader
from carotid.errors import run_cli
from carotid.metrics import aggregate_persons, bootstrap_ci, classification_metrics
from carotid.models import build_model, load_matching
from carotid.plots import plot_confusion, plot_roc
from carotid.transforms import eval_preset


def load_model_for_inference(model_path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(model with the file's weights, the file's metadata). Safe: weights_only loading."""
    data = ckpt.load_model_file(model_path)
    model = build_model(data["arch"], data["num_classes"], data["in_channels"])
    load_matching(model, data["state_dict"], f"model file {model_path}", data["arch"])
    return model.eval(), data


def run_inference(accelerator: Accelerator, model: torch.nn.Module, data: dict, items: list[tuple[str, int, str]], *,
                  batch_size: int, num_workers: int, cache: bool = False, cache_dir: str | None = None) -> tuple[dict, object]:
    """Probabilities of every frame in `items`, on all processes (each sees the gathered arrays)."""
    dataset = frame_dataset(items, data["image_size"], data["in_channels"], cache=cache, cache_dir=cache_dir,
                            accelerator=accelerator)
    loader = accelerator.prepare(make_loader(dataset, batch_size, train=False, num_workers=num_workers, seed=0,
                                             pin_memory=accelerator.device.type == "cuda"))
    model = model.to(accelerator.device)
    preset = eval_preset(data["normalization"]["mean"], data["normalization"]["std"]).to(accelerator.device)
    out = predict_loader(model, loader, accelerator, preset, desc="predict")
    return out, dataset


def evaluate_model(accelerator: Accelerator, model_path: str | Path, items: list[tuple[str, int, str]], out_dir: str | Path, *,
                   split: str, batch_size: int = 64, num_workers: int = 4, bootstrap: int = 1000, aggregation: str | None = None,
                   seed: int = 0, threshold: float | None = None, cache: bool = False, cache_dir: str | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Predict every frame of `items`, write metrics.json, the two prediction CSVs and the figures."""
    model, data = load_model_for_inference(model_path)
    out, dataset = run_inference(accelerator, model, data, items, batch_size=batch_size, num_workers=num_workers,
                                 cache=cache, cache_dir=cache_dir)
    report = None
    if accelerator.is_main_process:
        report = write_evaluation(out, dataset, data, Path(out_dir), model_path=str(model_path), split=split,
                                  bootstrap=bootstrap, aggregation=aggregation or data.get("person_aggregation", "mean"),
                                  seed=seed, threshold=threshold)
        log(format_table(report))
        log(f"evaluation written to {out_dir}")
    accelerator.wait_for_everyone()
    return report


def write_evaluation(out: dict, dataset, data: dict, out_dir: Path, *, model_path: str, split: str, bootstrap: int,
                     aggregation: str, seed: int, threshold: float | None) -> dict:
    class_names = list(data["class_names"])
    positive_index = int(data.get("positive_index", len(class_names) - 1))
    ok = out["readable"].astype(bool)
    index = out["index"][ok]
    paths = np.asarray(dataset.paths)[index]
    persons = np.asarray(dataset.person_ids)[index]
    labels, probs = out["labels"][ok], out["probs"][ok].astype(np.float64)
    unreadable = [str(p) for p in np.asarray(dataset.paths)[out["index"][~ok]]]
    if threshold is not None:
        source = "--threshold"
    elif data.get("threshold") is not None and len(class_names) == 2:
        threshold, source = float(data["threshold"]), "model file (Youden's J on the validation persons)"
    else:
        threshold, source = 0.5, "default 0.5"
    notes: list[str] = []
    image_metrics, image_notes = classification_metrics(labels, probs, class_names, positive_index, threshold)
    person_ids, person_probs = aggregate_persons(persons, probs, aggregation, positive_index)
    first = {p: labels[i] for i, p in reversed(list(enumerate(persons)))}
    person_labels = np.array([first[p] for p in person_ids], dtype=int)
    person_metrics, person_notes = classification_metrics(person_labels, person_probs, class_names, positive_index, threshold)
    notes += [f"image: {n}" for n in image_notes] + [f"person: {n}" for n in person_notes]
    for note in notes:
        warnings.warn(note, stacklevel=2)
    report = {
        "model_file": model_path, "split": split, "class_names": class_names,
        "positive_class": class_names[positive_index] if len(class_names) == 2 else None,
        "n_images": int(len(labels)), "n_persons": int(len(person_ids)),
        "threshold": threshold if len(class_names) == 2 else None, "threshold_source": source if len(class_names) == 2 else None,
        "person_aggregation": aggregation,
        "image": image_metrics, "person": person_metrics,
        "ci": bootstrap_ci(persons, labels, probs, n_classes=len(class_names), positive_index=positive_index,
                           threshold=threshold, n_resamples=bootstrap, seed=seed, aggregation=aggregation) if bootstrap else None,
        "warnings": notes, "unreadable_images": unreadable,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_json(out_dir / "metrics.json", report)
    predicted = _predicted(probs, threshold, positive_index, class_names)
    _write_rows(out_dir / "predictions.csv", ["path", "person_id", "true_label"] + [f"prob_{c}" for c in class_names] + ["predicted_label"],
                [[p, q, class_names[y], *map(_prob, pr), class_names[k]] for p, q, y, pr, k in zip(paths, persons, labels, probs, predicted)])
    counts = dict(zip(*np.unique(persons, return_counts=True)))
    person_predicted = _predicted(person_probs, threshold, positive_index, class_names)
    _write_rows(out_dir / "person_predictions.csv", ["person_id", "true_label", "n_frames"] + [f"prob_{c}" for c in class_names] + ["predicted_label"],
                [[q, class_names[y], int(counts[q]), *map(_prob, pr), class_names[k]]
                 for q, y, pr, k in zip(person_ids, person_labels, person_probs, person_predicted)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. fonts without CJK glyphs for Chinese class names
        plot_roc({"image": (labels, probs), "person": (person_labels, person_probs)}, class_names, positive_index, out_dir / "roc_curve.png")
        plot_confusion({"image": image_metrics["confusion_matrix"], "person": person_metrics["confusion_matrix"]}, class_names,
                       out_dir / "confusion_matrix.png")
    return report


def _prob(value: float) -> str:
    return f"{value:.6f}"


def _predicted(probs: np.ndarray, threshold: float, positive_index: int, class_names: list[str]) -> np.ndarray:
    if len(class_names) == 2:
        return np.where(probs[:, positive_index] >= threshold, positive_index, 1 - positive_index)
    return probs.argmax(axis=1)


def _write_rows(path: Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    ckpt.atomic_write_text(path, buffer.getvalue())


def format_table(report: dict) -> str:
    """A short table: each metric per image and per person, with its 95% CI."""
    keys = ["auc", "accuracy", "balanced_accuracy"] + (["sensitivity", "specificity", "ppv", "npv"] if report["threshold"] is not None else [])
    lines = [f"{report['split']} split: {report['n_images']} images, {report['n_persons']} persons"
             + (f"; threshold {report['threshold']:.3f} ({report['threshold_source']})" if report["threshold"] is not None else "")]
    lines.append(f"{'metric':<18}{'per image':<26}{'per person':<26}")
    for key in keys:
        cells = []
        for level in ("image", "person"):
            value = report[level].get(key)
            ci = ((report.get("ci") or {}).get(level) or {}).get(key)
            text = "n/a" if value is None else f"{value:.3f}"
            if ci:
                text += f" [{ci['low']:.3f}, {ci['high']:.3f}]"
            cells.append(f"{text:<26}")
        lines.append(f"{key:<18}" + "".join(cells))
    return "\n".join(lines)


def _main(argv: Sequence[str] | None) -> int:
    raise NotImplementedError("the evaluate CLI is being built")


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
