"""`clara pretrain instruct` on the tiny backbone: mechanics only (never quality, DESIGN §2)."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from clara.config import ClaraConfig, JointConfig, LoraConfig, ModelConfig, ScpConfig, TrainConfig
from clara.errors import ConfigError
from clara.pretrain.instruct import (
    build_examples, build_instruct_model, gold_slots_for, instruct_loss, train_instruct, with_init,
)
from clara.training import read_metrics

K = 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny backbone, a 12-entity world with 4 candidates per question, and a 2-step SCP run as init."""
    from clara.model.backbone import build_tiny_backbone
    from clara.pretrain.scp import train_scp
    from clara.world import generate_world, write_world

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("instruct")
    backbone = build_tiny_backbone(root / "tiny", seed=0)
    world = write_world(generate_world(seed=0, entities=12, candidates=4), root / "world")
    scp = ClaraConfig(
        out_dir=str(root / "scp"),
        model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8)),
        train=TrainConfig(lr=3e-3, max_steps=2, batch_size=2, save_every=0, log_every=1, seed=0),
        scp=ScpConfig(max_target_tokens=32, data_types=("qa",)),
    )
    train_scp(scp, fresh=True)
    return root, backbone, world


def make_cfg(setup, out, k=K, **train) -> ClaraConfig:
    root, backbone, world = setup
    t = dict(lr=3e-3, max_steps=3, batch_size=2, save_every=0, log_every=1, seed=0, warmup_steps=0)
    t.update(train)
    return ClaraConfig(
        out_dir=str(out),
        model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8)),
        train=TrainConfig(**t),
        joint=JointConfig(world=str(world), candidates=4, top_k=1, init_adapters=str(root / "scp")),
        scp=ScpConfig(max_target_tokens=16, instruct_k=k),
    )


def records(cfg):
    from clara.world.splits import load_split

    return load_split(cfg, "train", train=True)


def test_examples_hold_gold_plus_first_negatives_with_the_gold_slot_varying(setup, tmp_path):
    recs = records(make_cfg(setup, tmp_path))
    examples = build_examples(recs, K)
    assert len(examples) == len(recs) and all(len(e.docs) == K for e in examples)
    for r, e in zip(recs, examples):
        gold = [r.candidates[i].as_text() for i in r.pos_index][:K]
        others = [d.as_text() for i, d in enumerate(r.candidates) if i not in r.pos_index]
        assert [e.docs[s] for s in e.gold_slots] == gold
        assert [d for s, d in enumerate(e.docs) if s not in e.gold_slots] == others[: K - len(gold)]
        assert e.answer == r.answers[0]
    single = [e.gold_slots[0] for e in examples if len(e.gold_slots) == 1]
    assert len(single) >= 5 and len(set(single)) >= 2, single  # not always slot 0
    assert set(gold_slots_for(f"q-{i}", K, 1)[0] for i in range(60)) == set(range(K))
    assert build_examples(recs, K) == examples  # stable: a resumed run sees the same layout
    with pytest.raises(ConfigError, match=r"scp\.instruct_k.*only 4 candidates"):
        build_examples(recs, 5)


def test_loss_is_finite_and_reaches_compressor_and_generator_only(setup, tmp_path):
    cfg = make_cfg(setup, tmp_path)
    model = build_instruct_model(cfg)
    batch = build_examples(records(cfg), K)[:3]
    loss, metrics = instruct_loss(model, batch, K, 16)
    assert torch.isfinite(loss) and metrics["ce"] > 0 and metrics["tokens"] > 0
    loss.backward()
    for name in ("compressor", "generator"):
        grads = [p.grad for p in model.adapters.parameters(name) if p.grad is not None]
        assert grads and sum(float(g.abs().sum()) for g in grads) > 0, name
    assert all(p.grad is None for p in model.adapters.parameters("query"))
    assert model.mem_embed.grad is not None and model.mem_embed.grad.abs().sum() > 0


