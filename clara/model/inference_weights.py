"""bf16 inference weights: the backbone's linear layers cast to bf16 once, the LoRA factors kept fp32.

Autocast casts a frozen fp32 weight again in every forward (its cache keeps only weights that need grad),
which cost a decode step more than its matrix products. :func:`cast_linears` gives every linear layer but
the LoRA factors a bf16 weight once, with the values autocast would make, so the bare backbone's results
are unchanged. The factors stay fp32 and, for a few rows (a decode step), run outside autocast: each is a
small oneDNN bf16 call otherwise, two per adapted layer, and in fp32 a one-position forward ran 1.14×
faster (eval/bench_serving.py ``--parts weights``, docs/RESULTS.md §7). A tied output embedding gets its
own bf16 copy; the input embedding and norms stay fp32. For inference only.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

FP32_FACTOR_ROWS = 64  # up to this many rows a LoRA factor runs in fp32 (decode steps); more: bf16 autocast


def lora_factors(lm: nn.Module) -> list[nn.Linear]:
    """The LoRA A and B linears of every adapter (peft's ``lora_A`` / ``lora_B`` module dicts)."""
    return [f for m in lm.modules() for name in ("lora_A", "lora_B")
            if isinstance(getattr(m, name, None), nn.ModuleDict) for f in getattr(m, name).values()]


def cast_linears(lm: nn.Module, dtype: torch.dtype, keep: bool) -> dict:
    """Give every fp32 ``nn.Linear`` of ``lm`` but the LoRA factors a ``dtype`` weight, and run the factors
    in fp32 outside autocast -> {module: its fp32 weight} if ``keep`` (for :func:`restore_linears`)."""
    factors = lora_factors(lm)
    skip = {id(f) for f in factors}
    kept = {}
    for module in lm.modules():
        if isinstance(module, nn.Linear) and id(module) not in skip and module.weight.dtype == torch.float32:
            if keep:
                kept[module] = module.weight
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
    for f in factors:
        f.forward = fp32_linear_forward(f)
    return kept


def restore_linears(lm: nn.Module, kept: dict) -> None:
    """Undo :func:`cast_linears`: the kept fp32 weights back, the factors' own forward again."""
    for module, weight in kept.items():
        module.weight = weight
    bf16_factor_forwards(lm)


def bf16_factor_forwards(lm: nn.Module) -> None:
    """The LoRA factors' own forward again (under autocast: bf16), dropping :func:`fp32_linear_forward`."""
    for f in lora_factors(lm):
        f.__dict__.pop("forward", None)  # the class's forward again


def fp32_linear_forward(linear: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """``linear``'s forward (set on the instance; deleting it restores the class's): in fp32 with autocast
    off for inputs of at most FP32_FACTOR_ROWS rows, where a bf16 product's fixed cost dominates; as the
    class runs it (under autocast: bf16) for more, where converting the activations to fp32 costs more."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[:-1].numel() > FP32_FACTOR_ROWS:
            return type(linear).forward(linear, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return nn.functional.linear(x.float(), linear.weight, linear.bias)

    return forward
