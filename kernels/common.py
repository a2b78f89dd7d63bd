"""What the kernel modules share: the backend names, the error, input checks and launch helpers.

``dispatch`` (the public entry points) and the kernel modules (``triton_scores``,
``triton_topk``, ``reference``) all import from here, and this module imports none of them,
so the entry points can import the kernels lazily without an import loop.
"""

from __future__ import annotations

import enum
import logging
import os

import torch

from clara.errors import ClaraError

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DEFAULT_EPS = 1e-8
# The packed (score, index) keys of the top-k searches keep the index in 31 bits.
MAX_BANK_ROWS = 2**31 - 2
ROW_BITS_MAX = 2**31 - 1


class KernelInputError(ClaraError, ValueError):
    """Bad kernel input (shape, dtype, device, k); the message says what to change."""


class Backend(str, enum.Enum):
    """Which implementation runs a kernel call."""

    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"
    FAISS = "faiss"
    CPU = "cpu"  # the streaming exact bank search on CPU (cosine_topk only)


def parse_backend(backend: Backend | str) -> Backend:
    try:
        return Backend(backend)
    except ValueError:
        choices = ", ".join(b.value for b in Backend)
        raise KernelInputError(f"backend={backend!r} is unknown; use one of: {choices}") from None


def triton_interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``).

    Triton reads the variable when ``triton.language`` is first imported (its own library
    functions are decorated then), so setting it later in a process has no effect; once
    Triton is imported, the decoration of ``tl.sum`` is the ground truth.
    """
    import sys

    if "triton.language" in sys.modules:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(sys.modules["triton.language"].standard.sum, InterpretedFunction)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise KernelInputError(
            f"{name} has dtype {t.dtype}; use float32, bfloat16 or float16 (cast with .float())"
        )


def check_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        where = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise KernelInputError(f"inputs are on different devices ({where}); move them to one device")


def check_k(k: int, n: int, what: str = "candidates") -> None:
    if isinstance(k, bool) or not isinstance(k, int):
        raise KernelInputError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise KernelInputError(f"k={k} must be at least 1")
    if k > n:
        raise KernelInputError(f"k={k} exceeds the number of {what} N={n}; use k <= {n}")


def contiguous(name: str, t: torch.Tensor) -> torch.Tensor:
    """Kernels index rows by pointer arithmetic: make a dense copy, said out loud."""
    if t.is_contiguous():
        return t
    log.debug("%s is not contiguous (strides %s): copying to a contiguous tensor", name, t.stride())
    return t.contiguous()


_JIT_CACHE: dict[tuple[object, bool], object] = {}


def jit_kernel(fn):
    """``triton.jit(fn)``, applied at first launch rather than at import.

    Triton decides between compiling and interpreting when ``@triton.jit`` runs; deferring
    our decoration keeps importing ``clara.kernels`` from importing triton at all.
    """
    key = (fn, triton_interpreting())
    if key not in _JIT_CACHE:
        import triton

        _JIT_CACHE[key] = triton.jit(fn)
    return _JIT_CACHE[key]


def next_power_of_2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pack_keys(scores: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """float32 scores and their rows (broadcastable) -> int64 keys ordered by (score, -row).

    The high 32 bits map the float's bits to an order-preserving int32, the low 31 hold
    2^31 - 1 - row: the largest key is the best score, ties going to the smaller row. The
    Triton top-k builds the same keys in its kernel.
    """
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)  # + 0.0: -0.0 ties with 0.0
    key = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return (key.to(torch.int64) << 32) | (ROW_BITS_MAX - rows)


def unpack_keys(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 keys -> (float32 scores, int64 rows)."""
    key = (packed >> 32).to(torch.int32)
    bits = torch.where(key >= 0, key, key ^ 0x7FFFFFFF)
    return bits.view(torch.float32), ROW_BITS_MAX - (packed & 0xFFFFFFFF)
