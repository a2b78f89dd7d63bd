"""A tiny deterministic training run through clara.training.Trainer, for subprocess tests.

Run as a script (so tests can SIGKILL it, or launch it under torchrun):
    python toy_train.py --out DIR --steps 12 --save-every 2 [--resume] [--sleep 0.2]
Writes ``DIR/rank{r}.safetensors`` (all parameters of each rank) when training finishes.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time

import torch
from safetensors.torch import save_file
from torch import nn

from clara.config import TrainConfig, from_dict
from clara.training import ResumableBatches, Trainer


class ToyRegressor(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 16):
        super().__init__()
        self.inp = nn.Linear(dim, hidden)
        self.drop = nn.Dropout(0.1)  # uses the torch RNG, so resume must restore it
        self.out = nn.Linear(hidden, 1)
        self.frozen = nn.Parameter(torch.ones(hidden), requires_grad=False)  # never optimised or saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, dim)
        h = self.drop(torch.tanh(self.inp(x))) * self.frozen  # (B, hidden)
        return self.out(h).squeeze(-1)  # (B,)


def make_dataset(n: int = 64, dim: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, dim, generator=g)
    y = torch.sin(x).sum(-1)
    return [(x[i], y[i]) for i in range(n)]


def collate(items):
    return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])


DEFAULTS = {"lr": 0.01, "max_steps": 12, "batch_size": 4, "save_every": 2, "log_every": 1, "keep_checkpoints": 3,
            "warmup_steps": 2, "schedule": "cosine", "max_grad_norm": 1.0}


def make_trainer(out, fields: dict | None = None, nan_steps=(), sleep: float = 0.0, dropout: float = 0.1,
                 **trainer_kwargs) -> Trainer:
    """The toy model, data and loss behind a Trainer; ``fields`` override TrainConfig defaults."""
    cfg = from_dict(TrainConfig, {**DEFAULTS, **(fields or {})})
    torch.manual_seed(0)
    model = ToyRegressor()
    model.drop.p = dropout
    nan_steps = set(nan_steps)

    bypass_wrapper = os.environ.get("TOY_BYPASS_DDP") == "1"  # the mistake the sync check catches

    def loss_fn(m: nn.Module, batch):
        x, y = batch  # (B, dim), (B,)
        if bypass_wrapper:
            m = getattr(m, "module", m)
        loss = ((m(x) - y) ** 2).mean()
        if trainer.counters.step + 1 in nan_steps:
            loss = loss * math.nan  # a poisoned step: loss and every gradient become NaN
        return loss, {"tokens": float(x.shape[0])}

    def on_step(step: int, record: dict) -> None:
        if sleep:
            time.sleep(sleep)  # gives the kill test time to strike mid-run

    batches = ResumableBatches(make_dataset(), cfg.batch_size, collate, seed=cfg.seed)
    trainer = Trainer(model, cfg, out, loss_fn, batches, on_step=trainer_kwargs.pop("on_step", on_step),
                      **trainer_kwargs)
    return trainer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep after each step")
    ap.add_argument("--nan-steps", default="", help="comma-separated steps whose loss is made NaN")
    ap.add_argument("--set", nargs="*", default=[], help="TrainConfig fields as key=value")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    fields = {key: _num(value) for key, value in (item.split("=", 1) for item in args.set)}
    if fields.get("backend") != "deepspeed":
        # Under DeepSpeed on CPU this flag makes every backward take ~5 s (measured), and the
        # gloo reductions are deterministic without it.
        torch.use_deterministic_algorithms(True)
    nan_steps = [int(s) for s in args.nan_steps.split(",") if s]
    trainer = make_trainer(args.out, fields, nan_steps, args.sleep)
    trainer.train(resume=args.resume)
    state = {k: v.detach().contiguous() for k, v in trainer.module.state_dict().items()}
    save_file(state, f"{args.out}/rank{trainer.ctx.rank}.safetensors")


def _num(v: str):
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


if __name__ == "__main__":
    main()
