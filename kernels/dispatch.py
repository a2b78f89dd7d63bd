"""Backend choice and the public entry points for the kernels.

The kernels (``clara.kernels``; Triton with plain-torch references):
    dispatch.cosine_scores(q [B, D], docs [B, N, D]) -> s [B, N]               (training, with backward)
    dispatch.cosine_topk(q [B, D], bank [N, D], k) -> (values [B, k], indices [B, k])   (serving)
    dispatch.inverse_norms(bank [N, D]) -> [N]: computed once per bank, saves a pass per search
    dispatch.warm_up_topk(bank [N, D], inv_norms, fused=): the search's one-time probes, run when a bank opens
    straight_through.straight_through_topk(scores [B, N], k, temperature) -> (Z [B, k, N], indices [B, k])
    straight_through.select_topk(q, docs, k, temperature) -> (Z, indices, scores); StraightThroughTopK
    reference: the plain-torch definitions the kernels are tested against.
    common: the Backend enum, KernelInputError, input checks and launch helpers they all share.
Every entry point takes ``backend=`` ("auto" | "triton" | "torch" | "faiss" | "cpu", see Backend).
Triton modules are imported, and kernels decorated, only when a Triton backend runs.

Triton runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` (tests).
``backend="auto"`` picks Triton on CUDA; on CPU, the streaming search of ``cpu_topk`` for the
bank search and the plain-torch reference for the training scores. An explicit ``backend=``
("triton", "torch", or "faiss" and "cpu" for the bank search) overrides the choice.
"""

from __future__ import annotations

import functools

import torch

# The shared names live in ``common`` so the kernel modules need not import this module back;
# they are re-exported here because callers import them from ``clara.kernels.dispatch``.
from clara.kernels.common import (  # noqa: F401
    DEFAULT_EPS,
    MAX_BANK_ROWS,
    SUPPORTED_DTYPES,
    Backend,
    KernelInputError,
    cdiv,
    check_dtype,
    check_k,
    check_same_device,
    contiguous,
    jit_kernel,
    next_power_of_2,
    parse_backend,
    triton_interpreting,
)


def triton_usable(device: torch.device) -> bool:
    """Triton can run on ``device``: CUDA compiled, or CPU through the interpreter."""
    if triton_interpreting():
        return device.type == "cpu"
    return device.type == "cuda"


@functools.cache
def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: Backend | str, device: torch.device, *, topk: bool) -> Backend:
    """Turn ``auto`` into a concrete backend and check an explicit one can run on ``device``;
    ``topk``: for the bank search (cosine_topk), where faiss and cpu are choices too."""
    choice = parse_backend(backend)
    if choice is Backend.AUTO:
        if device.type == "cuda":
            return Backend.TRITON
        # CPU: the streaming search for the bank (python -m clara.kernels.bench --cpu-roofline
        # measures it against faiss flat and a plain product), the reference for training.
        return Backend.CPU if topk else Backend.TORCH
    if choice is Backend.TRITON and not triton_usable(device):
        raise KernelInputError(
            f"backend='triton' cannot run on {device}: it needs CUDA tensors (or CPU tensors "
            "with TRITON_INTERPRET=1 set before triton is imported); use backend='auto' or 'torch'"
        )
    if choice in (Backend.FAISS, Backend.CPU) and not topk:
        raise KernelInputError(f"backend='{choice.value}' only serves cosine_topk; use 'auto', 'triton' or 'torch'")
    if choice is Backend.CPU and device.type != "cpu":
        raise KernelInputError(f"backend='cpu' runs on CPU tensors, got {device}; use 'triton'")
    if choice is Backend.FAISS:
        if not faiss_available():
            raise KernelInputError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
        if device.type != "cpu":
            raise KernelInputError(f"backend='faiss' runs on CPU tensors, got {device}; use 'triton'")
    return choice


def cosine_scores(
    q: torch.Tensor,
    docs: torch.Tensor,
    *,
    eps: float = DEFAULT_EPS,
    backend: Backend | str = Backend.AUTO,
) -> torch.Tensor:
    """Batched cosine scores for training, differentiable w.r.t. ``q`` and ``docs``.

    Args:
        q: [B, D] queries (float32, bfloat16 or float16).
        docs: [B, N, D] candidate documents per query, same dtype and device as ``q``.
        eps: norms are clamped to at least ``eps`` (a zero vector scores 0, not NaN).
        backend: "auto" (Triton on CUDA, torch on CPU), "triton" or "torch".

    Returns:
        s: [B, N] float32, ``s[b, n] = cos(q[b], docs[b, n])``; accumulation is in float32
        for every input dtype. Non-contiguous inputs are copied to contiguous ones.
    """
    if q.dim() != 2 or docs.dim() != 3:
        raise KernelInputError(
            f"cosine_scores wants q [B, D] and docs [B, N, D], got q {tuple(q.shape)} and docs {tuple(docs.shape)}"
        )
    B, D = q.shape
    if docs.shape[0] != B or docs.shape[2] != D:
        raise KernelInputError(
            f"docs {tuple(docs.shape)} does not match q {tuple(q.shape)}: expected [{B}, N, {D}]"
        )
    if B == 0 or D == 0 or docs.shape[1] == 0:
        raise KernelInputError(f"empty input: q {tuple(q.shape)}, docs {tuple(docs.shape)}")
    check_dtype("q", q)
    check_dtype("docs", docs)
    if q.dtype != docs.dtype:
        raise KernelInputError(f"q is {q.dtype} but docs is {docs.dtype}; cast one to match")
    check_same_device(q=q, docs=docs)
    choice = resolve_backend(backend, q.device, topk=False)
    if choice is Backend.TORCH:
        from clara.kernels.reference import cosine_scores_reference

        return cosine_scores_reference(q, docs, eps=eps)
    from clara.kernels.triton_scores import CosineScoresFunction

    return CosineScoresFunction.apply(contiguous("q", q), contiguous("docs", docs), eps)