def test_trains_compressor_generator_and_memory_not_query_or_base(setup, tmp_path):
    from clara.model.clara_model import ClaraModel

    root = setup[0]
    cfg = make_cfg(setup, tmp_path / "run")
    model = build_instruct_model(cfg)
    scp_model = ClaraModel.from_config(cfg.model)
    scp_model.load_adapters(root / "scp" / "adapters")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    scp_params = dict(scp_model.named_parameters())
    assert all(torch.equal(start[n], scp_params[n]) for n in start), "did not start from the SCP adapters"
    result = train_instruct(cfg, model=model)
    assert result.step == 3 and all(x is not None and x == x for x in result.losses)
    after = dict(model.named_parameters())
    changed = {n for n in start if not torch.equal(start[n], after[n].detach())}
    lora = lambda name: {n for n in start if f".{name}." in n and "lora_" in n}  # noqa: E731
    assert lora("compressor") and lora("compressor") <= changed
    assert lora("generator") and lora("generator") <= changed
    assert "mem_embed" in changed
    assert lora("query") and not (lora("query") & changed)
    assert not {n for n in changed if "lora_" not in n and n != "mem_embed"}, "a base weight changed"
    out = tmp_path / "run"
    assert (out / "config.yaml").is_file()
    assert json.loads((out / "adapters" / "clara_model.json").read_text())["generator_prompt"] == "direct"
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


class _Stop(Exception):
    pass


def test_resume_after_an_interruption_equals_an_uninterrupted_run(setup, tmp_path):
    straight = build_instruct_model(make_cfg(setup, tmp_path / "a", max_steps=4, save_every=2))
    train_instruct(make_cfg(setup, tmp_path / "a", max_steps=4, save_every=2), model=straight)

    def stop_at_3(step, record):
        if step == 3:  # after step 3's update, before any step-3 checkpoint: a crash mid-run
            raise _Stop

    cfg = make_cfg(setup, tmp_path / "b", max_steps=4, save_every=2)
    with pytest.raises(_Stop):
        train_instruct(cfg, on_step=stop_at_3)
    assert not (tmp_path / "b" / "adapters").exists()
    resumed = build_instruct_model(cfg)
    result = train_instruct(cfg, resume=True, model=resumed)
    assert result.resumed_from == 2 and result.step == 4
    ref = dict(straight.named_parameters())
    for name, p in resumed.named_parameters():
        if p.requires_grad:
            assert torch.equal(ref[name], p), name
    losses = lambda run: [(r["step"], r["loss"]) for r in read_metrics(tmp_path / run / "metrics.jsonl")]  # noqa: E731
    assert losses("b") == losses("a") and len(losses("a")) == 4


def test_init_is_required_and_recorded(setup, tmp_path):
    cfg = make_cfg(setup, tmp_path)
    bare = dataclasses.replace(cfg, joint=dataclasses.replace(cfg.joint, init_adapters=""))
    with pytest.raises(ConfigError, match="--init"):
        with_init(bare, None)
    assert with_init(bare, "some/dir").joint.init_adapters == "some/dir"


def cli_args(setup, out, *extra):
    root, backbone, world = setup
    return ["pretrain", "instruct", f"model.backbone={backbone}", "model.kind=tiny", "model.chunk_len=32",
            "model.compression_rate=8", "model.lora.r=4", "model.lora.alpha=8", f"joint.world={world}",
            "joint.candidates=4", "joint.top_k=1", "train.max_steps=2", "train.batch_size=2", "train.save_every=0",
            *extra, "--threads", "1", "--out", str(out)]  # fmt: skip


def test_cli_trains_and_gives_one_line_errors(setup, tmp_path, capsys):
    from clara.cli.main import main

    root = setup[0]
    missing = tmp_path / "no-such-run"
    assert main(cli_args(setup, tmp_path / "r1", "--init", str(missing))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    assert main(cli_args(setup, tmp_path / "r1", "scp.instruct_k=5", "--init", str(root / "scp"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "scp.instruct_k" in err[0]
    assert not (tmp_path / "r1").exists()

    assert main(cli_args(setup, tmp_path / "ok", "scp.instruct_k=2", "--init", str(root / "scp"))) == 0
    assert "instruct: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "ok" / "adapters" / "generator").is_dir()
    assert f"init_adapters: {root / 'scp'}" in (tmp_path / "ok" / "config.yaml").read_text()
    # the instruct-tuned run answers questions asked as is: the direct prompt of the compression eval
    world = setup[2]
    assert main(["eval", "compression", "--model", str(tmp_path / "ok"), "--world", str(world), "--split",
                 "test_unseen,dev", "--prompt", "direct", "--settings", "memory,wrong_memory", "--limit", "6",
                 "--max-new-tokens", "4", "--threads", "1"]) == 0  # fmt: skip
    assert "| memory |" in capsys.readouterr().out


def test_cli_help_explains_the_flags():
    out = subprocess.run([sys.executable, "-m", "clara.cli", "pretrain", "instruct", "--help"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for flag in ("--init", "--out", "--resume", "--allow-config-change", "--threads", "scp.instruct_k"):
        assert flag in out.stdout, flag
