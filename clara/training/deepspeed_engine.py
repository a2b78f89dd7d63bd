"""DeepSpeed ZeRO under the shared loop (``train.backend=deepspeed``).

The Trainer builds the torch AdamW and LR scheduler as usual and hands both to
``deepspeed.initialize`` as client objects, so no DeepSpeed C++ optimizer op has to compile
(on a CPU-only machine DeepSpeed runs on its CPU accelerator with the gloo backend). The engine
does accumulation (``gradient_accumulation_steps``), clipping (``gradient_clipping``) and steps
the scheduler at each accumulation boundary.

NaN guard under DeepSpeed is weaker than in the plain loop: the engine owns the gradient
buffers, so a micro-batch with a non-finite loss is replaced by a zero-gradient backward (its
data is dropped) and counted as a bad step; the optimizer still steps on the other micro-batches
(AdamW momentum can move parameters even when all were dropped). K bad steps in a row abort.

Checkpoints use the engine's own save/load (ZeRO-partitioned optimizer state, one file set per
rank) inside the same ``step-NNNNNN`` directory layout, manifest and ``latest`` pointer.

The functions take the loop's ``Trainer`` (``clara.training.loop``), which calls them; they do not
import it, so the two modules form no loop.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from clara.config import Precision, TrainConfig
from clara.fileio import atomic_write_json, atomic_write_text, write_manifest
from clara.training.checkpoint import LATEST, prune_checkpoints, step_dir_name
from clara.training.distributed import DistContext, deepspeed_config

log = logging.getLogger(__name__)
ENGINE_TAG = "engine"


def wrap_deepspeed(module, optimizer, scheduler, cfg: TrainConfig, ctx: DistContext, precision: Precision | None = None):
    import deepspeed

    ds_cfg = deepspeed_config(cfg, ctx.world_size, precision)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg)
    log.info("DeepSpeed ZeRO stage %s, micro-batch %d x accumulation %d x %d ranks",
             ds_cfg.get("zero_optimization", {}).get("stage", 0), cfg.batch_size, cfg.grad_accum, ctx.world_size)
    return engine


def deepspeed_step(trainer, grad_accum: int):
    """Run ``grad_accum`` micro-batches through the engine; returns the loop's accounting tuple."""
    engine = trainer.engine
    lr = trainer.scheduler.get_last_lr()[0]
    losses, sums, bad = [], defaultdict(float), False
    for _ in range(grad_accum):
        batch = trainer.batches.next_batch()
        loss, metrics = trainer.loss_fn(engine, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            bad = True
            # Keep every rank's backward hooks firing (ZeRO reduces in them) but add nothing.
            loss = sum(p.sum() for p in trainer.params) * 0.0
        engine.backward(loss)  # the engine divides by gradient_accumulation_steps itself
        engine.step()  # steps optimizer + scheduler only at the accumulation boundary
        losses.append(value)
        for key, v in metrics.items():
            sums[key] += float(v)
    norm = engine.get_global_grad_norm()
    grad_norm = float(norm) if norm is not None else 0.0
    return losses, sums, grad_norm, lr, trainer.ctx.any_true(bad)


def save_deepspeed(trainer, rng: list[dict[str, Any]]) -> Path:
    """Collective save: every rank writes its ZeRO shard, rank 0 completes and publishes the dir."""
    ctx, root, step = trainer.ctx, trainer.ckpt_root, trainer.counters.step
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.ds.tmp"  # hidden name: never taken for a checkpoint, pruned if stale
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    ctx.barrier()
    trainer.engine.save_checkpoint(str(tmp), tag=ENGINE_TAG)
    ctx.barrier()
    if ctx.is_main:
        torch.save(rng, tmp / "rng.pt")
        extra = {name: get() for name, (get, _) in trainer.extra_state.items()}
        if extra:
            torch.save(extra, tmp / "extra.pt")
        atomic_write_json(tmp / "trainer_state.json", trainer.trainer_state())
        if trainer.on_save is not None:
            trainer.on_save(step, tmp)
        write_manifest(tmp, {"step": step, "config_hash": trainer.config_hash, "backend": "deepspeed"})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(root / LATEST, final.name + "\n")
        prune_checkpoints(root, trainer.cfg.keep_checkpoints)
        log.info("saved DeepSpeed checkpoint %s", final)
    ctx.barrier()
    return final


def load_deepspeed(engine, path: Path) -> None:
    load_path, _ = engine.load_checkpoint(str(path), tag=ENGINE_TAG)
    if load_path is None:
        from clara.errors import CheckpointError

        raise CheckpointError(f"{path}: DeepSpeed could not load its engine state (tag '{ENGINE_TAG}')")
