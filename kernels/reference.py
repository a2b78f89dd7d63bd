"""Plain-torch references: the definition every kernel is tested against.

Cosine with guarded norms: ``s = <q, d> / (max(|q|, eps) * max(|d|, eps))``, computed in
float32 whatever the input dtype (bf16 dot products over 64k dims lose too much).
"""

from __future__ import annotations

import numpy as np
import torch

from clara.kernels.common import DEFAULT_EPS

# Rows of the bank scored per step: bounds the float32 copy the reference makes.
TOPK_CHUNK_ROWS = 65536


def cosine_scores_reference(q: torch.Tensor, docs: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """q [B, D], docs [B, N, D] -> s [B, N] float32; differentiable through torch autograd."""
    qf = q.float()  # (B, D)
    df = docs.float()  # (B, N, D)
    q_norm = qf.norm(dim=-1).clamp_min(eps)  # (B,)
    d_norm = df.norm(dim=-1).clamp_min(eps)  # (B, N)
    dot = torch.einsum("bd,bnd->bn", qf, df)  # (B, N)
    return dot / (q_norm[:, None] * d_norm)  # (B, N)


def cosine_topk_reference(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    inv_norms: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    chunk_rows: int = TOPK_CHUNK_ROWS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, D], bank [N, D] -> (values [B, k] float32, indices [B, k] int64), best first.

    Streams the bank in chunks (top-k per chunk, then a merge) so a 10^7-row bank never
    becomes one float32 score matrix.
    """
    qf = q.float()  # (B, D)
    qn = qf / qf.norm(dim=-1, keepdim=True).clamp_min(eps)  # (B, D)
    best_v, best_i = [], []
    for start in range(0, bank.shape[0], chunk_rows):
        chunk = bank[start : start + chunk_rows].float()  # (C, D)
        if inv_norms is None:
            inv = 1.0 / chunk.norm(dim=-1).clamp_min(eps)  # (C,)
        else:
            inv = inv_norms[start : start + chunk_rows].float()  # (C,)
        s = (qn @ chunk.T) * inv[None, :]  # (B, C)
        v, i = s.topk(min(k, s.shape[1]), dim=1)  # (B, k')
        best_v.append(v)
        best_i.append(i + start)
    values = torch.cat(best_v, dim=1)  # (B, chunks * k')
    indices = torch.cat(best_i, dim=1)
    top_v, pos = values.topk(k, dim=1)  # (B, k)
    return top_v, indices.gather(1, pos)


def cosine_topk_faiss(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    inv_norms: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`cosine_topk_reference`, searched by faiss (exact inner product).

    faiss wants float32 rows of unit norm, so the bank is normalised into a float32 copy;
    a server that searches the same bank many times should keep a faiss index instead.
    """
    import faiss

    qf = q.detach().float().cpu()
    qn = qf / qf.norm(dim=-1, keepdim=True).clamp_min(eps)  # (B, D)
    bf = bank.detach().float().cpu()  # (N, D); a copy unless already float32
    if inv_norms is None:
        inv = 1.0 / bf.norm(dim=-1).clamp_min(eps)  # (N,)
    else:
        inv = inv_norms.detach().float().cpu()
    bn = bf * inv[:, None]  # (N, D)
    dist, idx = faiss.knn(
        np.ascontiguousarray(qn.numpy()), np.ascontiguousarray(bn.numpy()), k, metric=faiss.METRIC_INNER_PRODUCT
    )
    return torch.from_numpy(dist).to(q.device), torch.from_numpy(idx).to(q.device)
