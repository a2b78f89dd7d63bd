"""Batched cosine scores for training, Triton forward and hand-written backward.

q [B, D], docs [B, N, D] -> s [B, N] (float32), s = <q, d> / (max(|q|, eps) max(|d|, eps)).

Forward: D is split across programs (D reaches 64k while B*N is a few thousand), each
program writes partial dot products and squared norms for a [BLOCK_N] slice of
documents over its chunk of D; the few partials are summed in torch.
Backward, with g = dL/ds:
    dL/dq   = sum_n g_n d_n / (|q||d_n|)  -  (sum_n g_n s_n) q / |q|^2
    dL/dd_n = g_n q / (|q||d_n|)          -  g_n s_n d_n / |d_n|^2
A norm clamped to eps is a constant, so its second term is dropped (as torch's clamp does).
One program owns a [BLOCK_D] slice of one batch row: it streams all N documents once,
writes their gradient slice and accumulates the q gradient slice.
"""

from __future__ import annotations

import torch
import triton.language as tl

from clara.kernels.common import DEFAULT_EPS, cdiv, jit_kernel, next_power_of_2, triton_interpreting


def _scores_fwd_kernel(
    q_ptr, docs_ptr, dot_ptr, dsq_ptr, qsq_ptr,  # q (B, D); docs (B, N, D); partials (B, S, N) and (B, S)
    N, D, CHUNK, SPLITS,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    n_blk = tl.program_id(1)
    split = tl.program_id(2)
    rn = n_blk * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n_mask = rn < N
    row = (b * N + rn).to(tl.int64) * D  # (BLOCK_N,) int64: B*N*D may pass 2^31
    acc_dot = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_dsq = tl.zeros([BLOCK_N], dtype=tl.float32)
    acc_qsq = tl.zeros([BLOCK_D], dtype=tl.float32)
    for off in range(0, CHUNK, BLOCK_D):
        cols = split * CHUNK + off + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
        d_mask = cols < D
        qv = tl.load(q_ptr + b.to(tl.int64) * D + cols, mask=d_mask, other=0.0).to(tl.float32)
        x = tl.load(
            docs_ptr + row[:, None] + cols[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0
        ).to(tl.float32)  # (BLOCK_N, BLOCK_D)
        acc_dot += tl.sum(x * qv[None, :], axis=1)
        acc_dsq += tl.sum(x * x, axis=1)
        acc_qsq += qv * qv
    part = (b * SPLITS + split) * N + rn
    tl.store(dot_ptr + part, acc_dot, mask=n_mask)
    tl.store(dsq_ptr + part, acc_dsq, mask=n_mask)
    if n_blk == 0:
        tl.store(qsq_ptr + b * SPLITS + split, tl.sum(acc_qsq, axis=0))


def _scores_bwd_kernel(
    q_ptr, docs_ptr, a_ptr, e_ptr, c_ptr, gq_ptr, gd_ptr,  # a, e (B, N); c (B,)
    N, D,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # a = g/(|q||d|), e = g s/|d|^2 (0 if |d| clamped), c = sum_n g s/|q|^2 (0 if |q| clamped)
    b = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    d_mask = cols < D
    q_off = b.to(tl.int64) * D + cols
    qv = tl.load(q_ptr + q_off, mask=d_mask, other=0.0).to(tl.float32)
    acc_q = tl.zeros([BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        n_mask = rn < N
        mask = n_mask[:, None] & d_mask[None, :]
        offs = (b * N + rn).to(tl.int64)[:, None] * D + cols[None, :]  # (BLOCK_N, BLOCK_D)
        x = tl.load(docs_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + b * N + rn, mask=n_mask, other=0.0)  # (BLOCK_N,)
        e = tl.load(e_ptr + b * N + rn, mask=n_mask, other=0.0)
        grad_docs = a[:, None] * qv[None, :] - e[:, None] * x  # (BLOCK_N, BLOCK_D)
        tl.store(gd_ptr + offs, grad_docs, mask=mask)
        acc_q += tl.sum(a[:, None] * x, axis=0)
    c = tl.load(c_ptr + b)
    tl.store(gq_ptr + q_off, acc_q - c * qv, mask=d_mask)


def _device_programs(device: torch.device) -> int:
    """Programs that keep the device busy: a few waves of SMs; one per core when interpreted."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _blocks(n: int, d: int) -> tuple[int, int]:
    # The interpreter pays per loop step, not per element: take big tiles there.
    if triton_interpreting():
        return min(next_power_of_2(n), 64), min(next_power_of_2(d), 512)
    return min(next_power_of_2(n), 16), min(next_power_of_2(d), 256)


def scores_forward(q: torch.Tensor, docs: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """Launch the forward kernel; returns s (B, N) and the clamped norms |q| (B,), |d| (B, N)."""
    B, N, D = docs.shape
    block_n, block_d = _blocks(N, D)
    n_blocks = cdiv(N, block_n)
    # Split D until the grid fills the device, keeping each chunk a whole number of blocks.
    splits = max(1, min(cdiv(D, block_d), cdiv(_device_programs(q.device), B * n_blocks)))
    chunk = cdiv(cdiv(D, splits), block_d) * block_d
    splits = cdiv(D, chunk)
    dot = torch.empty(B, splits, N, device=q.device, dtype=torch.float32)
    dsq = torch.empty_like(dot)
    qsq = torch.empty(B, splits, device=q.device, dtype=torch.float32)
    grid = (B, n_blocks, splits)
    jit_kernel(_scores_fwd_kernel)[grid](
        q, docs, dot, dsq, qsq, N, D, chunk, splits, BLOCK_N=block_n, BLOCK_D=block_d
    )
    q_norm = qsq.sum(1).sqrt().clamp_min(eps)  # (B,)
    d_norm = dsq.sum(1).sqrt().clamp_min(eps)  # (B, N)
    s = dot.sum(1) / (q_norm[:, None] * d_norm)  # (B, N)
    return s, q_norm, d_norm


def scores_backward(
    grad_s: torch.Tensor, q: torch.Tensor, docs: torch.Tensor, s: torch.Tensor,
    q_norm: torch.Tensor, d_norm: torch.Tensor, eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, N, D = docs.shape
    g = grad_s.float()  # (B, N)
    a = (g / (q_norm[:, None] * d_norm)).contiguous()  # (B, N)
    # A norm sitting on the eps clamp is constant: its normalisation term has no gradient.
    d_live = (d_norm > eps).float()
    q_live = (q_norm > eps).float()
    e = (g * s * d_live / d_norm.square()).contiguous()  # (B, N)
    c = ((g * s).sum(1) * q_live / q_norm.square()).contiguous()  # (B,)
    grad_q = torch.empty_like(q)
    grad_docs = torch.empty_like(docs)
    block_n, block_d = _blocks(N, D)
    grid = (B, cdiv(D, block_d))
    jit_kernel(_scores_bwd_kernel)[grid](
        q, docs, a, e, c, grad_q, grad_docs, N, D, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return grad_q, grad_docs


class CosineScoresFunction(torch.autograd.Function):
    """Autograd wrapper: Triton forward, hand-written Triton backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, docs: torch.Tensor, eps: float = DEFAULT_EPS) -> torch.Tensor:
        s, q_norm, d_norm = scores_forward(q, docs, eps)
        ctx.save_for_backward(q, docs, s, q_norm, d_norm)
        ctx.eps = eps
        return s

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        q, docs, s, q_norm, d_norm = ctx.saved_tensors
        grad_q, grad_docs = scores_backward(grad_s, q, docs, s, q_norm, d_norm, ctx.eps)
        return grad_q, grad_docs, None

