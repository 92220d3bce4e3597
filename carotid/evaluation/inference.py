"""Apply a model file to frames on 1..N processes: the inference shared by evaluation and predict.

Predicts every frame exactly once however many processes run, turns probabilities into labels (the
model's binary threshold, else argmax) and per-person rows, and writes the per-image and per-person
prediction tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from carotid.core.files import write_table
from carotid.core.predict import predict_loader
from carotid.data.folders.readable import dataset_decoding
from carotid.data.frames.decode import SEEN
from carotid.data.frames.frame import Frame
from carotid.data.frames.transforms import eval_preset
from carotid.data.loaders import frame_dataset, make_loader, stop_workers, stop_workers_at_exit
from carotid.evaluation.aggregation import aggregate_persons, person_labels
from carotid.evaluation.attention import AttentionSpread, attention_spread
from carotid.evaluation.calibration import apply_temperature
from carotid.evaluation.person_inference import predict_persons
from carotid.model.file import ModelFile


@dataclass
class FramePredictions:
    """The readable frames of a set of items, in item order, with their class probabilities.

    A frame is named by its file (`paths`) and its frame number in it (`frames`). `unreadable` lists the
    frames that could not be decoded ({"path", "frame", "reason", ...}); `decoding` counts the outcomes."""

    paths: np.ndarray
    frames: np.ndarray
    person_ids: np.ndarray
    labels: np.ndarray
    probs: np.ndarray  # what the model file gives: softmax(logits / temperature)
    unreadable: list[dict] = field(default_factory=list)
    decoding: dict = field(default_factory=dict)
    logits: np.ndarray | None = None  # the raw outputs, for calibration before temperature scaling
    temperature: float | None = None  # the model file's, applied to `probs`
    # Person models: each frame's weight in its person's pooling; `probs` and `logits` are then its person's
    attention: np.ndarray | None = None

    @property
    def person_level(self) -> bool:
        """Whether these come from a person model: one probability per person, repeated on its frames."""
        return self.attention is not None

    def person_rows(self) -> FramePredictions:
        """One row per person (sorted IDs) of a person model's predictions: what its numbers are computed on."""
        ids, first = np.unique(self.person_ids, return_index=True)
        logits = None if self.logits is None else self.logits[first]
        return FramePredictions(
            self.paths[first], self.frames[first], ids, self.labels[first], self.probs[first],
            self.unreadable, self.decoding, logits, self.temperature, self.attention[first],
        )  # fmt: skip


def run_inference(
    accelerator: Accelerator,
    model: torch.nn.Module,
    model_file: ModelFile,
    frames: list[Frame],
    *,
    batch_size: int,
    num_workers: int,
    cache: bool = False,
    cache_dir: str | None = None,
) -> FramePredictions:
    """Probabilities of every frame in `frames`, on all processes (each gets the gathered arrays).

    Frames are preprocessed as the model was trained (model_file.prep). Frames that cannot be decoded are
    left out and listed in `unreadable`, with the reason, on the main process (the cached dataset leaves
    them out itself and names them in `excluded`)."""
    prep = model_file.prep
    dataset = frame_dataset(
        frames,
        prep.image_size,
        prep.in_channels,
        resize=prep.resize,
        crop=prep.crop,
        cache=cache,
        cache_dir=cache_dir,
        accelerator=accelerator,
    )
    # prepare_data_loader, not prepare: the model needs no DDP/DeepSpeed wrapper to predict.
    loader = accelerator.prepare_data_loader(
        make_loader(
            dataset,
            batch_size,
            train=False,
            num_workers=num_workers,
            seed=0,
            pin_memory=accelerator.device.type == "cuda",
        )
    )
    preset = eval_preset(model_file.normalization["mean"], model_file.normalization["std"]).to(accelerator.device)
    if model_file.person_level:
        return _person_inference(accelerator, model, model_file, dataset, batch_size, num_workers, preset)
    try:
        out = exactly_once(
            predict_loader(
                model.to(accelerator.device, memory_format=torch.channels_last),
                stop_workers_at_exit(loader),
                accelerator,
                preset,
                channels_last=True,
                desc="predict",
            ),
            len(dataset),
        )
    finally:
        stop_workers(loader)  # one pass: the workers are done
    return _frame_predictions(accelerator, dataset, out, model_file)


