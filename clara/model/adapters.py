"""Three LoRA adapters — compressor, query, generator — on one base model (DESIGN §0, §3).

peft's ``set_adapter(name)`` also sets ``requires_grad=False`` on every other adapter, so in
a loss that runs the compressor, then the query reasoner, then the generator, the first
two would silently get no gradient. :class:`AdapterSet` switches the active adapter and
then restores ``requires_grad`` from its own record of which adapters are being trained.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from clara.config import LoraConfig
from clara.errors import CheckpointError

log = logging.getLogger(__name__)

ADAPTERS = ("compressor", "query", "generator")


def peft_lora_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def lora_model(base_model: torch.nn.Module, cfg: LoraConfig, adapter_name: str = "default"):
    """``peft.get_peft_model`` with one LoRA adapter from our config.

    peft probes ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a
    FutureWarning on every wrap; the probe is peft's, harmless, and silenced here alone.
    """
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(base_model, peft_lora_config(cfg), adapter_name=adapter_name)


class AdapterSet:
    """The PEFT-wrapped model plus which adapter is active and which are trained."""

    def __init__(self, base_model: torch.nn.Module, cfg: LoraConfig, names: Iterable[str] = ADAPTERS):
        names = tuple(names)
        self.names = names
        self.peft = lora_model(base_model, cfg, adapter_name=names[0])
        for name in names[1:]:
            self.peft.add_adapter(name, peft_lora_config(cfg))
        # every LoRA tensor by adapter, found once: switching then costs one pass over them
        self._params: dict[str, list[torch.nn.Parameter]] = {
            name: [p for n, p in self.peft.named_parameters() if f".{name}." in n and "lora_" in n] for name in names
        }
        # the LoRA layers, found once: peft's set_adapter walks every module of the model on each
        # switch (a profile of one SCP step spent ~0.1 s there), while switching only needs these
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        modules = list(self.peft.modules())
        self._layers = [m for m in modules if isinstance(m, BaseTunerLayer)]
        # False: switch through peft's set_adapter (auxiliary modules need it; the benchmark compares)
        self.fast_switch = not any(isinstance(m, AuxiliaryTrainingWrapper) for m in modules)
        self.trainable: set[str] = set(names)
        self.active: str | None = None
        self.activate(names[0])

    @property
    def lm(self) -> torch.nn.Module:
        """The causal LM with LoRA layers injected (forward runs the active adapter)."""
        return self.peft.base_model.model

    def _check(self, name: str) -> None:
        if name not in self.names:
            raise ValueError(f"unknown adapter {name!r}; adapters are {', '.join(self.names)}")

    def _sync_requires_grad(self) -> None:
        for name, params in self._params.items():
            for p in params:
                p.requires_grad_(name in self.trainable)

    def set_trainable(self, names: Iterable[str]) -> None:
        """Train exactly ``names``; the other adapters are frozen (no gradient, not returned by parameters())."""
        names = set(names)
        for n in names:
            self._check(n)
        self.trainable = names
        self._sync_requires_grad()

    def activate(self, name: str) -> None:
        self._check(name)
        if name != self.active:
            if self.fast_switch and not any(m.merged for m in self._layers):
                for m in self._layers:  # what peft's set_adapter does per layer, minus requires_grad
                    m._active_adapter = [name]
                self.peft.base_model.active_adapter = name
            else:  # merged layers or auxiliary modules: peft's full path
                self.peft.base_model.set_adapter(name)  # also flips requires_grad: undone below
            self.active = name
        self._sync_requires_grad()

    @contextlib.contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        """Run forwards under adapter ``name`` (None: the bare base model), then switch back."""
        previous = self.active
        if name is None:
            try:
                with self.peft.disable_adapter():
                    yield
            finally:  # peft re-enables the layers through set_adapter, which freezes every other adapter
                self._sync_requires_grad()
            return
        self.activate(name)
        try:
            yield
        finally:
            if previous is not None:
                self.activate(previous)

    def parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The LoRA parameters of adapter ``name``."""
        self._check(name)
        return list(self._params[name])

    def state_dict(self, name: str) -> dict[str, torch.Tensor]:
        from peft.utils import get_peft_model_state_dict

        self._check(name)
        return get_peft_model_state_dict(self.peft, adapter_name=name, save_embedding_layers=False)

    def copy_adapter(self, src: str, dst: str) -> None:
        """Set adapter ``dst``'s weights to ``src``'s (the query reasoner starts as the compressor)."""
        from peft.utils import set_peft_model_state_dict

        self._check(src)
        self._check(dst)
        state = {k: v.detach().clone() for k, v in self.state_dict(src).items()}
        set_peft_model_state_dict(self.peft, state, adapter_name=dst)
        self._sync_requires_grad()

    def save(self, directory: Path, names: Sequence[str] | None = None) -> None:
        """One standard PEFT directory per adapter (``names``, default all): ``directory/<name>/adapter_model.safetensors``."""
        for name in names or ():
            self._check(name)
        self.peft.save_pretrained(
            str(directory), selected_adapters=list(names or self.names), save_embedding_layers=False
        )

    def load(self, directory: Path, names: Sequence[str] | None = None, grow_rank: bool = False) -> None:
        """Load each adapter's weights from ``directory/<name>``; shapes must match this model.

        ``names``: only these (a release asset ships the trained ones); the others keep their init.
        ``grow_rank``: adapters saved at a lower rank load into this higher one as the same function
        (:func:`grow_lora_rank`), to be trained further with more capacity.
        """
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        for name in names if names is not None else self.names:
            if name not in self.names:
                raise CheckpointError(f"{directory}: adapter {name!r} is not one of {', '.join(self.names)}")
            sub = directory / name
            weights = sub / "adapter_model.safetensors"
            if not weights.is_file():
                raise CheckpointError(f"{weights}: missing; the adapter directory is incomplete")
            saved = json.loads((sub / "adapter_config.json").read_text(encoding="utf-8"))
            ours = self.peft.peft_config[name]
            grows = grow_rank and saved.get("r", ours.r) < ours.r and not saved.get("use_rslora")
            same_modules = set(saved.get("target_modules") or []) == set(ours.target_modules)
            if (saved.get("r") != ours.r and not grows) or not same_modules:
                hint = "" if grow_rank else " (a higher model.lora.r than saved loads when a stage starts from them)"
                raise CheckpointError(
                    f"{sub}/adapter_config.json: r={saved.get('r')}, target_modules={saved.get('target_modules')} "
                    f"but the model was built with r={ours.r}, target_modules={sorted(ours.target_modules)}; "
                    f"set model.lora to match the checkpoint{hint}"
                )
            tensors = load_file(str(weights))
            if grows:
                log.info("%s: rank %d saved, %d here: loaded as the same function, the new directions' B at zero",
                         sub, saved["r"], ours.r)
                tensors = grow_lora_rank(tensors, self.state_dict(name), saved["lora_alpha"] / saved["r"],
                                         ours.lora_alpha / ours.r, f"{weights}")
            result = set_peft_model_state_dict(self.peft, tensors, adapter_name=name)
            missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
            if missing or result.unexpected_keys:
                raise CheckpointError(
                    f"{weights}: does not fit this model (missing {missing[:2]}, unexpected {result.unexpected_keys[:2]})"
                )
        self._sync_requires_grad()


