"""Release assets: trained adapters small enough to commit, so `make demo` starts from a trained system.

DESIGN §11: on 2 CPU cores SCP needs far longer than a demo has, so adapters trained by the
project's own ``clara pretrain train`` are shipped as an asset. A release keeps only the adapters
that stage trained (the query adapter of an SCP run is untouched: joint training starts it as a
copy of the compressor), stores their weights in bfloat16 (half the bytes; the loader casts them
back), and carries the exact config and command that reproduce it plus its measured quality::

    clara pretrain release RUN --out assets/scp-smollm2-cr16 --command "clara pretrain train ..."

The result is an ordinary adapter directory (`ClaraModel.load_adapters`, `clara eval compression
--model DIR`) with a manifest of checksums.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Sequence

from clara.errors import CheckpointError

log = logging.getLogger(__name__)

DTYPES = ("bfloat16", "float16", "float32")


def _cast_file(src: Path, dst: Path, dtype: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata={"format": "pt"})
    dst.chmod(0o644)  # safetensors writes 0600; a release is meant to be shared


def write_release(
    source: str | Path,
    out: str | Path,
    *,
    keep: Sequence[str] = ("compressor", "generator"),
    dtype: str = "bfloat16",
    command: str = "",
    notes: str = "",
    train_config: str | Path | None = None,
    backbone_path: str | None = None,
) -> Path:
    """Copy the ``keep`` adapters of ``source`` (a run dir or adapter dir) to ``out`` as a release.

    ``train_config``: the run's resolved config (default: ``config.yaml`` beside the adapters).
    ``backbone_path``: the backbone directory the release names (default: the run's), e.g. where the
    README's ``clara backbone convert --out DIR`` puts it, so loaders find it with no ``--backbone``;
    the backbone hash, which loading checks, is the run's either way."""
    from clara.model.loading import resolve_adapters_dir
    from clara.fileio import atomic_dir, atomic_write_json, atomic_write_text, verify_manifest, write_manifest
    from clara.model.storage import MEM_EMBED_FILE, MODEL_INFO

    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype}: must be one of {', '.join(DTYPES)}")
    adapters = resolve_adapters_dir(source, "RUN")
    verify_manifest(adapters)
    info = json.loads((adapters / MODEL_INFO).read_text(encoding="utf-8"))
    unknown = [k for k in keep if k not in info["adapters"]]
    if unknown:
        raise CheckpointError(f"{adapters}: no adapter {', '.join(unknown)} (it has {', '.join(info['adapters'])})")
    run_config = Path(train_config) if train_config else adapters.parent / "config.yaml"
    if train_config and not run_config.is_file():
        raise CheckpointError(f"--train-config {run_config}: no such file")
    with atomic_dir(Path(out)) as tmp:
        for name in keep:
            (tmp / name).mkdir()
            shutil.copyfile(adapters / name / "adapter_config.json", tmp / name / "adapter_config.json")
            _cast_file(adapters / name / "adapter_model.safetensors", tmp / name / "adapter_model.safetensors", dtype)
        shutil.copyfile(adapters / MEM_EMBED_FILE, tmp / MEM_EMBED_FILE)  # small; keeps the running stats exact
        if run_config.is_file():
            shutil.copyfile(run_config, tmp / "train_config.yaml")
        release = {"source": str(adapters), "dtype": dtype, "command": command,
                   "train_config": "train_config.yaml" if run_config.is_file() else None}
        if backbone_path:
            info = {**info, "backbone": backbone_path}
        atomic_write_json(tmp / MODEL_INFO, {**info, "adapters": list(keep), "release": release})
        atomic_write_text(tmp / "README.md", _readme(info, keep, dtype, command, notes))
        write_manifest(tmp, {"kind": "clara_adapters", "release": True})
    log.info("release written to %s", out)
    return Path(out)


def _readme(info: dict, keep: Sequence[str], dtype: str, command: str, notes: str) -> str:
    lines = [
        "# CLaRa release adapters",
        "",
        f"- adapters: {', '.join(keep)} (LoRA r={info['lora']['r']}, weights stored in {dtype})",
        f"- backbone: `{info['backbone']}` (hash {info['backbone_hash']}); loading refuses any other backbone"
        + (f" except another build of the same recipe ({info['backbone_recipe']})" if info.get("backbone_recipe") else ""),
        f"- memory: {info['num_mem']} vectors per {info['chunk_len']}-token document "
        f"(CR {info['chunk_len'] // info['num_mem']}), memory_norm={info.get('memory_norm', 'none')}",
        "- reproduce: the exact training config is `train_config.yaml`; the command:",
        "",
        "```",
        command or "(not recorded)",
        "```",
        "",
    ]
    if notes:
        lines += [notes.rstrip(), ""]
    return "\n".join(lines)