def _frame_predictions(accelerator: Accelerator, dataset, out: dict, model_file: ModelFile) -> FramePredictions:
    """The decodable frames' predictions (after the model's temperature), with the decode report of the rest."""
    prep = model_file.prep
    ok = out["status"] > 0
    paths, persons = np.array(dataset.paths, dtype=str), np.array(dataset.person_ids, dtype=str)
    numbers = np.array([f.index for f in dataset.frames], dtype=np.int64)
    decoding: dict = {}
    if accelerator.is_main_process:  # reasons come from decoding the failed frames again: once, here
        decoding = dataset_decoding(dataset, out["status"] | SEEN, prep)
    logits, temperature = out["logits"][ok].astype(np.float64), model_file.temperature
    probs = out["probs"][ok].astype(np.float64) if temperature is None else apply_temperature(logits, temperature)
    return FramePredictions(
        paths[ok],
        numbers[ok],
        persons[ok],
        out["labels"][ok],
        probs,
        decoding.pop("unreadable", []),
        decoding,
        logits,
        temperature,
    )


def _person_inference(accelerator, model, model_file, dataset, batch_size, num_workers, preset) -> FramePredictions:
    """run_inference for a person model: every person once (predict_persons), its probability on each of its
    readable frames beside the frame's attention. A person without a readable frame is left out."""
    out = predict_persons(
        model.to(accelerator.device, memory_format=torch.channels_last),
        dataset,
        accelerator,
        preset,
        batch_size=batch_size,
        num_workers=num_workers,
        channels_last=True,
        desc="predict",
    )
    persons = np.array(dataset.person_ids, dtype=str)
    row = np.searchsorted(out["person_ids"], persons)
    ok = (out["status"] > 0) & np.isin(persons, out["person_ids"])
    row = row[ok]
    decoding: dict = {}
    if accelerator.is_main_process:
        decoding = dataset_decoding(dataset, out["status"] | SEEN, model_file.prep)
    logits, temperature = out["logits"].astype(np.float64), model_file.temperature
    probs = out["probs"] if temperature is None else apply_temperature(logits, temperature)
    return FramePredictions(
        np.array(dataset.paths, dtype=str)[ok],
        np.array([f.index for f in dataset.frames], dtype=np.int64)[ok],
        persons[ok],
        np.asarray(dataset.labels)[ok],
        probs[row],
        decoding.pop("unreadable", []),
        decoding,
        logits[row],
        temperature,
        out["attention"][ok],
    )


def exactly_once(out: dict[str, np.ndarray], n_items: int) -> dict[str, np.ndarray]:
    """One row per sample index, and a check that every sample came back.

    Accelerate pads the last batches so every process gets one, and gather_for_metrics drops the
    padding again; keeping the first row of each index makes that independent of the Accelerate
    version, so 1 and N processes give the same arrays."""
    _, first = np.unique(out["index"], return_index=True)
    out = {key: value[first] for key, value in out.items()}
    if not np.array_equal(out["index"], np.arange(n_items)):
        raise RuntimeError(f"distributed prediction returned {len(out['index'])} of {n_items} frames")
    return out


def decision_threshold(model_file: ModelFile, threshold: float | None) -> tuple[float | None, str | None]:
    """(binary threshold on the positive class, where it came from); (None, None) for multi-class models."""
    if not model_file.binary:
        return None, None
    if threshold is not None:
        return float(threshold), "--threshold"
    if model_file.threshold is not None:
        return model_file.threshold, model_file.threshold_source or "model file: Youden's J on the validation persons"
    return 0.5, "default 0.5: the model file holds no threshold"


def predicted_labels(probs: np.ndarray, threshold: float | None, positive: int) -> np.ndarray:
    """Class indices: binary by the threshold on the positive class, multi-class by argmax."""
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)


@dataclass
class PersonPredictions:
    """One row per person (sorted IDs): aggregated probabilities, frames, and the true class if labelled."""

    person_ids: np.ndarray
    probs: np.ndarray
    n_frames: np.ndarray
    labels: np.ndarray | None = None
    attention: AttentionSpread | None = None  # a person model's: how its attention spreads over each person's frames


