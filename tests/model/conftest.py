"""Fixtures for the model-core tests: one tiny backbone per session, fresh models per test."""

import pytest

from clara.config import LoraConfig, ModelConfig


@pytest.fixture(scope="session")
def other_backbone(tmp_path_factory):
    """Same shapes, different weights: adapters from the first must be refused here."""
    from clara.model.backbone import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("backbones") / "tiny-seed1", seed=1)


@pytest.fixture
def model_cfg(tiny_backbone):
    # m = 32 / 8 = 4 memory tokens; dropout 0 so forwards are deterministic
    return ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                       lora=LoraConfig(r=4, alpha=8, dropout=0.0))


@pytest.fixture
def model(model_cfg, perturb):
    from clara.model.clara_model import ClaraModel

    m = ClaraModel.from_config(model_cfg)
    perturb(m, seed=0)
    return m




@pytest.fixture
def make_model(model_cfg):
    """Build a fresh (unperturbed) model, optionally on another backbone directory."""
    from clara.model.clara_model import ClaraModel

    def make(backbone_dir=None):
        return ClaraModel.from_config(model_cfg, backbone_dir)

    return make
