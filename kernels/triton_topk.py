"""Fused streaming cosine top-k for serving, in Triton.

q [B, D] against a bank [N, D] (N up to 10^7) -> the k best cosine scores and their rows.

Each program owns BLOCK_B queries and strides over bank tiles of BLOCK_N rows: it scores
a tile with one dot product per BLOCK_D slice, normalises by the row norms it accumulates
on the way (or by precomputed inverse norms), keeps a running top-KP of the tiles it has
seen, and writes that partial top-KP once. torch then merges the partials.

A score and its row travel together as one int64 key: the high 32 bits are the float32
score's bits mapped to an order-preserving int32, the low 31 bits are (2^31-1 - row), so
sorting keys sorts scores and breaks ties toward the smaller row, everywhere alike.
"""

from __future__ import annotations

import logging

import torch
import triton.language as tl

from clara.kernels.common import (
    DEFAULT_EPS,
    cdiv,
    jit_kernel,
    next_power_of_2,
    triton_interpreting,
    unpack_keys,
)

log = logging.getLogger(__name__)

# Largest k the fused kernel keeps per program; larger k uses the chunked reference.
MAX_FUSED_K = 256
# The packed key of (score=-inf, row=2^31-1): an empty slot in a running top-k.
_NEG_INF_KEY = -2139095041  # order-preserving int32 of float32 -inf
EMPTY_SLOT = _NEG_INF_KEY * 2**32


def _topk_kernel(
    q_ptr, bank_ptr, qinv_ptr, binv_ptr, out_ptr,  # q (B, D); bank (N, D); out (B, P, KP) int64
    B, N, D, NUM_TILES, NUM_PROGS, eps,
    HAS_INV: tl.constexpr, DOT_FP32: tl.constexpr, EMPTY: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, KP: tl.constexpr,
):
    pid = tl.program_id(0)
    rb = tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    b_mask = rb < B
    q_inv = tl.load(qinv_ptr + rb, mask=b_mask, other=0.0)  # (BLOCK_B,)
    best = tl.full([BLOCK_B, KP], EMPTY, tl.int64)
    for tile in range(pid, NUM_TILES, NUM_PROGS):
        rn = tile * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
        n_mask = rn < N
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for off in range(0, D, BLOCK_D):
            cols = off + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
            d_mask = cols < D
            qt = tl.load(q_ptr + rb[:, None] * D + cols[None, :], mask=b_mask[:, None] & d_mask[None, :], other=0.0)
            bt = tl.load(
                bank_ptr + rn.to(tl.int64)[:, None] * D + cols[None, :],
                mask=n_mask[:, None] & d_mask[None, :], other=0.0,
            )  # (BLOCK_N, BLOCK_D)
            if DOT_FP32:  # exact float32 products, no TF32
                acc = tl.dot(qt.to(tl.float32), tl.trans(bt.to(tl.float32)), acc, input_precision="ieee")
            else:  # bf16/fp16 x same: products exact in the fp32 accumulator
                acc = tl.dot(qt, tl.trans(bt), acc)
            if not HAS_INV:
                bf = bt.to(tl.float32)
                sq += tl.sum(bf * bf, axis=1)
        if HAS_INV:
            b_inv = tl.load(binv_ptr + rn, mask=n_mask, other=0.0).to(tl.float32)
        else:
            b_inv = 1.0 / tl.maximum(tl.sqrt(sq), eps)
        s = acc * q_inv[:, None] * b_inv[None, :]  # (BLOCK_B, BLOCK_N)
        s = tl.where(n_mask[None, :], s, float("-inf"))
        bits = s.to(tl.int32, bitcast=True)
        key = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # order-preserving int32
        low = (2147483647 - rn).to(tl.int64)  # smaller row wins a tie
        packed = (key.to(tl.int64) << 32) | low[None, :]  # (BLOCK_B, BLOCK_N)
        tile_best = tl.topk(packed, KP)  # (BLOCK_B, KP)
        both = tl.reshape(tl.join(best, tile_best), [BLOCK_B, 2 * KP])
        best = tl.topk(both, KP)
    rk = tl.arange(0, KP)
    out = out_ptr + (rb[:, None] * NUM_PROGS + pid) * KP + rk[None, :]
    tl.store(out, best, mask=b_mask[:, None])


def _blocks(k_pad: int, n: int, d: int) -> tuple[int, int, int]:
    # BLOCK_N >= KP (tl.topk needs it); no wider than a small bank needs (sort cost grows with it)
    block_n = max(k_pad, min(128, max(16, next_power_of_2(n))))
    if triton_interpreting():  # few big steps: the interpreter pays per step
        return 16, block_n, min(max(next_power_of_2(d), 16), 256)
    return 16, block_n, min(max(next_power_of_2(d), 16), 64)


def topk_triton(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    inv_norms: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    programs: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the streaming kernel and merge; inputs already checked and contiguous.

    ``programs`` caps the programs per query block (tests use it to force several tiles
    per program); by default a few waves of the device's SMs.
    """
    if k > MAX_FUSED_K:
        from clara.kernels.reference import cosine_topk_reference

        log.debug("k=%d > %d: using the chunked torch path on %s", k, MAX_FUSED_K, bank.device)
        return cosine_topk_reference(q, bank, k, inv_norms=inv_norms, eps=eps)
    B, D = q.shape
    N = bank.shape[0]
    k_pad = next_power_of_2(k)
    block_b, block_n, block_d = _blocks(k_pad, N, D)
    num_tiles = cdiv(N, block_n)
    b_blocks = cdiv(B, block_b)
    if programs is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 1
        programs = cdiv(4 * sms, b_blocks)
    programs = max(1, min(programs, num_tiles))
    q_inv = (1.0 / q.float().norm(dim=-1).clamp_min(eps)).contiguous()  # (B,)
    # Mixed or float32 inputs: exact fp32 dot. The interpreter (triton 3.9) multiplies bf16
    # tiles as their raw uint16 bits, so it always takes the fp32 dot too.
    dot_fp32 = triton_interpreting() or not (q.dtype == bank.dtype and bank.dtype != torch.float32)
    binv = inv_norms.float().contiguous() if inv_norms is not None else q_inv  # dummy when unused
    out = torch.empty(B, programs, k_pad, device=q.device, dtype=torch.int64)
    jit_kernel(_topk_kernel)[(programs, b_blocks)](
        q, bank, q_inv, binv, out, B, N, D, num_tiles, programs, eps,
        HAS_INV=inv_norms is not None, DOT_FP32=dot_fp32, EMPTY=EMPTY_SLOT,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d, KP=k_pad,
    )
    top, _ = out.view(B, programs * k_pad).topk(k, dim=1)  # (B, k) keys, best first
    return unpack_keys(top)
