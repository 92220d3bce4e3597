"""Grad-CAM heat maps: per person, a montage of the frames its result rests on.

One class throughout a montage (`explained_class`): in a binary (screening) task always the positive class, named
in the title — the person's P(positive), each frame's P(positive) and Grad-CAM for the positive class — so a
montage of a negative person shows the frames that came closest to positive and what in them raised P(positive);
in a multi-class task the person's predicted class. A frame model's montage shows the frames most in favour of
that class (`decisive_frames`). A person model (`--person-model attention|mean`) has no frame probabilities: its
montage shows the frames with the highest attention first, each with its weight (a person whose attention is near
uniform: frames spread over its sweep in order, and the title says no frame is preferred), and Grad-CAM explains
each frame's embedding through the person head (`PersonFrameLogits`). Each frame is captioned by its file and, in
a multi-frame file, its 1-based frame number (`page.frame_name`). A map that is blank (constant: nothing in the
frame moved the class's score) is said to be blank and the frame shown without an overlay. Grad-CAM comes from the
`grad-cam` package (pytorch_grad_cam); the layer it hooks is chosen per architecture in `carotid.model.registry`.

Montages are written by one process only (the caller's main process), one PNG per person.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from carotid.data.frames.decode import decode_frames
from carotid.data.frames.transforms import eval_preset
from carotid.evaluation.attention import person_uniform, uniform_sentence
from carotid.model.file import ModelFile
from carotid.model.gradcam import target_layer
from carotid.report.page import frame_name
from carotid.report.plots import new_figure, save_figure

BATCH = 16  # frames per Grad-CAM pass: forward and backward of one batch
BLANK_RANGE = 1e-6  # a map whose values span no more than this is blank (constant)


@dataclass
class PersonFrames:
    """One person's frames (rows of the frame-prediction arrays, in frame order) and its result."""

    person_id: str
    rows: np.ndarray
    frame_probs: np.ndarray  # (frames, classes)
    person_prob: np.ndarray  # (classes,)
    predicted: int
    true: int | None  # None where unlabelled (predict)
    attention: np.ndarray | None = None  # person models: each frame's weight in the pooling; None for frame models

    @property
    def uniform(self) -> bool:
        """A person model's person whose attention prefers no frame (carotid.evaluation.attention's rule)."""
        return self.attention is not None and person_uniform(self.attention)


def group_persons(
    frame_person_ids: np.ndarray,
    frame_probs: np.ndarray,
    person_ids: np.ndarray,
    person_probs: np.ndarray,
    predicted: np.ndarray,
    labels: np.ndarray | None,
    attention: np.ndarray | None = None,
) -> list[PersonFrames]:
    """The PersonFrames of every person, in the order of `person_ids` (sorted, as PersonPredictions);
    `attention` (a person model's, one weight per frame row) is split the same way."""
    order = np.argsort(np.asarray(frame_person_ids), kind="stable")  # keeps each person's frame order
    ids, starts = np.unique(np.asarray(frame_person_ids)[order], return_index=True)
    rows = dict(zip(ids, np.split(order, starts[1:])))
    return [
        PersonFrames(
            str(p),
            rows[p],
            frame_probs[rows[p]],
            person_probs[i],
            int(predicted[i]),
            None if labels is None else int(labels[i]),
            None if attention is None else np.asarray(attention, dtype=float)[rows[p]],
        )
        for i, p in enumerate(person_ids)
    ]


def explained_class(person: PersonFrames, positive: int, binary: bool) -> int:
    """The one class of a person's montage: the positive class in a binary task, else the class it was called."""
    return positive if binary else person.predicted


def decisive_frames(person: PersonFrames, target: int, n: int) -> np.ndarray:
    """Positions (into the person's frames) of its n frames most in favour of class `target`, strongest first; a
    person model's: its n frames of highest attention, highest first (the frames its result rests on); where its
    attention is near uniform none is preferred, so n frames spread evenly over the sweep, in order."""
    if person.uniform:
        return np.unique(np.linspace(0, len(person.rows) - 1, min(n, len(person.rows))).round().astype(int))
    if person.attention is not None:
        return np.argsort(-person.attention, kind="stable")[:n]
    return np.argsort(-person.frame_probs[:, target], kind="stable")[:n]


def file_name(person_id: str, taken: set[str]) -> str:
    """A file name for a person's figure: the ID with path-unsafe characters replaced, unique within `taken`."""
    base = re.sub(r"[^\w.-]+", "_", person_id).strip("._") or "person"
    name, k = base, 1
    while name.lower() in taken:  # case-insensitive file systems
        k += 1
        name = f"{base}_{k}"
    taken.add(name.lower())
    return name


def blank_map(cam: np.ndarray) -> bool:
    """A Grad-CAM map that says nothing: constant (pytorch_grad_cam scales each map to [0, 1], so a map in which no
    region moved the class's score comes back all zero)."""
    return float(np.max(cam) - np.min(cam)) <= BLANK_RANGE


def panel_caption(person: PersonFrames, k: int, frame: tuple[str, int], target: int, class_name: str, blank: bool):
    """A montage panel's caption: the frame by its file (and 1-based frame number), its P(class) or its attention,
    and 'Grad-CAM blank' where its map is."""
    if person.attention is None:
        weight = f"P({class_name}) {person.frame_probs[k, target]:.3f}"
    else:
        weight = f"attention {person.attention[k]:.3f}"
    return f"{frame_name(*frame)}\n{weight}" + ("\nGrad-CAM blank (constant map)" if blank else "")


