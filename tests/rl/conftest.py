"""Fixtures for the RL tests: one tiny backbone per session, a fresh perturbed model per test."""

import pytest
import torch
import yaml

from clara.config import ClaraConfig, LoraConfig, ModelConfig, from_dict


@pytest.fixture
def model(tiny_backbone, perturb):
    from clara.model.clara_model import ClaraModel

    # m = 32 / 8 = 4 memory vectors; dropout 0 so forwards are deterministic; fp32 throughout
    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    m = ClaraModel.from_config(cfg)
    perturb(m)
    m.set_trainable(["generator"], mem_embed=False)
    return m


@pytest.fixture
def cand_mem(model):
    """Two questions x 5 candidates of compressed memory (Q, N, m, H)."""
    docs = [f"Document {i} says the river {chr(65 + i)} runs through town {i}." for i in range(10)]
    with torch.no_grad():
        mem = model.compress(docs)  # (10, m, H)
    return mem.view(2, 5, *mem.shape[1:])


def rl_dict(backbone, world, out_dir, cache_dir, **rl) -> dict:
    with open("configs/rl-tiny-cpu.yaml") as f:
        d = yaml.safe_load(f)
    d["out_dir"], d["model"]["backbone"] = str(out_dir), str(backbone)
    d["joint"].update(world=str(world), cache_dir=str(cache_dir))
    d["train"].update(max_steps=4, save_every=2, keep_checkpoints=3, log_every=1)
    d["rl"].update(max_turn_tokens=6, **rl)
    return d


@pytest.fixture
def rl_cfg(tiny_backbone, world_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(__import__("pathlib").Path(__file__).resolve().parents[2])  # the preset lives in configs/

    def make(name, **rl) -> ClaraConfig:
        return from_dict(ClaraConfig, rl_dict(tiny_backbone, world_dir, tmp_path / name, tmp_path / "cache", **rl))

    return make
