"""The oracle-slot probe: each arm's memory is what it says, the generator alone trains, and it runs end to
end on the tiny backbone (figures meaningless)."""

import json

import pytest
import torch

from clara.eval.oracle_slot import arm_memory, main


@pytest.fixture
def model(tiny_backbone):
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=256, compression_rate=16,
                      lora=LoraConfig(r=4, alpha=8), memory_norm="center")
    m = ClaraModel.from_config(cfg)
    with torch.no_grad():
        m.mem_stats[0].normal_()  # ready stats, so the centring is not the identity
        m.mem_stats[1].uniform_(0.5, 2.0)
    return m


def test_each_arm_changes_only_what_it_names(model):
    g = torch.Generator().manual_seed(0)
    mem = torch.randn(6, model.num_mem, model.hidden_size, generator=g)
    token = 3.0 + torch.randn(6, model.hidden_size, generator=g)
    assert torch.equal(arm_memory(model, mem, token, "control", 4), mem)
    oracle = arm_memory(model, mem, token, "oracle", 4)
    assert torch.equal(oracle[:, 0], token) and torch.equal(oracle[:, 1:], mem[:, 1:])
    centre = model.mem_stats[0].detach().clone()  # (m, H); the arm switches the model's centring off
    std = arm_memory(model, mem, token, "oracle-std", 4)
    torch.testing.assert_close(std[:4, 0].mean(0), torch.zeros(model.hidden_size), atol=1e-5, rtol=0)
    torch.testing.assert_close(std[:4, 0].std(0), torch.ones(model.hidden_size), atol=1e-3, rtol=0)
    torch.testing.assert_close(std[:, 1:], mem[:, 1:] - centre[1:])  # as spliced: centred
    assert model.memory_norm == "none"  # not centred a second time at the splice
    for arm in ("both", "select"):  # select's memory is made while it trains, not by arm_memory
        with pytest.raises(ValueError, match="arm must be one of"):
            arm_memory(model, mem, token, arm, 4)


def test_runs_on_the_tiny_backbone_and_trains_the_generator_alone(model, tmp_path):
    adapters = model.save_adapters(tmp_path / "adapters")
    out = tmp_path / "o.json"
    assert main(["--model", str(adapters), "--docs", "8", "--test-docs", "3", "--steps", "2", "--train-batch", "2",
                 "--batch-size", "4", "--arms", "control,oracle-std,select", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert set(stats["arms"]) == {"control", "oracle-std", "select"} and stats["docs"] == 8
    attn = stats["arms"]["select"]["select"]  # the selector's attention on the year's last digit, reported
    assert 0.0 <= attn["mass_on_digit_test"] <= attn["max_mass_test"] <= 1.0
    for r in stats["arms"].values():
        assert 0.0 <= r["test"]["right"] <= 1.0 and 0.0 <= r["train"]["wrong"] <= 1.0 and r["loss_first"] > 0
    with pytest.raises(SystemExit):
        main(["--model", str(adapters), "--arms", "oracle,best"])


def test_train_generator_moves_the_generator_and_nothing_else(model):
    from clara.eval.oracle_slot import train_generator

    mem = torch.randn(4, model.num_mem, model.hidden_size)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = train_generator(model, mem, ["When was A born?"] * 4, ["1901", "1902", "1903", "1904"], 4, 2, 2, 1e-2)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert len(losses) == 2 and changed and all(".generator." in n for n in changed), sorted(changed)[:3]


def test_the_oracle_goes_where_it_is_told_standardised_by_the_statistics_given(model):
    g = torch.Generator().manual_seed(1)
    mem = torch.randn(6, model.num_mem, model.hidden_size, generator=g)
    token = 3.0 + torch.randn(6, model.hidden_size, generator=g)
    oracle = arm_memory(model, mem, token, "oracle", 4, slot=2)
    assert torch.equal(oracle[:, 2], token) and torch.equal(oracle[:, :2], mem[:, :2])
    assert torch.equal(oracle[:, 3:], mem[:, 3:])
    mean, std = torch.full((model.hidden_size,), 2.0), torch.full((model.hidden_size,), 4.0)
    std_arm = arm_memory(model, mem, token, "oracle-std", 4, slot=1, stats=(mean, std))
    torch.testing.assert_close(std_arm[:, 1], (token - 2.0) / (4.0 + 1e-4))
    with pytest.raises(ValueError, match=f"oracle slot {model.num_mem} is not one of"):
        arm_memory(model, mem, token, "oracle", 4, slot=model.num_mem)


def test_oracle_std_standardises_a_selector_models_selected_slots_as_its_splice_does(tiny_backbone):
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    m = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=256, compression_rate=16,
                                           lora=LoraConfig(r=4, alpha=8), memory_norm="center", memory_select=2))
    with torch.no_grad():
        m.mem_stats[0].normal_()
        m.mem_stats[1].uniform_(0.5, 2.0)
    mem = torch.randn(5, m.num_mem, m.hidden_size)
    spliced = m.prepare_memory(mem[:, None], update_stats=False)  # as the generator would receive it (RMS rescaled)
    got = arm_memory(m, mem, torch.randn(5, m.hidden_size), "oracle-std", 3, slot=m.num_mem - 1)
    m._set_memory_norm("none")
    torch.testing.assert_close(m.prepare_memory(got[:, None, :-1], update_stats=False), spliced[:, :-1])


def test_runs_with_the_bare_backbones_state_in_another_slot_over_text_statistics(model, tmp_path):
    adapters = model.save_adapters(tmp_path / "adapters")
    out = tmp_path / "o.json"
    assert main(["--model", str(adapters), "--docs", "6", "--test-docs", "2", "--steps", "1", "--train-batch", "2",
                 "--batch-size", "4", "--arms", "oracle-std", "--oracle-states", "base", "--oracle-slot", "3",
                 "--oracle-stats", "text", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert (stats["oracle_states"], stats["oracle_slot"], stats["oracle_stats"]) == ("base", 3, "text")
