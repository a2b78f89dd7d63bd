"""SCP with model.memory_norm=center on the tiny backbone: the running memory stats train, survive
checkpoints and reach exported adapters (mechanics only, never quality)."""

import json

import torch
from safetensors.torch import load_file

import pytest

from clara.config import ClaraConfig, LoraConfig, ModelConfig, ScpConfig, TrainConfig
from clara.errors import CheckpointError
from clara.model.memory import memory_stats_ready
from clara.pretrain.scp import build_scp_model, export_checkpoint_adapters, train_scp


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clara.model.backbone import build_tiny_backbone
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    root = tmp_path_factory.mktemp("scp_options")
    backbone = build_tiny_backbone(root / "tiny", seed=0)
    teacher = make_teacher("world")
    recs = [r for d in fresh_world_documents(4, seed=7) for r in result_records(synthesize_document(d, teacher), "world")]
    data = root / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return backbone, data


def center_cfg(backbone, out_dir, steps, scp=ScpConfig(max_target_tokens=32)) -> ClaraConfig:
    """Tiny-backbone SCP with memory_norm=center, batch 3, a checkpoint at the last step."""
    return ClaraConfig(
        out_dir=str(out_dir),
        model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8), memory_norm="center"),
        train=TrainConfig(lr=3e-3, max_steps=steps, batch_size=3, save_every=steps, log_every=1, seed=0),
        scp=scp,
    )


def test_center_stats_train_checkpoint_and_export(setup, tmp_path):
    backbone, data = setup
    cfg = center_cfg(backbone, tmp_path / "run", 3)
    model = build_scp_model(cfg)
    assert not memory_stats_ready(model.mem_stats.data)
    train_scp(cfg, data, model=model)
    stats = model.mem_stats.detach().clone()  # (2, m, H)
    assert memory_stats_ready(stats) and model.mem_stats.grad is None
    saved = load_file(str(tmp_path / "run/adapters/memory_tokens.safetensors"))
    torch.testing.assert_close(saved["mem_stats"], stats)
    info = json.loads((tmp_path / "run/adapters/clara_model.json").read_text())
    assert info["memory_norm"] == "center"
    out = export_checkpoint_adapters(cfg, tmp_path / "run/checkpoints/step-000003", tmp_path / "exported")
    torch.testing.assert_close(load_file(str(out / "memory_tokens.safetensors"))["mem_stats"], stats)


def test_a_finished_fresh_run_extends_to_more_steps_exactly(setup, tmp_path):
    """--resume --allow-config-change train.max_steps=N continues a fresh-document run where it
    stopped: with a constant schedule it ends where one uninterrupted N-step run ends."""
    backbone, _ = setup

    def cfg(run, steps):
        return ClaraConfig(
            out_dir=str(tmp_path / run),
            model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                              lora=LoraConfig(r=4, alpha=8)),
            train=TrainConfig(lr=3e-3, max_steps=steps, batch_size=2, save_every=2, log_every=1, seed=0,
                              warmup_steps=0, schedule="constant"),
            scp=ScpConfig(max_target_tokens=32, data_types=("qa",)),
        )

    whole = build_scp_model(cfg("whole", 4))
    train_scp(cfg("whole", 4), fresh=True, model=whole)
    train_scp(cfg("ext", 2), fresh=True)
    with pytest.raises(CheckpointError, match="--allow-config-change"):
        train_scp(cfg("ext", 4), fresh=True, resume=True)
    extended = build_scp_model(cfg("ext", 4))
    result = train_scp(cfg("ext", 4), fresh=True, resume=True, model=extended, allow_config_change=True)
    assert result.resumed_from == 2 and result.step == 4
    for name, p in whole.named_parameters():
        if p.requires_grad:
            assert torch.equal(dict(extended.named_parameters())[name], p), name


def test_scp_starts_from_init_adapters(setup, tmp_path):
    """scp.init_adapters: a new run starts from a finished run's adapters (compressor, generator,
    memory tokens), not from fresh LoRA; a directory without adapters is a ConfigError naming the key."""
    import dataclasses

    from clara.errors import ConfigError

    backbone, data = setup
    cfg = center_cfg(backbone, tmp_path / "first", 2)
    trained = build_scp_model(cfg)
    train_scp(cfg, data, model=trained)
    fresh = build_scp_model(cfg)
    cont = build_scp_model(dataclasses.replace(cfg, scp=ScpConfig(max_target_tokens=32, init_adapters=str(tmp_path / "first"))))
    for name in ("compressor", "generator"):
        want = [p.detach() for p in trained.adapters.parameters(name)]
        got = [p.detach() for p in cont.adapters.parameters(name)]
        assert any(not torch.equal(w, f.detach()) for w, f in zip(want, fresh.adapters.parameters(name)))
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
        assert all(p.requires_grad for p in cont.adapters.parameters(name))
    torch.testing.assert_close(cont.mem_stats, trained.mem_stats, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="scp.init_adapters"):
        build_scp_model(dataclasses.replace(cfg, scp=ScpConfig(init_adapters=str(tmp_path))))


def test_scp_starts_from_adapters_of_another_rate_only_when_told(setup, tmp_path):
    """scp.init_other_cr: SCP at CR 4 (m = 8) starts from a CR-8 run (m = 4): its LoRA, not fresh LoRA;
    without the key the other rate is refused naming it."""
    import dataclasses

    backbone, data = setup
    cfg = center_cfg(backbone, tmp_path / "first", 2)
    trained = build_scp_model(cfg)
    train_scp(cfg, data, model=trained)
    init = ScpConfig(max_target_tokens=32, init_adapters=str(tmp_path / "first"))
    other = dataclasses.replace(cfg, out_dir=str(tmp_path / "cr4"), model=dataclasses.replace(cfg.model, compression_rate=4))
    with pytest.raises(CheckpointError, match="scp.init_other_cr"):
        build_scp_model(dataclasses.replace(other, scp=init))
    cont = build_scp_model(dataclasses.replace(other, scp=dataclasses.replace(init, init_other_cr=True)))
    assert cont.num_mem == 8 and cont.mem_embed.requires_grad
    for name in ("compressor", "generator"):
        for w, g in zip(trained.adapters.parameters(name), cont.adapters.parameters(name), strict=True):
            torch.testing.assert_close(g.detach(), w.detach(), rtol=0, atol=0)
    train_scp(dataclasses.replace(other, scp=dataclasses.replace(init, init_other_cr=True)), data, model=cont)
    assert (tmp_path / "cr4" / "adapters" / "clara_model.json").is_file()
