"""Person-level models: a frame encoder, one embedding per frame, pooled over each person's frames.

The label belongs to the person, and in a carotid sweep a finding is visible in a few of a person's frames.
A `PersonModel` learns from the person's label directly (multiple-instance learning): the frames of a bag
are encoded, their embeddings pooled into one per person, and a linear head gives the person's logits.

Pooling `"attention"` is gated attention (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple
instance learning"): a_i ∝ exp(wᵀ(tanh(V h_i) ⊙ sigmoid(U h_i))), normalised over the person's frames; the
weights a_i are an output (which frames the decision rests on). Pooling `"mean"` averages the embeddings
(a_i = 1/n): the learned baseline.

Two training-only stabilisers, off by default (docs/EVALUATION.md has the measurements that decided): dropout on
the attention network's hidden units (`attention_dropout`, CLAM uses 0.25), and masking each person's highest-scored
frames at random (`mask_top_frames` K: each of the K frames of highest score is left out of the pooling with
probability 1/2, at least one frame kept; ACMIL's stochastic top-k instance masking), so that the pooling cannot
rest on one frame alone. Neither has weights, and in eval mode (evaluation, predict, ONNX) both do nothing.

Many persons go through `encode` together (their frames concatenated, `bag` says whose each frame is), so
BatchNorm in training never normalises within one person: one person per forward pass lets the encoder
learn a shortcut from the bag's own statistics (issue 23 measured AUC 0.2 on new persons).
"""

from __future__ import annotations

import torch
from torch import nn

from carotid.model import POOLINGS
from carotid.model.registry import build_encoder

ATTENTION_HIDDEN = 128  # the size of V h and U h, as in Ilse et al.


class PersonModel(nn.Module):
    """frames (N, C, S, S) of B persons + `bag` (N,) → person logits (B, K) and each frame's weight (N,)."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        in_channels: int = 1,
        pooling: str = "attention",
        *,
        pretrained: bool = False,
        image_size: int | None = None,
        drop_path: float | None = None,
        global_pool: str = "avg",
        attention_dropout: float = 0.0,
        mask_top_frames: int = 0,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; one of {POOLINGS}")
        self.pooling, self.mask_top_frames = pooling, mask_top_frames
        # Local starting weights load into the encoder afterwards: carotid.model.weights.load_pretrained(model, ...).
        self.encoder, dim = build_encoder(
            arch, in_channels, pretrained, image_size=image_size, drop_path=drop_path, global_pool=global_pool
        )
        self.embedding_size = dim
        if pooling == "attention":
            self.attention_v = nn.Linear(dim, ATTENTION_HIDDEN)
            self.attention_u = nn.Linear(dim, ATTENTION_HIDDEN)
            self.attention_w = nn.Linear(ATTENTION_HIDDEN, 1)
            self.attention_dropout = nn.Dropout(attention_dropout)
        self.classifier = nn.Linear(dim, num_classes)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, S, S) → (N, D): one embedding per frame."""
        return self.encoder(frames)

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) → (N,) float32: each frame's attention score before the per-person softmax."""
        if self.pooling == "mean":
            return embeddings.new_zeros(embeddings.shape[0], dtype=torch.float32)
        gated = torch.tanh(self.attention_v(embeddings)) * torch.sigmoid(self.attention_u(embeddings))
        return self.attention_w(self.attention_dropout(gated)).squeeze(1).float()

    def pool(self, embeddings: torch.Tensor, bag: torch.Tensor, num_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (B, K), attention (N,)): the softmax of the scores within each person (sums to 1 over a
        person's frames; 1/n for "mean"), the embeddings weighted by it, then the head.

        A dense (N, B) membership mask rather than scatter operations: N and B are a step's frames and persons
        (hundreds at most), it is deterministic (no atomic adds), and it exports to ONNX as plain ops."""
        members = bag.unsqueeze(1) == torch.arange(num_bags, device=bag.device).unsqueeze(0)  # (N, B)
        scores = self.scores(embeddings).unsqueeze(1).masked_fill(~members, float("-inf"))
        if self.training and self.mask_top_frames and self.pooling == "attention":
            scores = scores.masked_fill(top_frames_dropped(scores, self.mask_top_frames), float("-inf"))
        weights = torch.softmax(scores, dim=0).nan_to_num(0.0)  # a person without frames: an all-zero column
        pooled = weights.t().to(embeddings.dtype) @ embeddings  # (B, D)
        return self.classifier(pooled), weights.sum(dim=1)

    def forward(
        self, inputs: torch.Tensor, bag: torch.Tensor | None = None, num_bags: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """pool(encode(frames), bag, num_bags) for frames (N, C, S, S). Chunked evaluation calls the two halves
        through forward too, so that the hooks of a prepared model (DDP, FSDP, DeepSpeed) run: frames without
        `bag` → encode(frames) (N, D); embeddings (N, D) with `bag` → pool(embeddings, bag, num_bags)."""
        if bag is None:
            return self.encode(inputs)
        embeddings = inputs if inputs.dim() == 2 else self.encode(inputs)
        return self.pool(embeddings, bag, num_bags)


def top_frames_dropped(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(N, B) bool: each person's k highest-scored frames, each with probability 1/2, never all of a person's frames.

    `scores` is (N, B) with -inf outside each person's frames (column b: person b). The draw uses torch's global
    generator, which Accelerate's checkpoints save, so a resumed run draws the same masks."""
    n_frames = torch.isfinite(scores).sum(dim=0)  # (B,)
    rank = scores.argsort(dim=0, descending=True).argsort(dim=0)  # (N, B): 0 = the person's highest score
    drop = (rank < k) & torch.isfinite(scores) & (torch.rand(scores.shape, device=scores.device) < 0.5)
    kept = n_frames - drop.sum(dim=0)
    # A person left with no frame keeps its highest-scored one.
    return drop & ~((kept == 0).unsqueeze(0) & (rank == 0))
