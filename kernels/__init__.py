"""Triton kernels with plain-torch references and a dispatcher (imported as clara.kernels).

Public API:
    cosine_scores(q [B, D], docs [B, N, D]) -> s [B, N]                 (training, with backward)
    cosine_topk(q [B, D], bank [N, D], k) -> (values [B, k], indices [B, k])   (serving)
    straight_through_topk(scores [B, N], k, temperature) -> (Z [B, k, N], indices [B, k])
    select_topk(q, docs, k, temperature) -> (Z, indices, scores); StraightThroughTopK module
Every entry point takes ``backend=`` ("auto" | "triton" | "torch" | "faiss", see Backend).
Triton modules are imported, and kernels decorated, only when a Triton backend runs.
"""

from clara.kernels.dispatch import (
    DEFAULT_EPS,
    Backend,
    KernelInputError,
    cosine_scores,
    cosine_topk,
    triton_interpreting,
)
from clara.kernels.reference import cosine_scores_reference, cosine_topk_reference
from clara.kernels.straight_through import (
    DEFAULT_TEMPERATURE,
    StraightThroughTopK,
    select_topk,
    straight_through_topk,
)

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_TEMPERATURE",
    "Backend",
    "KernelInputError",
    "StraightThroughTopK",
    "cosine_scores",
    "cosine_scores_reference",
    "cosine_topk",
    "cosine_topk_reference",
    "select_topk",
    "straight_through_topk",
    "triton_interpreting",
]
