"""`train_one_epoch`: the accelerator-aware training loop over one epoch, returning plain numbers.

A batch is frames (frame-level models: each frame carries its person's label) or bags (person models: a
step's persons, their frames concatenated, `bag` naming each frame's person; the loss is on the persons)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from carotid.core.predict import input_dtype
from carotid.data.frames.decode import SEEN

SYNC_EVERY = 8  # batches between the cross-rank checks for a stop request or a non-finite loss


@dataclass
class EpochProgress:
    """Running sums of one training epoch on this rank; saved in mid-epoch checkpoints."""

    batches_done: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0
    unreadable: int = 0
    frames: int = 0  # frames through the model (person models: `seen` counts persons); 0 in older checkpoints

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EpochEnd:
    """Why train_one_epoch returned, with what the caller needs to report it."""

    progress: EpochProgress
    stop: str | None = None  # None (epoch done), "signal" or "nonfinite"
    nonfinite_step: int | None = None


def masked_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    readable: torch.Tensor,
    class_weights: torch.Tensor | None,
    label_smoothing: float,
) -> torch.Tensor:
    """Cross-entropy averaged over the readable frames, with PyTorch's weighted-mean convention."""
    per_frame = F.cross_entropy(
        logits.float(), labels, weight=class_weights, label_smoothing=label_smoothing, reduction="none"
    )
    weight = readable.float() if class_weights is None else class_weights[labels] * readable.float()
    return (per_frame * readable.float()).sum() / weight.sum().clamp_min(1e-12)


@dataclass
class StepOutput:
    """One forward pass: its logits, the labels they are scored against, which of those count, the loss."""

    logits: torch.Tensor
    labels: torch.Tensor
    readable: torch.Tensor
    loss: torch.Tensor


def forward_step(model, batch, preset, dtype, channels_last, class_weights, label_smoothing) -> StepOutput:
    """The loss of a batch of frames (one row per frame) or of bags (one row per person).

    A bag's unreadable frames (status 0: zeros) go through the encoder with the others but are in no
    person's pooling; a person none of whose frames is readable does not count in the loss."""
    frames, labels, _, status = batch[:4]
    readable = status > 0
    inputs = preset(frames).to(dtype)
    if channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    if len(batch) == 4:
        logits = model(inputs)
    else:
        bag = batch[4]
        logits, _ = model(inputs, torch.where(readable, bag, -1), labels.shape[0])
        counts = torch.zeros(labels.shape[0], device=bag.device).index_add_(0, bag, readable.float())
        readable = counts > 0
    return StepOutput(logits, labels, readable, masked_loss(logits, labels, readable, class_weights, label_smoothing))


class _Tally:
    """The epoch's running sums, kept on the device and folded into `progress` only at sync points, checkpoints
    and the end of the epoch (the loop's only device → host copies); and its clock."""

    def __init__(self, progress: EpochProgress, device: torch.device):
        self.progress, self.device = progress, device
        # loss x items, correct, readable items, unreadable items (items: frames, or persons), frames
        self.sums = torch.zeros(5, device=device, dtype=torch.float64)
        self.start, self.wait = time.perf_counter(), 0.0

    def next_batch(self, iterator):
        """The loader's next batch (None at the end), its waiting time counted."""
        fetch = time.perf_counter()
        batch = next(iterator, None)
        self.wait += time.perf_counter() - fetch
        return batch

    def add(self, out: StepOutput, frames: int) -> None:
        n_readable = out.readable.sum()
        correct = ((out.logits.detach().argmax(dim=1) == out.labels) & out.readable).sum()
        step = torch.stack([out.loss.detach().double() * n_readable, correct.double(), n_readable.double()])
        self.sums[:3] += step
        self.sums[3] += out.readable.numel() - n_readable
        self.sums[4] += frames

    def fold(self) -> EpochProgress:
        loss_sum, correct, readable, unreadable, frames = self.sums.tolist()
        self.sums.zero_()
        progress = self.progress
        progress.loss_sum += loss_sum
        progress.correct += int(correct)
        progress.seen += int(readable + unreadable)
        progress.unreadable += int(unreadable)
        progress.frames += int(frames)
        now = time.perf_counter()
        progress.seconds += now - self.start
        progress.wait_seconds += self.wait
        self.start, self.wait = now, 0.0
        return progress


