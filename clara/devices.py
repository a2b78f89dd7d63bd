"""Which device models run on, and in which precision.

Device: the GPU when there is one, else the CPU. ``CLARA_DEVICE`` overrides the choice: ``auto``
(default), ``cpu``, ``cuda`` or ``cuda:N``. Every model built through
:meth:`clara.model.clara_model.ClaraModel.from_config` and every model the shared Trainer trains is
moved there; inputs follow the model's parameters.

Precision (``train.precision``, and ``--precision`` of index build and serve): ``auto`` picks bf16
autocast only where the device runs bf16 natively — a CPU with avx512_bf16 or AMX, a GPU that
supports it — and fp32 elsewhere, logging the choice once. Emulated bf16 is slow: an explicit bf16
there gets a warning. ``CLARA_PRECISION`` (``auto``, ``fp32``, ``bf16``) replaces ``auto`` wherever
it is the setting, e.g. for the evaluations, which take no flag.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from clara.config import Precision
from clara.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "CLARA_DEVICE"
PRECISION_ENV = "CLARA_PRECISION"
# measured (issue 30): one SCP step on SmolLM2, 2 threads, an AMD EPYC whose flags list no avx512
EMULATED_BF16_COST = "154 s per SCP step in bf16 against 5.7 s in fp32, 27x slower, on an AMD EPYC without AVX-512"


def default_device(local_rank: int | None = None) -> torch.device:
    """The device of this process (``local_rank`` picks the GPU of a distributed rank)."""
    name = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"{ENV}={name!r} is not a device; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{ENV}={name!r} but torch sees no CUDA device (torch {torch.__version__})")
    if device.type == "cuda" and local_rank is not None and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            line = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def native_bf16(device: torch.device | str = "cpu") -> str | None:
    """Why ``device`` runs bf16 natively (``"avx512_bf16"``, ``"amx"``, ``"cuda"``), or None where bf16
    is emulated. On the CPU torch's own probes answer (the instructions its oneDNN kernels use); a torch
    without them falls back to the kernel's flags in /proc/cpuinfo."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    probes = (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported"))
    if all(hasattr(torch.cpu, probe) for _, probe in probes):
        return next((name for name, probe in probes if getattr(torch.cpu, probe)()), None)
    flags = _cpuinfo_flags()
    return "avx512_bf16" if "avx512_bf16" in flags else "amx" if "amx_bf16" in flags else None


_announced: set[tuple[str, str, str]] = set()


def _once(level: int, key: tuple[str, str, str], message: str, *args) -> None:
    if key not in _announced:
        _announced.add(key)
        log.log(level, message, *args)


def _from_environment(requested: Precision) -> Precision:
    if requested is not Precision.AUTO:
        return requested
    name = os.environ.get(PRECISION_ENV, "auto").strip().lower() or "auto"
    try:
        return Precision(name)
    except ValueError:
        raise ConfigError(f"{PRECISION_ENV}={name!r} is not a precision; use auto, fp32 or bf16") from None


def resolve_precision(requested: Precision | str, device: torch.device | str = "cpu", purpose: str = "inference") -> Precision:
    """fp32 or bf16 for ``purpose`` on ``device``: ``auto`` becomes bf16 where it is native, else fp32
    (logged once); an explicit bf16 where it is emulated is kept, with a warning (once)."""
    try:
        requested = _from_environment(Precision(getattr(requested, "value", requested)))
    except ValueError:
        raise ConfigError(f"precision {requested!r}: use auto, fp32 or bf16") from None
    device = torch.device(device)
    native = native_bf16(device)
    if requested is Precision.AUTO:
        chosen = Precision.BF16 if native else Precision.FP32
        why = f"native bf16 ({native})" if native else "no native bf16 (no avx512_bf16 or AMX)"
        _once(logging.INFO, (purpose, device.type, "auto"), "precision auto: %s for %s on %s, %s",
              chosen.value, purpose, device.type, why)
        return chosen
    if requested is Precision.BF16 and not native:
        _once(logging.WARNING, (purpose, device.type, "bf16"),
              "precision bf16 for %s, but this %s has no native bf16 (no avx512_bf16 or AMX): it is emulated "
              "and can be many times slower than fp32 (measured: %s); use fp32 or auto",
              purpose, device.type, EMULATED_BF16_COST)
    return requested


def precision_autocast(precision: Precision, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for a resolved bf16; no context at all for fp32, so that an autocast
    already open around it (the Trainer's) stays in force."""
    if precision is Precision.BF16:
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


__all__ = ["ENV", "PRECISION_ENV", "default_device", "module_device", "native_bf16", "precision_autocast",
           "resolve_precision"]
