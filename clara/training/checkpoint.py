"""Checkpoints: written atomically, verified on load, with fallback to an older one.

Layout under ``<out_dir>/checkpoints/``::

    step-000050/
        trainable.safetensors   parameters with requires_grad, by name (LoRA, memory rows)
        optimizer.pt            optimizer state_dict (tensors and plain values only)
        scheduler.json          LR scheduler state_dict
        rng.pt                  python / numpy / torch RNG states, one entry per rank
        extra.pt                state the caller registered (optional)
        trainer_state.json      step, data position, bad-step counters, config hash, losses
        manifest.json           sha256 and size of every file above
    latest                      name of the newest complete checkpoint

A directory is assembled under a temporary name and renamed whole, the manifest is written
last inside it, and ``latest`` is replaced only after the rename, so a kill at any moment
leaves either the old or the new checkpoint, never half of one.
"""

from __future__ import annotations

import io
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from clara.errors import CheckpointError
from clara.fileio import atomic_dir, atomic_write_json, atomic_write_text, verify_manifest, write_manifest

log = logging.getLogger(__name__)

LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ---------------------------------------------------------------- RNG


def capture_rng() -> dict[str, Any]:
    """RNG states as tensors and plain values, so ``torch.load(weights_only=True)`` reads them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- saving


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    # Serialised in memory and written here, so a full disk is an OSError with its errno (torch.save writing to
    # a file reports one as 'RuntimeError: [enforce fail at inline_container.cc...]', safetensors as its own error).
    with open(path, "wb") as f:
        f.write(data)


def _save_torch(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _write_bytes(path, buffer.getbuffer())


@dataclass
class CheckpointData:
    """Everything one checkpoint holds (rank 0 gathers it before saving)."""

    step: int
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: list[dict[str, Any]]  # one per rank
    trainer_state: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def save_checkpoint(
    root: Path, data: CheckpointData, keep: int, on_save: Callable[[int, Path], None] | None = None
) -> Path:
    """Write ``root/step-NNNNNN`` atomically, point ``latest`` at it, prune to ``keep`` newest."""
    final = root / step_dir_name(data.step)
    with atomic_dir(final) as tmp:
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in data.trainable.items()}
        _write_bytes(tmp / "trainable.safetensors", safetensors_bytes(tensors))
        _save_torch(data.optimizer, tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(data.scheduler, indent=1), encoding="utf-8")
        _save_torch(data.rng, tmp / "rng.pt")
        if data.extra:
            _save_torch(data.extra, tmp / "extra.pt")
        atomic_write_json(tmp / "trainer_state.json", data.trainer_state)
        if on_save is not None:
            on_save(data.step, tmp)  # e.g. PEFT adapter directories; covered by the manifest
        write_manifest(tmp, {"step": data.step, "config_hash": data.trainer_state.get("config_hash")})
    atomic_write_text(root / LATEST, final.name + "\n")
    prune_checkpoints(root, keep)
    log.info("saved checkpoint %s", final)
    return final


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-looking step directories, newest first (temporary dirs are hidden names)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*"):  # temp dirs left by a kill mid-save
        shutil.rmtree(stale, ignore_errors=True)


# ---------------------------------------------------------------- loading


def find_resumable(root: Path) -> Path | None:
    """The checkpoint named by ``latest`` if it verifies, else the newest older one that does.

    A corrupt checkpoint is reported with the file that failed, and the fallback is announced,
    so a silently older resume point never goes unnoticed.
    """
    candidates = list_checkpoints(root)
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        named = [p for p in candidates if p.name == name]
        if not named:
            log.error("%s names %r, which does not exist; looking for older checkpoints", pointer, name)
        candidates = named + [p for p in candidates if p.name != name]
    first_error = None
    for path in candidates:
        try:
            verify_manifest(path)
        except CheckpointError as e:
            log.error("checkpoint refused: %s", e)
            first_error = first_error or e
            continue
        if first_error is not None:
            log.warning("falling back to the previous valid checkpoint %s", path)
        return path
    if first_error is not None:
        raise CheckpointError(f"no valid checkpoint under {root}; newest problem: {first_error}")
    return None


def load_checkpoint(path: Path, verify: bool = True) -> CheckpointData:
    if verify:
        verify_manifest(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))

        def optional(name: str, read: Callable[[Path], Any]) -> Any:
            # A DeepSpeed checkpoint keeps weights and optimizer in the engine's own files.
            return read(path / name) if (path / name).exists() else {}

        return CheckpointData(
            step=int(state["step"]),
            trainable=optional("trainable.safetensors", lambda p: load_file(str(p))),
            optimizer=optional("optimizer.pt", lambda p: torch.load(p, weights_only=True)),
            scheduler=optional("scheduler.json", lambda p: json.loads(p.read_text(encoding="utf-8"))),
            rng=torch.load(path / "rng.pt", weights_only=True),
            extra=optional("extra.pt", lambda p: torch.load(p, weights_only=True)),
            trainer_state=state,
            path=path,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e})") from None


def load_trainable(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Copy saved tensors into the module's trainable parameters; names must match exactly."""
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: trainable parameters do not match the model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); was it saved by another model or adapter setup?"
        )
    with torch.no_grad():
        for name, p in params.items():
            if p.shape != tensors[name].shape:
                saved = tuple(tensors[name].shape)
                raise CheckpointError(f"{source}: '{name}' has shape {saved}, the model has {tuple(p.shape)}")
            p.copy_(tensors[name])