class PersonFrameLogits(nn.Module):
    """A person model seen frame by frame, for Grad-CAM: each frame's embedding through the person head.

    The head is linear, so the person's logits are the attention-weighted sum of these frame logits: a frame's map
    shows what in it pushes the person's result toward the class, independent of the other frames."""

    def __init__(self, person_model: nn.Module):
        super().__init__()
        self.person_model = person_model

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.person_model.classifier(self.person_model.encode(frames))


class GradCamRenderer:
    """A model file's network with Grad-CAM hooked on its target layer; `maps` explains a list of frames."""

    def __init__(self, model_file: ModelFile, device: torch.device | str = "cpu"):
        from pytorch_grad_cam import GradCAM

        self.model_file = model_file
        self.device = torch.device(device)
        network = model_file.build_model().to(self.device)
        self.model = PersonFrameLogits(network) if model_file.person_level else network
        self.preset = eval_preset(model_file.normalization["mean"], model_file.normalization["std"]).to(self.device)
        # The layer is chosen by the architecture (a ViT's token grid reshaped to maps); `layer_name` is recorded.
        self.layer_name, layer, reshape = target_layer(network, model_file.arch)
        self.cam = GradCAM(model=self.model, target_layers=[layer], reshape_transform=reshape)

    def maps(self, frames: list[tuple[str, int]], target: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 frames (N, C, S, S) as the model saw them, Grad-CAM maps (N, S, S) in [0, 1]) for class `target`;
        a frame is (file, frame number in it)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        pixels = np.stack([self._pixels(path, index) for path, index in frames])
        maps = []
        for start in range(0, len(frames), BATCH):
            batch = self.preset(torch.from_numpy(pixels[start : start + BATCH]).to(self.device))
            maps.append(self.cam(input_tensor=batch, targets=[ClassifierOutputTarget(target)] * len(batch)))
        return pixels, np.nan_to_num(np.concatenate(maps))

    def _pixels(self, path: str, index: int) -> np.ndarray:
        prep = self.model_file.prep  # geometry and channels as the model was trained
        outcome = decode_frames(path, [index], prep)[0]
        if isinstance(outcome, str):  # moved or changed since it was predicted: a black panel, not a crash
            return np.zeros((prep.in_channels, prep.image_size, prep.image_size), dtype=np.uint8)
        return outcome[0]

    def close(self) -> None:
        self.cam.activations_and_grads.release()


def verdict(person: PersonFrames, class_names: list[str], positive: int, binary: bool) -> str:
    """'true plaque → predicted normal (false negative)', or 'predicted plaque' where unlabelled."""
    predicted = class_names[person.predicted]
    if person.true is None:
        return f"predicted {predicted}"
    if person.true == person.predicted:
        return f"{class_names[person.true]}, predicted correctly"
    kind = ""
    if binary:
        kind = " (false negative)" if person.true == positive else " (false positive)"
    return f"true {class_names[person.true]} → predicted {predicted}{kind}"


def write_montage(
    renderer: GradCamRenderer,
    person: PersonFrames,
    frames: list[tuple[str, int]],
    path: Path,
    *,
    n_frames: int,
    class_names: list[str],
    positive: int,
    threshold: float | None,
    aggregation: str,
) -> np.ndarray:
    """One PNG: the person's n most decisive frames with their Grad-CAM overlay and P(class) or attention, titled
    with the person's P(class) — one class throughout (`explained_class`). Returns the positions of the frames
    shown."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    binary = len(class_names) == 2
    target = explained_class(person, positive, binary)
    shown = decisive_frames(person, target, n_frames)
    pixels, maps = renderer.maps([frames[person.rows[k]] for k in shown], target)
    # constrained layout: the two-line title and the three-line captions never overlap
    fig, axes = new_figure(1, len(shown), figsize=(2.3 * len(shown), 3.4), squeeze=False, layout="constrained")
    for ax, k, frame, cam in zip(axes[0], shown, pixels, maps):
        rgb = (np.repeat(frame, 3, axis=0) if frame.shape[0] == 1 else frame).transpose(1, 2, 0).astype(np.float32)
        blank = blank_map(cam)  # drawn without an overlay: a flat colour would read as "everywhere" or "nowhere"
        ax.imshow(rgb / 255.0 if blank else show_cam_on_image(rgb / 255.0, cam, use_rgb=True))
        caption = panel_caption(person, k, frames[person.rows[k]], target, class_names[target], blank)
        ax.set_title(caption, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    rule = f", threshold {threshold:.3f}" if threshold is not None and binary else ""
    pooling = renderer.model_file.person_model
    pooled = f"{aggregation} of" if person.attention is None else f"{pooling} pooling of"
    order = "" if person.attention is None else ", highest attention first"
    if person.uniform:
        order = f"\n{uniform_sentence(pooling)}; frames shown in their order"
    fig.suptitle(
        f"{person.person_id}: {verdict(person, class_names, positive, binary)}\n"
        f"person P({class_names[target]}) {person.person_prob[target]:.3f} = {pooled} "
        f"{len(person.rows)} frames{rule}; bright: regions that raised P({class_names[target]}) (Grad-CAM){order}",
        fontsize=9,
    )
    save_figure(fig, path)
    return shown


def write_montages(
    renderer: GradCamRenderer,
    persons: list[PersonFrames],
    frames: list[tuple[str, int]],
    folder: Path,
    *,
    n_frames: int,
    class_names: list[str],
    positive: int,
    threshold: float | None,
    aggregation: str,
    names: dict[str, str],
) -> dict[str, Path]:
    """A montage per person in `folder`, named by `names` (person ID → file stem); {person ID: file}."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for person in persons:
        path = folder / f"{names[person.person_id]}.png"
        write_montage(
            renderer,
            person,
            frames,
            path,
            n_frames=n_frames,
            class_names=class_names,
            positive=positive,
            threshold=threshold,
            aggregation=aggregation,
        )
        written[person.person_id] = path
    return written
