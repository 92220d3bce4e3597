"""The per-person figures of an evaluation or a prediction: Grad-CAM montages (`--heatmaps N`) and the
failure gallery, the most wrong persons each with its frame-probability strip and its montage, listed
in failures.csv (report.html shows them). A person model's strip shows each frame's attention instead (it
gives no frame probabilities), and its montages the frames of highest attention first.

Order: in a binary (screening) task the missed positive persons (false negatives) first, then the
false positives, each from the most confidently wrong; in a multi-class task by the probability given
to the true class, lowest first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from carotid.core.files import write_table
from carotid.evaluation.attention import uniform_sentence
from carotid.evaluation.inference import FramePredictions, PersonPredictions
from carotid.model.file import ModelFile
from carotid.report.attention import plot_attention_strip
from carotid.report.heatmaps import (
    GradCamRenderer,
    PersonFrames,
    decisive_frames,
    explained_class,
    file_name,
    group_persons,
    write_montage,
    write_montages,
)
from carotid.report.plots import plot_probability_strip

GALLERY_FRAMES = 4  # frames in a failure's montage when --heatmaps does not say

FAILURE_COLUMNS = [
    "rank",
    "person_id",
    "kind",
    "true_label",
    "predicted_label",
    "score",
    "n_frames",
    "strip",
    "montage",
]


def most_wrong(persons: list[PersonFrames], positive: int, binary: bool, threshold: float | None, k: int) -> list:
    """Up to k misclassified persons, the worst first (see the module's docstring)."""
    wrong = [p for p in persons if p.true is not None and p.predicted != p.true]

    def key(person: PersonFrames) -> tuple:
        if binary:
            missed = person.true == positive
            distance = abs(person.person_prob[positive] - (0.5 if threshold is None else threshold))
            return (0 if missed else 1, -distance, person.person_id)
        return (0, person.person_prob[person.true], person.person_id)

    return sorted(wrong, key=key)[:k]


def failure_kind(person: PersonFrames, positive: int, binary: bool) -> str:
    if not binary:
        return "misclassified"
    return "false negative" if person.true == positive else "false positive"


def write_strip(person: PersonFrames, path: Path, *, score: int, title: str, shown: np.ndarray, **rule) -> None:
    """The failure's strip: its frames' probabilities of class `score` (frame models) or their attention."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if person.attention is not None:
        plot_attention_strip(person.attention, path, title=title, marked=shown)
        return
    plot_probability_strip(
        person.frame_probs[:, score],
        rule["class_name"],
        path,
        person_prob=float(person.person_prob[score]),
        threshold=rule["threshold"],
        title=title,
        marked=shown,
    )


def write_gallery(
    failures: list[PersonFrames],
    frames: list[tuple[str, int]],
    out_dir: Path,
    *,
    renderer: GradCamRenderer | None,
    montages: dict[str, Path],
    names: dict[str, str],
    n_frames: int,
    class_names: list[str],
    positive: int,
    threshold: float | None,
    aggregation: str,
) -> list[dict]:
    """failures/<person>_strip.png for each failure (and its montage in heatmaps/ when none was made yet),
    and failures.csv; returns the rows of failures.csv."""
    binary = len(class_names) == 2
    rows = []
    for rank, person in enumerate(failures, start=1):
        name = names[person.person_id]
        montage = montages.get(person.person_id)
        shown = decisive_frames(person, explained_class(person, positive, binary), n_frames)
        if montage is None and renderer is not None:
            montage = out_dir / "heatmaps" / f"{name}.png"
            montage.parent.mkdir(parents=True, exist_ok=True)
            write_montage(
                renderer,
                person,
                frames,
                montage,
                n_frames=n_frames,
                class_names=class_names,
                positive=positive,
                threshold=threshold,
                aggregation=aggregation,
            )
        score = positive if binary else person.true
        strip = out_dir / "failures" / f"{name}_strip.png"
        kind = failure_kind(person, positive, binary)
        pooled = aggregation if person.attention is None else "pooled embeddings"
        write_strip(
            person,
            strip,
            score=score,
            title=f"#{rank} {person.person_id}: {kind}, true {class_names[person.true]}, "
            f"predicted {class_names[person.predicted]} ({pooled} of {len(person.rows)} frames)",
            shown=shown,
            class_name=class_names[score],
            threshold=threshold if binary else None,
        )
        rows.append(
            {
                "rank": rank,
                "person_id": person.person_id,
                "kind": kind,
                "true_label": class_names[person.true],
                "predicted_label": class_names[person.predicted],
                "score": f"P({class_names[score]}) {person.person_prob[score]:.3f}",
                "n_frames": len(person.rows),
                "strip": str(strip.relative_to(out_dir)),
                "montage": str(montage.relative_to(out_dir)) if montage else "",
            }
        )
    write_table(out_dir / "failures.csv", FAILURE_COLUMNS, ([row[c] for c in FAILURE_COLUMNS] for row in rows))
    return rows


def write_attention_strips(
    persons: list[PersonFrames], folder: Path, names: dict[str, str], pooling: str, n_frames: int
) -> None:
    """attention/<person>.png in the montages' folder: each person's attention over its frame order (the montage's
    frames in red), and the uniform sentence where no frame is preferred."""
    folder.mkdir(parents=True, exist_ok=True)
    for person in persons:
        plot_attention_strip(
            person.attention,
            folder / f"{names[person.person_id]}.png",
            title=f"{person.person_id}: attention over its {len(person.rows)} frames",
            marked=decisive_frames(person, person.predicted, n_frames),
            note=uniform_sentence(pooling) if person.uniform else None,
        )


def write_person_figures(
    model_file: ModelFile,
    preds: FramePredictions,
    persons: PersonPredictions,
    predicted: np.ndarray,
    out_dir: Path,
    *,
    heatmaps: int,
    failures: int,
    threshold: float | None,
    aggregation: str,
    device: torch.device | str = "cpu",
    heatmap_dir: Path | None = None,
) -> dict[str, Path]:
    """Grad-CAM montages of `heatmaps` frames for every person (in heatmap_dir, default out_dir/heatmaps) and,
    for labelled persons, the failure gallery of the `failures` most wrong; returns {person ID: montage}."""
    class_names, positive = model_file.class_names, model_file.positive_index
    binary = len(class_names) == 2
    grouped = group_persons(
        preds.person_ids, preds.probs, persons.person_ids, persons.probs, predicted, persons.labels, preds.attention
    )
    taken: set[str] = set()
    names = {p.person_id: file_name(p.person_id, taken) for p in grouped}
    labelled = persons.labels is not None
    worst = most_wrong(grouped, positive, binary, threshold, failures) if labelled else []
    renderer = GradCamRenderer(model_file, device) if heatmaps or worst else None
    frames = list(zip(preds.paths.tolist(), preds.frames.tolist()))
    try:
        settings = {
            "class_names": class_names,
            "positive": positive,
            "threshold": threshold,
            "aggregation": aggregation,
        }
        montages = {}
        if heatmaps:
            folder = heatmap_dir or out_dir / "heatmaps"
            montages = write_montages(renderer, grouped, frames, folder, n_frames=heatmaps, names=names, **settings)
            if preds.attention is not None:
                write_attention_strips(grouped, folder / "attention", names, model_file.person_model, heatmaps)
        if labelled and failures:
            write_gallery(
                worst,
                frames,
                out_dir,
                renderer=renderer,
                montages=montages,
                names=names,
                n_frames=heatmaps or GALLERY_FRAMES,
                **settings,
            )
    finally:
        if renderer is not None:
            renderer.close()
    return montages
