"""Fixtures for the model-core tests: one tiny backbone per session, fresh models per test."""

import pytest
import torch

from clara.config import LoraConfig, ModelConfig


@pytest.fixture(scope="session")
def other_backbone(tmp_path_factory):
    """Same shapes, different weights: adapters from the first must be refused here."""
    from clara.backbone import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("backbones") / "tiny-seed1", seed=1)


@pytest.fixture
def model_cfg(tiny_backbone):
    # m = 32 / 8 = 4 memory tokens; dropout 0 so forwards are deterministic
    return ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                       lora=LoraConfig(r=4, alpha=8, dropout=0.0))


@pytest.fixture
def model(model_cfg):
    from clara.model import ClaraModel

    m = ClaraModel.from_config(model_cfg)
    perturb_adapters(m, seed=0)
    return m


def perturb_adapters(model, seed: int, scale: float = 0.05) -> None:
    """Give every adapter different, non-zero LoRA weights (fresh LoRA B is zero: all adapters = base)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in model.adapters.names:
            for p in model.adapters.parameters(name):
                p.copy_(torch.randn(p.shape, generator=g) * scale)


@pytest.fixture
def perturb():
    return perturb_adapters


@pytest.fixture
def make_model(model_cfg):
    """Build a fresh (unperturbed) model, optionally on another backbone directory."""
    from clara.model import ClaraModel

    def make(backbone_dir=None):
        return ClaraModel.from_config(model_cfg, backbone_dir)

    return make
