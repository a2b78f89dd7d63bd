"""Loading a trained model: the one resolver of an adapters directory and the one reader of its
``clara_model.json`` (DESIGN §3), for training stages that start from an earlier run, evaluation,
the bank and the server.

    model = load_trained_model("out/joint/adapters")            # eval mode, adapters loaded
    directory, cfg = model_config_from_adapters("out/joint")     # the ModelConfig they were trained with
    model = model_from_adapters(cfg, cfg.joint.init_adapters, "joint.init_adapters")   # a stage's start
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from clara.config import (BackboneKind, ClaraConfig, LoraConfig, MemoryLayout, MemoryNorm, MemoryReadout, ModelConfig,
                          Precision, SelectDetach, from_dict)
from clara.errors import CheckpointError, ConfigError
from clara.model.storage import MODEL_INFO

log = logging.getLogger(__name__)


class MissingAdaptersError(ConfigError, CheckpointError):
    """No adapters where a config key or option points: a wrong setting and a missing checkpoint alike."""


def resolve_adapters_dir(path: str | Path, key: str = "--model") -> Path:
    """An adapters directory (holds clara_model.json) or a run directory with ``adapters/`` in it.

    ``key`` names the config key or option that gave ``path``, for the error message.
    """
    path = Path(path)
    for candidate in (path, path / "adapters"):
        if (candidate / MODEL_INFO).is_file():
            return candidate
    problem = "does not exist" if not path.exists() else (
        f"holds no adapters (no {MODEL_INFO} there or in {path / 'adapters'})")
    raise MissingAdaptersError(f"{key}: {path} {problem}; point it at a trained run or its adapters directory")


def read_model_info(directory: Path) -> dict:
    """The adapters' own record: backbone, chunk_len, num_mem, LoRA, how the generator is asked."""
    path = Path(directory) / MODEL_INFO
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        chunk_len, num_mem = int(info["chunk_len"]), int(info["num_mem"])
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e!r}); write it again with the stage that trained it") from None
    if num_mem < 1 or chunk_len % num_mem:
        raise CheckpointError(f"{path}: chunk_len {chunk_len} is not a multiple of num_mem {num_mem}")
    return info


def detect_backbone_kind(backbone: Path) -> str:
    """gguf for a .gguf file; else the kind a converted backbone records (clara_backbone.json), else hf."""
    if backbone.is_file() and backbone.suffix == ".gguf":
        return "gguf"
    try:
        return json.loads((backbone / "clara_backbone.json").read_text(encoding="utf-8")).get("kind", "hf")
    except (OSError, ValueError):
        return "hf"


def model_config_from_adapters(path: str | Path, backbone: str | Path | None = None,
                               key: str = "--model", backbone_key: str = "--backbone") -> tuple[Path, ModelConfig]:
    """(adapters directory, the ModelConfig they were trained with); ``backbone`` replaces the recorded one.
    ``key`` and ``backbone_key``: the caller's flags for them, named in errors."""
    directory = resolve_adapters_dir(path, key)
    info = read_model_info(directory)
    bb = Path(backbone or info.get("backbone") or "")
    if not str(bb) or not bb.exists():
        raise CheckpointError(f"{directory / MODEL_INFO}: backbone {str(bb)!r} does not exist here; pass {backbone_key} DIR")
    kind = info.get("backbone_kind") if not backbone else None
    cfg = ModelConfig(
        backbone=str(bb), kind=BackboneKind(kind or detect_backbone_kind(bb)), chunk_len=int(info["chunk_len"]),
        compression_rate=int(info["chunk_len"]) // int(info["num_mem"]),
        lora=from_dict(LoraConfig, {**info.get("lora", {}), "dropout": 0.0}),
        rescale_memory=info.get("rescale_memory", True),
        memory_readout=MemoryReadout(info.get("memory_readout", "states")),
        memory_layout=MemoryLayout(info.get("memory_layout", "end")),
        # a selector needs its memory norm at construction; otherwise load_adapters adopts the recorded one
        memory_norm=MemoryNorm(info.get("memory_norm", "none") if info.get("memory_select") else "none"),
        memory_select=int(info.get("memory_select", 0)),
        memory_select_detach=SelectDetach(info.get("memory_select_detach", "none")),  # older files: a bool
    )  # fmt: skip
    return directory, cfg


def load_trained_model(path: str | Path, backbone: str | Path | None = None, key: str = "--model",
                       precision: Precision | str = Precision.AUTO, backbone_key: str = "--backbone"):
    """A ClaraModel rebuilt from an adapters directory's own record, its adapters loaded, in eval mode,
    its forwards in ``precision`` (auto: bf16 where the device runs it natively, :mod:`clara.devices`).

    ``load_adapters`` refuses a backbone whose hash differs from the recorded one."""
    from clara.devices import resolve_precision
    from clara.model.clara_model import ClaraModel

    directory, cfg = model_config_from_adapters(path, backbone, key, backbone_key)
    model = ClaraModel.from_config(cfg)
    model.load_adapters(directory, backbone_key=f"{backbone_key} DIR")
    model.eval()
    model.set_inference_precision(resolve_precision(precision, model.device))
    log.info("model loaded from %s (backbone %s, m=%d, H=%d)", directory, cfg.backbone, model.num_mem,
             model.hidden_size)
    return model


def model_from_adapters(cfg: ClaraConfig, init_adapters: str, key: str, missing: str = "", other_cr: bool = False,
                        other_backbone: bool = False):
    """A stage's starting model: seeded, with an earlier run's adapters loaded, or fresh ones (logging
    ``missing`` if given). ``key``: the config key that gave ``init_adapters`` (named in the error when it
    holds none). ``other_cr``, ``other_backbone``: adapters of another compression rate or backbone load too
    (``load_adapters``); adapters of a lower LoRA rank than ``model.lora.r`` load as the same function.
    """
    from clara.model.clara_model import ClaraModel
    from clara.training import seed_everything

    seed_everything(cfg.train.seed)  # LoRA init draws from the torch RNG: same model on every run
    model = ClaraModel.from_config(cfg.model, seed=cfg.train.seed)
    if init_adapters:
        model.load_adapters(resolve_adapters_dir(init_adapters, key), other_cr=other_cr, other_backbone=other_backbone,
                            grow_rank=True)
    elif missing:
        log.warning(missing)
    return model
