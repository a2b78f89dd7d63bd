"""Fixtures for the RL tests: one tiny backbone per session, a fresh perturbed model per test."""

import pytest
import torch

from clara.config import LoraConfig, ModelConfig



@pytest.fixture
def model(tiny_backbone, perturb):
    from clara.model import ClaraModel

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
