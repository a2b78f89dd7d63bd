"""Device choice: CLARA_DEVICE, and the two places that honour it (model building and the Trainer)."""

import pytest
import torch

from clara.devices import ENV, default_device
from clara.errors import ConfigError


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(ENV, raising=False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(ENV, "AUTO")
    assert default_device(local_rank=1) == torch.device("cpu")


def test_named_devices_and_errors(monkeypatch):
    monkeypatch.setenv(ENV, "cpu")
    assert default_device() == torch.device("cpu")
    monkeypatch.setenv(ENV, "tpu-please")
    with pytest.raises(ConfigError, match="CLARA_DEVICE='tpu-please' is not a device"):
        default_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(ENV, "cuda")
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        default_device()


def test_models_are_built_on_the_default_device(monkeypatch, model_cfg):
    from clara.model.clara_model import ClaraModel

    monkeypatch.setenv(ENV, "meta")  # a real device type every build has; nothing is computed
    model = ClaraModel.from_config(model_cfg)
    assert model.device.type == "meta"
    assert {p.device.type for p in model.parameters()} == {"meta"}
