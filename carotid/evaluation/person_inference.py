"""A person model applied to every person once on 1..N processes: validation, evaluation and predict.

Each process takes whole persons (`PersonBags.shard`) and reads their frames in order, `batch_size` at a
time: a chunk is encoded, and every person whose frames are then all encoded is pooled (attention over all of
its readable frames, however many), so memory holds one chunk of frames and the embeddings of the persons not
yet complete. The processes run the same number of encode and pool calls (the shorter shards pad with a dummy
frame), because under FSDP and DeepSpeed ZeRO-3 each forward call gathers the weights from all processes.
The results are gathered on every process.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from carotid.core.predict import input_dtype
from carotid.data.bags import PersonBags, frame_loader


@torch.no_grad()
def predict_persons(
    model,
    frames,
    accelerator: Accelerator,
    preset,
    *,
    batch_size: int,
    num_workers: int | None,
    channels_last: bool = False,
    desc: str = "evaluate",
) -> dict[str, np.ndarray]:
    """Every person of the frame dataset `frames`, predicted once, gathered on every process.

    Returns numpy arrays: per person with a readable frame (sorted IDs) `person_ids`, `labels`, `logits`,
    `probs` (softmax), `loss` (cross-entropy); per frame of the dataset (index order) `status` (decode flags,
    0 = unreadable) and `attention` (the frame's weight in its person's pooling; NaN for unreadable frames)."""
    model.eval()
    preset.eval()
    bags = PersonBags(frames)
    world = accelerator.num_processes
    mine = bags.shard(accelerator.process_index, world)
    chunks = max(math.ceil(sum(len(bags.frames[p]) for p in bags.shard(r, world)) / batch_size) for r in range(world))
    indices = [int(i) for p in mine for i in bags.frames[p]]
    loader = frame_loader(
        frames, indices, batch_size, num_workers=num_workers, pin_memory=accelerator.device.type == "cuda"
    )
    encoder = _Encoder(model, accelerator, preset, channels_last, (frames.in_channels, frames.image_size))
    pending = {"embeddings": [], "status": []}
    queue = list(mine)  # persons not yet pooled, in reading order
    out = {"person": [], "logits": [], "index": [], "attention": [], "status": []}
    batches = iter(loader)
    for _ in tqdm(range(chunks), desc=desc, disable=None if accelerator.is_main_process else True, leave=False):
        batch = next(batches, None)
        embeddings = encoder(batch[0] if batch is not None else None)
        if batch is not None:
            pending["embeddings"].append(embeddings)
            pending["status"].append(batch[3].to(accelerator.device))
            out["index"].append(batch[2].numpy())
            out["status"].append(batch[3].numpy())
        done = _complete(queue, bags, sum(len(e) for e in pending["embeddings"]))
        persons, logits, attention = encoder.pool(pending, [len(bags.frames[p]) for p in done])
        out["attention"].append(attention)
        keep = [k for k, p in enumerate(done) if persons[k]]  # a person without a readable frame is not predicted
        out["person"] += [done[k] for k in keep]
        out["logits"].append(logits[keep])
    return _gathered(out, bags, len(frames), accelerator)


class _Encoder:
    """The model's two halves through its forward (see PersonModel.forward), on the device, dummies included."""

    def __init__(self, model, accelerator, preset, channels_last, shape):
        self.model, self.accelerator, self.preset, self.channels_last = model, accelerator, preset, channels_last
        self.dtype, self.shape = input_dtype(model), shape
        self.device, self.dim = accelerator.device, 1

    def __call__(self, pixels: torch.Tensor | None) -> torch.Tensor:
        if pixels is None:  # a padding call: this process has no chunk left, the others do
            channels, size = self.shape
            pixels = torch.zeros(1, channels, size, size, dtype=torch.uint8)
        inputs = self.preset(pixels.to(self.device)).to(self.dtype)
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with self.accelerator.autocast():
            embeddings = self.model(inputs).float()
        self.dim = embeddings.shape[1]
        return embeddings

    def pool(self, pending: dict, sizes: list[int]) -> tuple[list[bool], np.ndarray, np.ndarray]:
        """Pool the first persons of `pending` (their frame counts `sizes`) and drop their rows from it:
        (whether each has a readable frame, their logits (B, K), their frames' attention (NaN if unreadable))."""
        n = sum(sizes)
        if not sizes:  # nobody complete: a dummy call keeps the processes in step
            self._forward(torch.zeros(1, self.dim, device=self.device), torch.zeros(1, dtype=torch.long), 1)
            return [], np.zeros((0, 1)), np.zeros(0)
        embeddings, status = torch.cat(pending["embeddings"]), torch.cat(pending["status"])
        pending["embeddings"], pending["status"] = [embeddings[n:]], [status[n:]]
        bag = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)).to(self.device)
        readable = status[:n] > 0
        logits, attention = self._forward(embeddings[:n], torch.where(readable, bag, -1), len(sizes))
        attention = torch.where(readable, attention, torch.nan)
        has_frame = torch.zeros(len(sizes), device=self.device).index_add_(0, bag, readable.float()) > 0
        return has_frame.tolist(), logits.float().cpu().numpy(), attention.cpu().numpy()

    def _forward(self, embeddings, bag, num_bags):
        with self.accelerator.autocast():
            return self.model(embeddings.to(self.dtype), bag.to(self.device), num_bags)


def _complete(queue: list[int], bags: PersonBags, available: int) -> list[int]:
    """Pop from `queue` the persons whose frames are all among the `available` pending embeddings."""
    done, used = [], 0
    while queue and used + len(bags.frames[queue[0]]) <= available:
        used += len(bags.frames[queue[0]])
        done.append(queue.pop(0))
    return done


def _gathered(out: dict, bags: PersonBags, n_frames: int, accelerator: Accelerator) -> dict[str, np.ndarray]:
    """Every process's persons and frames together, persons in ID order, frames in index order."""
    part = {
        "person": np.asarray(out["person"], dtype=np.int64),
        "logits": np.concatenate([x for x in out["logits"] if len(x)] or [np.zeros((0, 1))]),
        "index": np.concatenate(out["index"] or [np.zeros(0, dtype=np.int64)]),
        "attention": np.concatenate(out["attention"] or [np.zeros(0)]),
        "status": np.concatenate(out["status"] or [np.zeros(0, dtype=np.int64)]),
    }
    parts = gather_object([part]) if accelerator.num_processes > 1 else [part]
    merged = {k: np.concatenate([p[k] for p in parts if len(p[k])] or [part[k]]) for k in part}
    if len(merged["index"]) != n_frames or not np.array_equal(np.sort(merged["index"]), np.arange(n_frames)):
        raise RuntimeError(f"distributed person prediction returned {len(merged['index'])} of {n_frames} frames")
    order, by_frame = np.argsort(merged["person"]), np.argsort(merged["index"])
    logits = torch.from_numpy(merged["logits"][order]).double()
    labels = np.asarray(bags.labels)[merged["person"][order]]
    return {
        "person_ids": bags.person_ids[merged["person"][order]],
        "labels": labels,
        "logits": logits.numpy(),
        "probs": logits.softmax(dim=1).numpy(),
        "loss": F.cross_entropy(logits, torch.from_numpy(labels), reduction="none").numpy(),
        "status": merged["status"][by_frame],
        "attention": merged["attention"][by_frame],
    }
