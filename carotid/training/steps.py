"""What `--batch-size` makes of a run: frames and persons per step, optimizer steps per epoch and in all.

`--batch-size` counts frames through the encoder per process and micro-batch, for every model: what memory
depends on, and what makes the same command take about as many optimizer steps with `--person-model frames`
as with `attention` or `mean`. A person model's step takes whole persons: as many as bring about
`--batch-size` frames, each bringing up to `--bag-size` of its frames (carotid.data.bags.persons_per_step).
Issue 30 measured the cost of counting persons instead: a person model with 8-16x fewer steps than its frame
model sometimes had not learned at all (docs/EVALUATION.md).

`StepPlan` is computed from the training split before the run starts, printed in the start-up block and
saved in config.yaml (`steps:`); the loaders and the LR schedule make exactly these steps.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from carotid.core.text import plural
from carotid.data.bags import persons_per_step

# Fewer optimizer steps than this in all and a person model has not learned in any measured run: on the
# sparse-finding demo data, 20 attention runs of 120 steps stayed at chance (person AUC 0.36-0.65), 1,200 steps
# learned in 8 of 10 runs (with the encoder's max pooling), 2,400 and 3,600 steps learned where 1,200 had not
# (docs/EVALUATION.md). A floor, not a guarantee: the warning says what is certainly too few, and a run that still
# did not learn is told so at its end (carotid.training.chance).
PERSON_MODEL_STEPS = 1000


@dataclass(frozen=True)
class StepPlan:
    """A run's batches and optimizer steps, per process and in all."""

    person_model: bool
    frames_per_step: int  # --batch-size: frames per process and micro-batch (a person model: about this many)
    persons_per_step: int | None  # a person model: persons per process and micro-batch
    frames_per_person: float | None  # a person model: the training persons' mean frames in a bag
    processes: int
    accumulation: int
    steps_per_epoch: int  # optimizer steps
    epochs: int
    items: int  # training frames (frame model) or persons (person model)
    left_out: int  # items of each epoch's shuffle in no step: the last incomplete micro-batches are dropped

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def unit(self) -> str:
        return "person" if self.person_model else "frame"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"total_steps": self.total_steps}


def run_plan(cfg, manifest, accelerator) -> StepPlan:
    """The plan of a run on `manifest`'s training persons (a TrainConfig, a DataManifest, an Accelerator)."""
    counts = [len(manifest.frames[p]) for p in manifest.splits["train"]]
    return plan_steps(cfg, counts, accelerator.num_processes, accelerator.gradient_accumulation_steps)


def plan_steps(cfg, frame_counts: list[int], processes: int, accumulation: int) -> StepPlan:
    """The plan of a run whose training persons have these frame counts (`cfg`: a TrainConfig)."""
    person_model = cfg.person_model != "frames"
    persons = frames_per_person = None
    if person_model:
        persons = persons_per_step(cfg.batch_size, cfg.bag_size, frame_counts)
        frames_per_person = sum(min(n, cfg.bag_size) for n in frame_counts) / max(len(frame_counts), 1)
    per_batch = persons if person_model else cfg.batch_size
    items = len(frame_counts) if person_model else sum(frame_counts)
    micro, left_out = micro_batches(items, per_batch, processes)
    return StepPlan(
        person_model,
        cfg.batch_size,
        persons,
        None if frames_per_person is None else round(frames_per_person, 2),
        processes,
        accumulation,
        math.ceil(micro / accumulation),
        cfg.epochs,
        items,
        left_out,
    )


def drops_last(items: int, per_batch: int, processes: int) -> bool:
    """Whether the training loader drops each epoch's last incomplete batch: when the data fill one batch on every
    process (fixed shapes); smaller data keep it (Accelerate then repeats items to fill the processes' batches)."""
    return items >= per_batch * processes


def micro_batches(items: int, per_batch: int, processes: int) -> tuple[int, int]:
    """(micro-batches per process and epoch, items left out of each epoch), as Accelerate shards the batches of
    the training loader (BatchSamplerShard, even_batches)."""
    if drops_last(items, per_batch, processes):
        micro = items // per_batch // processes
        return micro, items - micro * per_batch * processes
    return math.ceil(math.ceil(items / per_batch) / processes), 0


def startup_lines(plan: StepPlan) -> list[str]:
    """The start-up block's batch and step lines, and the warning when a person model gets too few steps."""
    setup = f"x {plural(plan.processes, 'process', 'processes')} x {plural(plan.accumulation, 'accumulation step')}"
    per_update = plan.processes * plan.accumulation
    if plan.person_model:
        frames = round(plan.persons_per_step * plan.frames_per_person * per_update)
        lines = [
            f"batch: {plan.persons_per_step} persons per step per process (--batch-size {plan.frames_per_step} frames "
            f"/ {plan.frames_per_person:g} frames per training person, each up to --bag-size; at least 2) {setup} = "
            f"{plan.persons_per_step * per_update} persons, about {frames} frames per optimizer step"
        ]
    else:
        lines = [
            f"batch: {plan.frames_per_step} frames per step per process (--batch-size) {setup} = "
            f"{plan.frames_per_step * per_update} frames per optimizer step"
        ]
    left = ""
    if plan.left_out:
        left = (
            f"; the last {plural(plan.left_out, plan.unit)} of each epoch's shuffle sit that epoch out: its "
            "incomplete last batch is dropped, and the shuffle changes every epoch"
        )
    lines.append(
        f"steps: {plan.steps_per_epoch} optimizer steps per epoch x {plural(plan.epochs, 'epoch')} = "
        f"{plan.total_steps} in all ({plural(plan.items, 'training ' + plan.unit)}{left})"
    )
    if plan.person_model and plan.total_steps < PERSON_MODEL_STEPS:
        lines.append(
            f"warning: {plan.total_steps} optimizer steps in all; person models need at least "
            f"about {PERSON_MODEL_STEPS} to learn — use a smaller --batch-size or more --epochs"
        )
    return lines