def grow_lora_rank(saved: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor], saved_scale: float,
                   scale: float, where: str) -> dict[str, torch.Tensor]:
    """LoRA weights of rank r (``saved``, scaling alpha/r = ``saved_scale``) as weights of the higher rank R of
    ``fresh`` (this model's initialised adapter, scaling ``scale``) with the same update B·A·scaling: A's first
    r rows are the saved ones and the rest keep their fresh init; B's first r columns are the saved ones times
    saved_scale / scale and the rest are zero (so the new directions start silent and train as a fresh LoRA's)."""
    out = {}
    for key, value in saved.items():
        target = fresh.get(key)
        if target is None or target.shape == value.shape or "lora_" not in key:
            out[key] = value
            continue
        r = value.shape[0] if "lora_A" in key else value.shape[1]
        grown = target.detach().clone().to(value.dtype)
        if "lora_A" in key:  # A (R, in)
            if grown.shape[1:] != value.shape[1:]:
                raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}, not [r, {grown.shape[1]}]")
            grown[:r] = value
        else:  # B (out, R)
            if grown.shape[0] != value.shape[0]:
                raise CheckpointError(f"{where}: {key} has shape {tuple(value.shape)}, not [{grown.shape[0]}, r]")
            grown.zero_()
            grown[:, :r] = value * (saved_scale / scale)
        out[key] = grown
    return out