def cosine_topk(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    *,
    inv_norms: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    backend: Backend | str = Backend.AUTO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine top-k of each query against a bank, for serving (no gradient).

    Args:
        q: [B, D] queries; float32, bfloat16 or float16.
        bank: [N, D] rows to search (N up to 10^7); any supported dtype, same device as ``q``.
        k: how many rows to return per query, 1 <= k <= N.
        inv_norms: optional [N] precomputed ``1 / max(|bank[n]|, eps)``; saves the norm pass.
        eps: norm clamp, as in :func:`cosine_scores`.
        backend: "auto" (Triton on CUDA, the streaming search on CPU), "triton", "cpu",
            "torch" (the plain reference) or "faiss" (inner-product search on a normalised
            float32 copy).

    Returns:
        (values [B, k] float32, indices [B, k] int64), best first. Triton and cpu break ties
        toward the smaller row; torch and faiss may order tied rows differently.
    """
    if q.dim() != 2 or bank.dim() != 2:
        raise KernelInputError(
            f"cosine_topk wants q [B, D] and bank [N, D], got q {tuple(q.shape)} and bank {tuple(bank.shape)}"
        )
    if q.shape[1] != bank.shape[1]:
        raise KernelInputError(f"dimension mismatch: q has D={q.shape[1]} but bank rows have D={bank.shape[1]}")
    if q.shape[0] == 0 or q.shape[1] == 0:
        raise KernelInputError(f"empty query batch q {tuple(q.shape)}")
    check_k(k, bank.shape[0], what="bank rows")
    if bank.shape[0] > MAX_BANK_ROWS:
        raise KernelInputError(f"bank has {bank.shape[0]} rows; at most {MAX_BANK_ROWS} are supported, shard it")
    check_dtype("q", q)
    check_dtype("bank", bank)
    tensors = {"q": q, "bank": bank}
    if inv_norms is not None:
        if inv_norms.shape != (bank.shape[0],):
            raise KernelInputError(f"inv_norms has shape {tuple(inv_norms.shape)}, expected ({bank.shape[0]},)")
        check_dtype("inv_norms", inv_norms)
        tensors["inv_norms"] = inv_norms
    check_same_device(**tensors)
    choice = resolve_backend(backend, q.device, topk=True)
    with torch.no_grad():
        if choice is Backend.FAISS:
            from clara.kernels.reference import cosine_topk_faiss

            return cosine_topk_faiss(q, bank, k, inv_norms=inv_norms, eps=eps)
        if choice is Backend.TORCH:
            from clara.kernels.reference import cosine_topk_reference

            return cosine_topk_reference(q, bank, k, inv_norms=inv_norms, eps=eps)
        if choice is Backend.CPU:
            from clara.kernels.cpu_topk import topk_cpu

            return topk_cpu(q, bank, k, inv_norms=inv_norms, eps=eps)
        from clara.kernels.triton_topk import topk_triton

        return topk_triton(contiguous("q", q), contiguous("bank", bank), k, inv_norms=inv_norms, eps=eps)


def warm_up_topk(bank: torch.Tensor, inv_norms: torch.Tensor | None = None, *, backend: Backend | str = "auto",
                 fused: bool = False) -> None:
    """Run the one-time probes of the bank search (on CPU: which product one query scores through) now,
    when a bank is opened, instead of in its first :func:`cosine_topk` call. ``fused`` first compiles the
    CPU's fused one-query product (seconds; a server does, see ``cpu_topk.compile_fused``)."""
    if resolve_backend(backend, bank.device, topk=True) is Backend.CPU:
        from clara.kernels.cpu_topk import warm_up

        warm_up(bank, inv_norms, fused=fused)


def inverse_norms(bank: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """[N] float32 ``1 / max(|bank[n]|, eps)``, chunk by chunk (no float32 copy of the bank):
    computed once when a bank is loaded, then passed to every :func:`cosine_topk` call."""
    if bank.dim() != 2 or bank.shape[0] == 0:
        raise KernelInputError(f"inverse_norms wants a bank [N, D] with N >= 1, got {tuple(bank.shape)}")
    check_dtype("bank", bank)
    from clara.kernels.cpu_topk import inverse_norms as chunked_inverse_norms

    return chunked_inverse_norms(bank, eps)
