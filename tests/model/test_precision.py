"""Precision that fits the machine (issue 30 item 4): auto is bf16 only where the CPU runs it natively,
an emulated bf16 is warned about, and the choice reaches training and inference."""

import logging

import pytest
import torch

from clara import devices
from clara.config import LoraConfig, ModelConfig, Precision
from clara.devices import PRECISION_ENV, native_bf16, resolve_precision
from clara.errors import ConfigError


@pytest.fixture
def cpu(monkeypatch):
    """Set what torch's probes report: ``cpu(avx512_bf16=..., amx=...)``; every choice is announced anew."""
    monkeypatch.delenv(PRECISION_ENV, raising=False)
    monkeypatch.setattr(devices, "_announced", set())

    def set_flags(avx512_bf16: bool = False, amx: bool = False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return set_flags


def test_auto_picks_bf16_only_with_native_support_and_logs_it_once(cpu, caplog):
    caplog.set_level(logging.INFO, logger="clara.devices")
    cpu(avx512_bf16=True)
    assert resolve_precision("auto", "cpu") is Precision.BF16
    assert resolve_precision(Precision.AUTO, "cpu") is Precision.BF16
    chosen = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert chosen == ["precision auto: bf16 for inference on cpu, native bf16 (avx512_bf16)"]
    cpu(amx=True)
    assert native_bf16("cpu") == "amx" and resolve_precision("auto", "cpu", "training") is Precision.BF16
    cpu()  # an AMD EPYC without AVX-512, say
    assert native_bf16("cpu") is None
    assert resolve_precision("auto", "cpu", "evaluation") is Precision.FP32
    assert "fp32 for evaluation on cpu, no native bf16" in caplog.text


def test_explicit_bf16_without_native_support_is_kept_with_a_warning(cpu, caplog):
    cpu()
    assert resolve_precision("bf16", "cpu", "training") is Precision.BF16
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulated" in warnings[0].getMessage() and "27x slower" in warnings[0].getMessage()
    resolve_precision("bf16", "cpu", "training")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # once per process
    caplog.clear()
    cpu(avx512_bf16=True)
    devices._announced.clear()
    assert resolve_precision("bf16", "cpu") is Precision.BF16 and not caplog.records
    assert resolve_precision("fp32", "cpu") is Precision.FP32


def test_without_torch_probes_the_cpuinfo_flags_decide(cpu, monkeypatch):
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: {"avx2", "avx512f", "amx_bf16", "amx_tile"})
    assert native_bf16("cpu") == "amx"
    monkeypatch.setattr(devices, "_cpuinfo_flags", lambda: {"avx2", "fma"})
    assert native_bf16("cpu") is None and resolve_precision("auto") is Precision.FP32


def test_environment_replaces_auto_only(cpu, monkeypatch):
    cpu(avx512_bf16=True)
    monkeypatch.setenv(PRECISION_ENV, "fp32")
    assert resolve_precision("auto") is Precision.FP32
    assert resolve_precision("bf16") is Precision.BF16
    monkeypatch.setenv(PRECISION_ENV, "fp8")
    with pytest.raises(ConfigError, match="CLARA_PRECISION='fp8'"):
        resolve_precision("auto")
    with pytest.raises(ConfigError, match="use auto, fp32 or bf16"):
        resolve_precision("fp16")


def test_a_loaded_model_runs_its_forwards_in_the_resolved_precision(cpu, tiny_backbone, tmp_path):
    from clara.model.clara_model import ClaraModel
    from clara.model.loading import load_trained_model

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8, lora=LoraConfig(r=4, alpha=8))
    adapters = ClaraModel.from_config(cfg).save_adapters(tmp_path / "adapters")
    docs = ["Briven founded the museum in 1820.", "Velmar Works makes bells."]
    cpu()
    fp32 = load_trained_model(adapters)
    assert fp32.inference_precision is Precision.FP32
    cpu(avx512_bf16=True)
    bf16 = load_trained_model(adapters)
    assert bf16.inference_precision is Precision.BF16
    with torch.no_grad():
        a, b = fp32.compress(docs), bf16.compress(docs)  # (B, m, H)
    assert a.dtype == b.dtype == torch.float32  # callers get the weights' dtype either way
    assert not torch.equal(a, b)  # bf16 really ran
    assert torch.allclose(a, b, rtol=0.05, atol=0.05 * a.abs().max().item())
    with pytest.raises(ValueError, match="resolve precision auto first"):
        bf16.set_inference_precision("auto")


def test_bf16_inference_casts_linear_weights_once_with_the_results_autocast_gives(tiny_backbone):
    """The backbone's bf16 weights are the values autocast would cast to in every forward, so its states
    are bit-equal; the LoRA factors stay fp32 (run outside autocast), so an adapter's states are close, not
    equal. fp32 comes back exactly with keep_fp32, and is refused without it."""
    from torch import nn

    from clara.model.clara_model import ClaraModel
    from clara.model.inference_weights import lora_factors

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8, lora=LoraConfig(r=4, alpha=8))
    model = ClaraModel.from_config(cfg).eval()
    with torch.no_grad():  # adapters that change the states (fresh LoRA B is zero)
        for f in lora_factors(model.lm):
            f.weight.normal_(0, 0.2)
    docs = ["Briven founded the museum in 1820.", "Velmar Works makes bells."]
    with torch.no_grad():
        fp32, fp32_bare = model.compress(docs), model.encode(docs, None)
        model.inference_precision = Precision.BF16  # autocast over the fp32 weights, as before the cast
        autocast, autocast_bare = model.compress(docs), model.encode(docs, None)
        model.inference_precision = Precision.FP32
        model.set_inference_precision("bf16", keep_fp32=True)
        factors = lora_factors(model.lm)
        linears = [m for m in model.lm.modules() if isinstance(m, nn.Linear) and all(m is not f for f in factors)]
        assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
        assert factors and all(f.weight.dtype == torch.float32 for f in factors)
        assert model.mem_embed.dtype == model.lm.get_input_embeddings().weight.dtype == torch.float32
        bare, cast = model.encode(docs, None), model.compress(docs)
        assert torch.equal(bare, autocast_bare) and cast.dtype == torch.float32
        assert not torch.equal(cast, autocast) and not torch.equal(cast, fp32)  # bf16 ran; the factors in fp32
        assert torch.allclose(cast, fp32, rtol=0.05, atol=0.05 * fp32.abs().max().item())
        model.set_inference_precision("fp32")
        assert all(m.weight.dtype == torch.float32 for m in linears) and all("forward" not in vars(f) for f in factors)
        assert torch.equal(model.compress(docs), fp32) and torch.equal(model.encode(docs, None), fp32_bare)
        model.set_inference_precision("bf16")
        with pytest.raises(ValueError, match="load the model again for fp32"):
            model.set_inference_precision("fp32")


def test_a_lora_factor_runs_fp32_for_a_few_rows_and_as_autocast_says_for_many():
    from torch import nn

    from clara.model.inference_weights import FP32_FACTOR_ROWS, fp32_linear_forward

    f = nn.Linear(8, 4, bias=False)
    f.forward = fp32_linear_forward(f)
    few, many = torch.randn(2, FP32_FACTOR_ROWS // 2, 8), torch.randn(2, FP32_FACTOR_ROWS, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert f(few).dtype == torch.float32 and f(many).dtype == torch.bfloat16
    assert torch.equal(f(few), nn.functional.linear(few, f.weight))
