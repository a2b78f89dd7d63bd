"""Straight-through top-k over cosine scores (DESIGN §5).

Forward is the hard top-k pick; the backward flows through a masked softmax with
temperature tau:

    taken = 0
    for j in 1..k:
        soft_j = softmax((s + log(1 - taken + 1e-8)) / tau)     # over N
        hard_j = one_hot(argmax over candidates not taken)
        taken  = taken + hard_j
    Z = hard + soft - stopgrad(soft)                             # [B, k, N]
"""

from __future__ import annotations

import torch
from torch import nn

from clara.kernels.dispatch import DEFAULT_EPS, Backend, KernelInputError, check_k, cosine_scores

DEFAULT_TEMPERATURE = 0.02


def soft_and_hard_picks(
    scores: torch.Tensor, k: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two halves of the relaxation: soft [B, k, N] (differentiable), hard [B, k, N]
    (one-hot, no gradient) and the hard indices [B, k]."""
    taken = torch.zeros_like(scores)  # (B, N), hard picks so far
    softs, hards, picks = [], [], []
    for _ in range(k):
        logits = (scores + torch.log(1 - taken + 1e-8)) / temperature  # (B, N)
        softs.append(torch.softmax(logits, dim=-1))
        # argmax over candidates not yet taken; the first index wins a tie
        idx = scores.detach().masked_fill(taken > 0, float("-inf")).argmax(dim=-1)  # (B,)
        hard_j = torch.zeros_like(taken).scatter_(1, idx[:, None], 1.0)  # (B, N)
        hards.append(hard_j)
        picks.append(idx)
        taken = taken + hard_j
    return torch.stack(softs, 1), torch.stack(hards, 1), torch.stack(picks, 1)


def straight_through_topk(
    scores: torch.Tensor, k: int, temperature: float = DEFAULT_TEMPERATURE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable top-k selection.

    Args:
        scores: [B, N] scores (e.g. from :func:`cosine_scores`).
        k: picks per row, 1 <= k <= N.
        temperature: softmax temperature tau > 0 of the backward relaxation.

    Returns:
        (Z [B, k, N], indices [B, k] int64). ``Z[b, j]`` is exactly the one-hot of
        ``indices[b, j]`` (the j-th best score) in the forward pass; its gradient is the
        gradient of the j-th masked softmax.
    """
    if scores.dim() != 2:
        raise KernelInputError(f"scores must be [B, N], got shape {tuple(scores.shape)}")
    check_k(k, scores.shape[1])
    if not temperature > 0:
        raise KernelInputError(f"temperature={temperature} must be > 0")
    if not scores.is_floating_point():
        raise KernelInputError(f"scores must be floating point, got {scores.dtype}")
    soft, hard, indices = soft_and_hard_picks(scores, k, temperature)
    # (soft - soft.detach()) is exactly zero, so the forward value is exactly `hard`;
    # `hard + soft - soft` in that order could round 1 to 0.99999994.
    z = hard + (soft - soft.detach())  # (B, k, N)
    return z, indices


def select_topk(
    q: torch.Tensor,
    docs: torch.Tensor,
    k: int,
    temperature: float = DEFAULT_TEMPERATURE,
    *,
    eps: float = DEFAULT_EPS,
    backend: Backend | str = Backend.AUTO,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine scores then straight-through top-k.

    q [B, D], docs [B, N, D] -> (Z [B, k, N] float32, indices [B, k], scores [B, N] float32).
    Use ``torch.einsum('bkn,bnd->bkd', Z.to(mem.dtype), mem)`` to pick the memories.
    """
    scores = cosine_scores(q, docs, eps=eps, backend=backend)  # (B, N)
    z, indices = straight_through_topk(scores, k, temperature)
    return z, indices, scores


class StraightThroughTopK(nn.Module):
    """Module form of :func:`select_topk`: forward(q [B, D], docs [B, N, D]) -> (Z, indices, scores)."""

    def __init__(self, k: int, temperature: float = DEFAULT_TEMPERATURE, backend: Backend | str = Backend.AUTO):
        super().__init__()
        if not temperature > 0:
            raise KernelInputError(f"temperature={temperature} must be > 0")
        self.k = k
        self.temperature = temperature
        self.backend = backend

    def forward(self, q: torch.Tensor, docs: torch.Tensor):
        return select_topk(q, docs, self.k, self.temperature, backend=self.backend)

    def extra_repr(self) -> str:
        return f"k={self.k}, temperature={self.temperature}"
