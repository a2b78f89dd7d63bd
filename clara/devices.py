"""Which device models run on: the GPU when there is one, else the CPU.

``CLARA_DEVICE`` overrides the choice: ``auto`` (default), ``cpu``, ``cuda`` or ``cuda:N``.
Every model built through :meth:`clara.model.clara_model.ClaraModel.from_config` and every model the
shared Trainer trains is moved there; inputs follow the model's parameters.
"""

from __future__ import annotations

import os

import torch

from clara.errors import ConfigError

ENV = "CLARA_DEVICE"


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


__all__ = ["ENV", "default_device", "module_device"]