def train_one_epoch(
    model,
    loader,
    optimizer,
    accelerator: Accelerator,
    preset,
    *,
    epoch: int,
    epochs: int,
    progress: EpochProgress,
    class_weights: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    clip_grad_norm: float | None = None,
    on_optimizer_step: Callable[[], bool] = lambda: False,
    save_checkpoint: Callable[[EpochProgress], None] = lambda p: None,
    stop_requested: Callable[[], bool] = lambda: False,
    channels_last: bool = False,
    statuses: torch.Tensor | None = None,
) -> EpochEnd:
    """One pass over `loader` (which already skips the `progress.batches_done` batches of a resumed epoch).

    After each optimizer step `on_optimizer_step()` advances the LR schedule and says whether a
    mid-epoch checkpoint is due; all ranks reach that point at the same step, so the save is collective.
    Every SYNC_EVERY batches the ranks agree on stopping (a signal, a non-finite loss); between those
    points nothing waits for the device, so the GPU is never stalled by bookkeeping. `statuses` (uint8, one
    per dataset item, on the device) receives each frame's decode status | SEEN, without a host sync."""
    model.train()
    preset.train()
    dtype = input_dtype(model)
    fp16 = accelerator.mixed_precision == "fp16"
    tally = _Tally(progress, accelerator.device)
    nonfinite_at = torch.full((), -1, device=accelerator.device, dtype=torch.int64)
    end = EpochEnd(progress)
    bar = _progress_bar(accelerator, len(loader) + progress.batches_done, progress.batches_done, epoch, epochs)
    iterator = iter(loader)
    while (batch := tally.next_batch(iterator)) is not None:
        if statuses is not None:
            statuses[batch[2]] = batch[3].to(torch.uint8) | SEEN
        with accelerator.accumulate(model):
            out = forward_step(model, batch, preset, dtype, channels_last, class_weights, label_smoothing)
            accelerator.backward(out.loss)
            if clip_grad_norm is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        step = progress.batches_done
        progress.batches_done += 1
        tally.add(out, batch[2].numel())
        if not (fp16 and accelerator.sync_gradients and accelerator.optimizer_step_was_skipped):
            # fp16 overflow steps that the gradient scaler skips are expected, not a diverged run.
            nonfinite_at = torch.where((nonfinite_at < 0) & ~torch.isfinite(out.loss.detach()), step, nonfinite_at)
        bar.update(1)
        if accelerator.sync_gradients and on_optimizer_step():
            save_checkpoint(tally.fold())
        if progress.batches_done % SYNC_EVERY == 0:
            tally.fold()
            bar.set_postfix(loss=f"{progress.loss_sum / max(progress.seen - progress.unreadable, 1):.4f}")
            if _agree_to_stop(accelerator, end, stop_requested, nonfinite_at):
                break
    bar.close()
    tally.fold()
    if end.stop is None:
        _agree_to_stop(accelerator, end, lambda: False, nonfinite_at)
    return end


def _progress_bar(accelerator: Accelerator, total: int, done: int, epoch: int, epochs: int) -> tqdm:
    return tqdm(
        total=total,
        initial=done,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=None if accelerator.is_main_process else True,
        dynamic_ncols=True,
        leave=False,
    )


def _agree_to_stop(accelerator: Accelerator, end: EpochEnd, stop_requested, nonfinite_at) -> bool:
    """Sum each rank's (stop requested, loss non-finite) flags, so every rank stops at the same step."""
    bad_step = int(nonfinite_at.item())
    flags = torch.tensor([float(stop_requested()), float(bad_step >= 0)], device=accelerator.device)
    flags = accelerator.reduce(flags, reduction="sum").tolist()
    if flags[1] > 0:
        end.stop, end.nonfinite_step = "nonfinite", bad_step if bad_step >= 0 else None
    elif flags[0] > 0:
        end.stop = "signal"
    return end.stop is not None


def reduce_progress(accelerator: Accelerator, progress: EpochProgress) -> dict[str, float]:
    """Epoch totals over all ranks: loss, accuracy, images/s and the share of time spent waiting for data."""
    totals = torch.tensor(
        [progress.loss_sum, progress.correct, progress.seen, progress.unreadable, progress.frames],
        device=accelerator.device,
        dtype=torch.float64,
    )
    totals = accelerator.reduce(totals, reduction="sum").tolist()
    loss_sum, correct, seen, unreadable, frames = totals
    readable = max(seen - unreadable, 1.0)
    return {
        "train_loss": loss_sum / readable,
        "train_accuracy": correct / readable,
        "images_per_second": (frames or seen) / max(progress.seconds, 1e-9),
        "data_wait_fraction": progress.wait_seconds / max(progress.seconds, 1e-9),
        "epoch_seconds": progress.seconds,
        "unreadable_frames": int(unreadable),
    }