def person_predictions(
    preds: FramePredictions, aggregation: str, positive: int, labelled: bool = False
) -> PersonPredictions:
    """Frame probabilities aggregated per person; a person model's own person probabilities as they are."""
    if preds.person_level:
        person_ids, probs = np.unique(preds.person_ids), preds.person_rows().probs
    else:
        person_ids, probs = aggregate_persons(preds.person_ids, preds.probs, aggregation, positive)
    _, n_frames = np.unique(preds.person_ids, return_counts=True)
    labels = person_labels(preds.person_ids, preds.labels, person_ids) if labelled else None
    spread = None
    if preds.person_level and np.isfinite(preds.attention).any():  # NaN: pooled out-of-fold rows have no weights
        spread = attention_spread(preds.person_ids, preds.attention, person_ids)
    return PersonPredictions(person_ids, probs, n_frames, labels, spread)


def write_prediction_tables(
    frame_path: Path,
    person_path: Path,
    preds: FramePredictions,
    persons: PersonPredictions,
    class_names: list[str],
    threshold: float | None,
    positive: int,
) -> np.ndarray:
    """The per-image CSV (a frame is its file and its frame number) and the per-person CSV (with a true_label
    column when labelled; a person model's with its attention's entropy, largest weight x n and whether it is
    near uniform); returns the persons' predicted labels."""
    labelled = persons.labels is not None
    truth = (lambda y: [class_names[y]]) if labelled else (lambda y: [])
    probs = [f"prob_{name}" for name in class_names]
    write_table(
        frame_path,
        ["path", "frame", "person_id"] + ["true_label"] * labelled + probs + ["predicted_label", "attention"],
        (
            [p, i, q, *truth(y), *rest]
            for p, i, q, y, rest in zip(
                preds.paths,
                preds.frames,
                preds.person_ids,
                preds.labels,
                _frame_cells(preds, class_names, threshold, positive),
            )
        ),
    )
    person_predicted = predicted_labels(persons.probs, threshold, positive)
    person_truth = persons.labels if labelled else np.zeros(len(persons.person_ids), dtype=int)
    spread = persons.attention
    write_table(
        person_path,
        ["person_id"] + ["true_label"] * labelled + ["n_frames"] + probs + ["predicted_label"]
        + (ATTENTION_COLUMNS if spread is not None else []),
        (
            [q, *truth(y), n, *_decimals(r), class_names[k], *_spread_cells(spread, i)]
            for i, (q, y, n, r, k) in enumerate(
                zip(persons.person_ids, person_truth, persons.n_frames, persons.probs, person_predicted)
            )
        ),
    )  # fmt: skip
    return person_predicted


ATTENTION_COLUMNS = ["attention_entropy", "attention_max_ratio", "attention_uniform"]


def _spread_cells(spread: AttentionSpread | None, i: int) -> list[str]:
    """A person's attention cells: entropy (nats), largest weight x n, near uniform (yes/no); none for frames."""
    if spread is None:
        return []
    if not np.isfinite(spread.max_ratio[i]):
        return ["", "", ""]
    return [f"{spread.entropy[i]:.6f}", f"{spread.max_ratio[i]:.6f}", "yes" if spread.uniform[i] else "no"]


def _frame_cells(preds: FramePredictions, class_names: list[str], threshold: float | None, positive: int):
    """Each frame's probabilities, predicted label and attention cells: a frame model's own probabilities and no
    attention; a person model's attention and empty probability cells (it gives a probability per person only)."""
    if preds.person_level:
        blank = [""] * (preds.probs.shape[1] + 1)
        return ([*blank, f"{a:.6f}"] for a in preds.attention)
    predicted = predicted_labels(preds.probs, threshold, positive)
    return ([*_decimals(r), class_names[k], ""] for r, k in zip(preds.probs, predicted))


def _decimals(row: np.ndarray) -> list[str]:
    """Every digit (repr: the shortest text that reads back as the same number), so the metrics recomputed
    from the CSV equal the page's, near-ties at the threshold included."""
    return [repr(float(value)) for value in row]
