"""The one training loop every stage uses (SCP, joint, RL).

    trainer = Trainer(model, cfg.train, out_dir, loss_fn, ResumableBatches(data, 8, collate),
                      config_for_hash=cfg)
    result = trainer.train(resume=args.resume)

One optimizer step = ``grad_accum`` micro-batches of ``batch_size``, each loss divided by
``grad_accum`` before backward. Only parameters with ``requires_grad`` are optimised (AdamW)
and checkpointed. A step whose loss or gradient is NaN/inf is skipped: gradients are zeroed,
neither the optimizer nor the LR scheduler steps, parameters stay as they were. The skipped
step still consumed its micro-batches and still counts towards ``max_steps`` (so the data
position and step counter never drift apart); after ``max_bad_steps`` consecutive skips the
run stops with a ClaraError.

``loss_fn(model, batch) -> (loss, metrics)`` receives the *wrapped* model (DDP module or
DeepSpeed engine): call it (``model(...)``) so gradients are synchronised across ranks;
``trainer.module`` is the bare model. Metrics with key ``tokens`` are summed into tokens/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from clara.config import Backend, LRSchedule, Precision, TrainConfig, config_hash, save_resolved
from clara.errors import CheckpointError, ClaraError
from clara.training.checkpoint import (
    CheckpointData, capture_rng, find_resumable, list_checkpoints, load_checkpoint, load_trainable,
    restore_rng, save_checkpoint,
)
from clara.devices import default_device, resolve_precision
from clara.training.data_state import ResumableBatches
from clara.training.distributed import DistContext, init_distributed
from clara.training.metrics import MetricsLogger

log = logging.getLogger(__name__)

PLOTS_ENV = "CLARA_PLOTS"  # "0": no curves.png at checkpoints (about 1 s each; the fast tests set it)

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, dict[str, float]]"]


@dataclass
class TrainResult:
    step: int  # steps completed (skipped ones included)
    losses: list[float | None]  # per step since step 1; None for a skipped step
    bad_steps: int  # skipped steps in total
    resumed_from: int | None  # the checkpoint step a resumed run started from
    checkpoint: Path | None  # the last checkpoint written (rank 0)


@dataclass
class _Counters:
    step: int = 0
    bad_total: int = 0
    bad_consecutive: int = 0
    losses: list[float | None] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_multiplier(cfg: TrainConfig) -> Callable[[int], float]:
    """LR factor after ``s`` optimizer steps: linear warmup, then constant/linear/cosine decay."""

    def factor(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        progress = min(1.0, (s - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
        if cfg.schedule == LRSchedule.LINEAR:
            return 1.0 - progress
        if cfg.schedule == LRSchedule.COSINE:
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        out_dir: str | Path,
        loss_fn: LossFn,
        batches: ResumableBatches,
        *,
        config_for_hash: Any = None,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        eval_every: int = 0,
        on_step: Callable[[int, dict[str, Any]], None] | None = None,
        on_save: Callable[[int, Path], None] | None = None,
        allow_config_change: bool = False,
    ):
        self.module, self.cfg, self.out_dir = model, cfg, Path(out_dir)
        self.loss_fn, self.batches = loss_fn, batches
        self.config = config_for_hash if config_for_hash is not None else cfg
        self.config_hash = config_hash(self.config)
        self.eval_fn, self.eval_every = eval_fn, eval_every
        self.on_step, self.on_save = on_step, on_save
        self.allow_config_change = allow_config_change
        self.ckpt_root = self.out_dir / "checkpoints"
        self.extra_state: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {}
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ClaraError("the model has no parameters with requires_grad=True; nothing to train")
        self.ctx: DistContext | None = None
        self.model: nn.Module = model  # replaced by the DDP wrapper / DeepSpeed engine in _setup
        self.engine = None
        self.counters = _Counters()
        self.last_checkpoint: Path | None = None

    def register_state(self, name: str, get_state: Callable[[], Any], set_state: Callable[[Any], None]) -> None:
        """Save ``get_state()`` (tensors / plain values) with each checkpoint; restore on resume."""
        self.extra_state[name] = (get_state, set_state)

    # ------------------------------------------------------------ setup

    def _setup(self) -> None:
        cfg = self.cfg
        self.ctx = init_distributed(cfg.backend)
        self.batches.set_shard(self.ctx.rank, self.ctx.world_size)
        device = default_device(self.ctx.local_rank if self.ctx.world_size > 1 else None)
        self.precision = resolve_precision(cfg.precision, device, "training")  # auto: bf16 only where native
        if cfg.backend != Backend.DEEPSPEED:  # the DeepSpeed engine places the module itself
            self.module.to(device)
            self.params = [p for p in self.module.parameters() if p.requires_grad]  # a move may replace them
        self.module.train()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_multiplier(cfg))
        if cfg.backend == Backend.DEEPSPEED:
            from clara.training.deepspeed_engine import wrap_deepspeed

            self.engine = wrap_deepspeed(self.module, self.optimizer, self.scheduler, cfg, self.ctx, self.precision)
            self.model = self.engine
        elif self.ctx.world_size > 1:
            device_ids = [self.ctx.local_rank] if self.params[0].is_cuda else None
            self.model = nn.parallel.DistributedDataParallel(self.module, device_ids=device_ids)
        self.metrics = None
        if self.ctx.is_main:
            tb = self.out_dir / "tensorboard" if cfg.tensorboard else None
            self.metrics = MetricsLogger(self.out_dir / "metrics.jsonl", tb)

    def _start(self, resume: bool) -> int | None:
        """Restore from the newest valid checkpoint, or seed a fresh run. Returns the resume step."""
        if resume:
            path = find_resumable(self.ckpt_root)
            if path is not None:
                self._restore(path)
                return self.counters.step
            log.info("no checkpoint under %s; starting from step 0", self.ckpt_root)
        elif list_checkpoints(self.ckpt_root):
            raise ClaraError(
                f"{self.ckpt_root} already holds checkpoints; pass --resume to continue that run "
                "or choose a new out_dir"
            )
        if self.ctx.is_main:
            self.metrics.truncate_after(0)
        seed_everything(self.cfg.seed + self.ctx.rank)  # ranks differ (dropout), runs repeat
        return None

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path, verify=False)  # find_resumable just verified it
        saved_hash = ck.trainer_state.get("config_hash")
        if saved_hash != self.config_hash and not self.allow_config_change:
            raise CheckpointError(
                f"{path}: saved with config hash {saved_hash}, this run's config hashes to {self.config_hash}; "
                "resume with the same config (see config.yaml in the run directory) or allow the change "
                "explicitly (--allow-config-change)"
            )
        if saved_hash != self.config_hash:
            log.warning("%s: resuming under a changed config (hash %s -> %s), as allowed", path, saved_hash,
                        self.config_hash)
        if len(ck.rng) != self.ctx.world_size:
            raise CheckpointError(f"{path}: saved by {len(ck.rng)} ranks, this run has {self.ctx.world_size}")
        if self.engine is not None:
            from clara.training.deepspeed_engine import load_deepspeed

            load_deepspeed(self.engine, path)
        else:
            load_trainable(self.module, ck.trainable, path / "trainable.safetensors")
            self.optimizer.load_state_dict(ck.optimizer)
            self.scheduler.load_state_dict(ck.scheduler)
        for name, (_, set_state) in self.extra_state.items():
            if name not in ck.extra:
                raise CheckpointError(f"{path}: extra state '{name}' is missing from extra.pt")
            set_state(ck.extra[name])
        state = ck.trainer_state
        self.batches.load_state_dict(state["data"])
        self.counters = _Counters(state["step"], state["bad_total"], state["bad_consecutive"], list(state["losses"]))
        restore_rng(ck.rng[self.ctx.rank])
        if self.ctx.is_main:
            self.metrics.truncate_after(self.counters.step)
        log.info("resumed from %s (step %d)", path, self.counters.step)

    # ------------------------------------------------------------ the loop

    def train(self, resume: bool = False) -> TrainResult:
        self._setup()
        resumed_from = self._start(resume)  # first: a refused resume must not overwrite config.yaml
        if self.ctx.is_main and dataclasses.is_dataclass(self.config):
            save_resolved(self.config, self.out_dir)
        cfg, c = self.cfg, self.counters
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.max_steps, initial=c.step, desc="train", disable=not self.ctx.is_main, dynamic_ncols=True)
        try:
            while c.step < cfg.max_steps:
                t_step = time.perf_counter()
                record = {"step": c.step + 1, **self._one_step()}
                c.step += 1
                record["time"] = round(time.perf_counter() - t0, 3)
                record["steps_per_s"] = 1.0 / max(1e-9, time.perf_counter() - t_step)
                if "tokens" in record:
                    record["tokens_per_s"] = record["tokens"] * record["steps_per_s"]
                self._after_step(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()
        return TrainResult(c.step, list(c.losses), c.bad_total, resumed_from, self.last_checkpoint)

    def _after_step(self, record: dict[str, Any]) -> None:
        cfg, step = self.cfg, self.counters.step
        if self.ctx.is_main and (record["skipped"] or step % cfg.log_every == 0 or step == cfg.max_steps):
            self.metrics.log(record)
        if self.on_step is not None:
            self.on_step(step, record)
        if self.eval_fn is not None and self.eval_every and step % self.eval_every == 0:
            self._evaluate(step)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            self._check_ranks_in_sync()
            self.save()
            if self.ctx.is_main:
                self.plot_curves()
        elif step == 1:
            self._check_ranks_in_sync()

    def _check_ranks_in_sync(self) -> None:
        """Under DDP, fail loudly if ranks' weights drifted apart.

        That happens when ``loss_fn`` runs the bare module (``model.module.f(...)``) instead of
        calling the DDP wrapper, which then never all-reduces the gradients.
        """
        if self.ctx.world_size == 1 or self.engine is not None:
            return
        with torch.no_grad():
            checksum = sum(float(p.double().sum()) for p in self.params)
        sums = self.ctx.gather_objects(checksum)
        if any(x != sums[0] for x in sums):
            raise ClaraError(
                f"DDP ranks hold different weights after step {self.counters.step} (checksums {sums}); "
                "loss_fn must call the model it is given (the DDP wrapper), not model.module"
            )

    def _one_step(self) -> dict[str, Any]:
        """Accumulate ``grad_accum`` micro-batches, then step — or skip if anything is non-finite."""
        if self.engine is not None:
            from clara.training.deepspeed_engine import deepspeed_step

            return self._account(*deepspeed_step(self, self.cfg.grad_accum))
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        losses, sums = [], defaultdict(float)
        for i in range(cfg.grad_accum):
            batch = self.batches.next_batch()
            last = i == cfg.grad_accum - 1
            # DDP all-reduces on every backward unless told not to; once per step is enough.
            sync = contextlib.nullcontext() if last or self.model is self.module else self.model.no_sync()
            with sync:
                with self._autocast():
                    loss, metrics = self.loss_fn(self.model, batch)
                # Backward even on a NaN loss: under DDP every rank must join the all-reduce.
                (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            for key, value in metrics.items():
                sums[key] += float(value)
        grads = [p.grad for p in self.params if p.grad is not None]
        grad_norm = float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
        bad = self.ctx.any_true(not all(math.isfinite(x) for x in losses + [grad_norm]))
        lr = self.scheduler.get_last_lr()[0]
        if not bad:
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grads_with_norm_(self.params, cfg.max_grad_norm, torch.tensor(grad_norm))
            self.optimizer.step()
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return self._account(losses, sums, grad_norm, lr, bad)

    def _account(self, losses, sums, grad_norm, lr, bad) -> dict[str, Any]:
        """Update bad-step counters (abort after too many in a row) and build the step record."""
        c, n = self.counters, len(losses)
        loss = sum(self.ctx.mean(losses)) / n  # mean over micro-batches and ranks
        if bad:
            c.bad_total += 1
            c.bad_consecutive += 1
            log.warning("step %d: non-finite loss or gradient (loss=%s, grad_norm=%s); step skipped, "
                        "parameters unchanged (%d in a row)", c.step + 1, loss, grad_norm, c.bad_consecutive)
            if c.bad_consecutive >= self.cfg.max_bad_steps:
                if self.ctx.is_main:
                    self.metrics.log({"step": c.step + 1, "kind": "train", "loss": loss, "skipped": True,
                                      "bad_steps": c.bad_total})
                raise ClaraError(
                    f"{c.bad_consecutive} consecutive steps had a non-finite loss or gradient (up to step "
                    f"{c.step + 1}, train.max_bad_steps={self.cfg.max_bad_steps}); lower train.lr, check the "
                    f"data, or use train.precision=fp32; last checkpoint: {self.last_checkpoint or 'none'}"
                )
        else:
            c.bad_consecutive = 0
        c.losses.append(None if bad else loss)
        record = {"kind": "train", "loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": bad,
                  "bad_steps": c.bad_total}
        for key, total in sums.items():
            record[key] = total if key == "tokens" else total / n
        return record

    def _autocast(self):
        device = self.params[0].device.type
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=self.precision is Precision.BF16)

    def _evaluate(self, step: int) -> None:
        self.module.eval()
        with torch.no_grad(), self._autocast():
            scores = self.eval_fn(self.module)
        self.module.train()
        if self.ctx.is_main:
            self.metrics.log({"step": step, "kind": "eval", **scores})
        log.info("eval at step %d: %s", step, scores)

    def plot_curves(self) -> Path | None:
        """OUT/curves.png: every logged metric (loss, recall, reward, …) against the step, rewritten at each
        checkpoint (unless ``CLARA_PLOTS=0``), so a long or crashed run has its curves so far. A figure never
        costs a run: a failure is a warning (``clara plot curves OUT/metrics.jsonl`` draws it again)."""
        if os.environ.get(PLOTS_ENV, "1") == "0":
            return None
        from clara.errors import DataError
        from clara.training.curves import plot_training_curves

        try:
            return plot_training_curves(self.out_dir / "metrics.jsonl", self.out_dir / "curves.png",
                                        title=f"training curves — {self.out_dir.name}")  # fmt: skip
        except (DataError, FileNotFoundError):  # nothing logged yet (log_every beyond the first checkpoint)
            log.info("%s: no metrics to plot yet", self.out_dir / "metrics.jsonl")
            return None
        except Exception as e:  # noqa: BLE001 - matplotlib or an odd metrics file must not end training
            log.warning("%s: curves not plotted (%s: %s)", self.out_dir / "curves.png", type(e).__name__, e)
            return None

    # ------------------------------------------------------------ checkpoints

    def save(self) -> Path | None:
        """Checkpoint the current step (collective: every rank must call it). Rank 0 writes."""
        c = self.counters
        rng = self.ctx.gather_objects(capture_rng())
        if self.engine is not None:
            from clara.training.deepspeed_engine import save_deepspeed

            self.last_checkpoint = save_deepspeed(self, rng)
            return self.last_checkpoint
        if self.ctx.is_main:
            data = CheckpointData(
                step=c.step,
                trainable={n: p for n, p in self.module.named_parameters() if p.requires_grad},
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                rng=rng,
                trainer_state=self.trainer_state(),
                extra={name: get() for name, (get, _) in self.extra_state.items()},
            )
            self.last_checkpoint = save_checkpoint(self.ckpt_root, data, self.cfg.keep_checkpoints, self.on_save)
        self.ctx.barrier()  # nobody races ahead (or exits) before the checkpoint is complete
        return self.last_checkpoint

    def trainer_state(self) -> dict[str, Any]:
        c = self.counters
        return {"step": c.step, "data": self.batches.state_dict(), "bad_total": c.bad_total,
                "bad_consecutive": c.bad_consecutive, "config_hash": self.config_hash, "losses": c.losses,
                "world_size": self.ctx.world_size}
