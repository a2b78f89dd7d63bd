"""Process groups for torchrun DDP and DeepSpeed, with CPU (gloo) support.

``torchrun --nproc_per_node 2 ...`` sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR;
:func:`init_distributed` reads them. On a machine without CUDA the backend is gloo and
DeepSpeed is pointed at its CPU accelerator (``DS_ACCELERATOR=cpu``) before it is imported.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from clara.config import Backend, Precision, TrainConfig
from clara.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Backend = Backend.SINGLE

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: list[float]) -> list[float]:
        """Element-wise mean over ranks (for logging a loss that reflects every rank's data)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def any_true(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (keeps skip decisions in step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def init_distributed(backend: Backend) -> DistContext:
    """Join the process group torchrun (or the deepspeed launcher) describes in the environment."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if backend == Backend.SINGLE:
        if world_size > 1:
            raise ConfigError(
                f"launched with WORLD_SIZE={world_size} but config key 'train.backend' is 'single'; "
                "set train.backend=ddp (or deepspeed)"
            )
        return DistContext()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if backend == Backend.DEEPSPEED:
        _prepare_deepspeed_env(rank, world_size, local_rank)
        import deepspeed

        if not dist.is_initialized():
            deepspeed.init_distributed(dist_backend=_torch_backend(), auto_mpi_discovery=False)
    elif world_size > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=_torch_backend())
    ctx = DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend)
    log.info("rank %d/%d (%s, %s)", rank, world_size, backend.value, _torch_backend())
    return ctx


def _torch_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def _prepare_deepspeed_env(rank: int, world_size: int, local_rank: int) -> None:
    # A single process started without a launcher still needs a rendezvous address.
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world_size))
    os.environ.setdefault("LOCAL_RANK", str(local_rank))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # must be set before deepspeed is imported


def deepspeed_config(cfg: TrainConfig, world_size: int, precision: Precision | None = None) -> dict[str, Any]:
    """Read ``cfg.deepspeed_config`` and fill its "auto" fields from the train config; bf16 follows
    ``precision`` (the Trainer's, already resolved), else ``cfg.precision`` resolved here."""
    if precision is None:
        from clara.devices import default_device, resolve_precision

        precision = resolve_precision(cfg.precision, default_device(), "training")
    path = Path(cfg.deepspeed_config)
    if not path.is_file():
        raise ConfigError(f"config key 'train.deepspeed_config': {path} not found")
    try:
        ds = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"{path}: invalid JSON ({e})") from None
    fills = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "gradient_clipping": cfg.max_grad_norm,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
    }
    for key, value in fills.items():
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    for section in ("bf16", "fp16"):
        if isinstance(ds.get(section), dict) and ds[section].get("enabled") == "auto":
            ds[section]["enabled"] = section == "bf16" and precision is Precision.BF16
    leftover = [k for k, v in ds.items() if v == "auto"]
    if leftover:
        raise ConfigError(f"{path}: cannot fill 'auto' for {leftover}; give explicit values")
    return ds
