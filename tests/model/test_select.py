"""Memory slots that select text states (model.memory_select, issue 28 lever f): mechanics on the tiny
backbone and on hand-made states, never quality (docs/RESULTS.md §2 has the SmolLM2 figures)."""

import json

import pytest
import torch

from clara.config import ClaraConfig, LoraConfig, ModelConfig, ScpConfig, SelectDetach, TrainConfig, from_dict
from clara.errors import ConfigError
from clara.model.memory import init_memory_stats, normalize_memory, unset_memory_stats, update_memory_stats
from clara.model.select import GAIN, MemorySelector, answer_token_index, span_loss


def test_a_query_aligned_with_one_token_selects_that_tokens_state():
    g = torch.Generator().manual_seed(0)
    states = torch.randn(2, 6, 8, generator=g)  # (B, T, H)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    sel = MemorySelector(8, 1, key_dim=8).eval()
    sel.update_stats(states, mask)
    with torch.no_grad():
        sel.keys.copy_(torch.eye(8) / GAIN)
        sel.queries.copy_(sel.standardize(states)[1, 3] * 50 / GAIN)  # points at row 1, token 3
    slots, attn = sel(states, mask)
    assert attn.shape == (2, 1, 6) and torch.allclose(attn.sum(-1), torch.ones(2, 1))
    assert attn[0, 0, :2].sum() == 0  # padding gets nothing
    assert attn[1, 0, 3] > 0.99
    torch.testing.assert_close(slots[1, 0], states[1, 3], atol=1e-2, rtol=0)  # the raw state, not its z-score


def test_small_queries_start_near_uniform_and_training_statistics_follow_batches():
    states = torch.randn(3, 10, 16)
    mask = torch.ones(3, 10, dtype=torch.bool)
    sel = MemorySelector(16, 2)
    _, attn = sel(states, mask)  # training mode: the first batch sets the statistics
    assert attn.max() < 0.2
    mean = sel.stats[0].clone()
    sel(states + 5.0, mask)
    assert (sel.stats[0] - mean).mean() > 0.1  # moved towards the new batch
    sel.eval()
    frozen = sel.stats.clone()
    sel(states - 5.0, mask)
    assert torch.equal(sel.stats, frozen)


def test_span_loss_rewards_covering_each_target_and_reaches_the_queries():
    attn = torch.tensor([[[0.9, 0.1, 0.0], [0.0, 0.1, 0.9]]])  # (1, p=2, T=3)
    assert span_loss(attn, [[0, 2]]) < 0.11
    assert span_loss(attn, [[1]]) > 1.5
    assert span_loss(attn, [[]]) == 0
    split = torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]])  # both slots half on token 0: together they hold it
    assert span_loss(split, [[0]]) < 1e-4
    assert span_loss(split, [[0]], one_slot=True) > 0.69  # but no one slot does
    assert span_loss(attn, [[0, 2]], one_slot=True) < 0.11
    states = torch.randn(1, 5, 8)
    mask = torch.ones(1, 5, dtype=torch.bool)
    sel = MemorySelector(8, 2)
    span_loss(sel(states, mask)[1], [[4]]).backward()
    assert sel.queries.grad.abs().sum() > 0 and sel.keys.grad.abs().sum() > 0


def test_answer_token_index_finds_each_answers_last_token(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32,
                                               compression_rate=8, lora=LoraConfig(r=4, alpha=8)))
    tok = model.tokenizer
    text = "Hyndath was founded in 1683. About 485,800 people live there."
    ids = answer_token_index(model, text, ["1683", "485,800; Hyndath", "Nowhere"])
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    for answer, j in zip(["1683", "485,800", "Hyndath"], ids):
        end = text.index(answer) + len(answer) - 1
        assert offsets[j][0] <= end < offsets[j][1]
    assert len(ids) == 3  # "Nowhere" is not in the text
    far = "word " * 40 + "It was founded in 1683."
    assert model.char_tokens(far, [far.index("1683") + 3])[0][0] >= 32
    assert answer_token_index(model, far, ["1683"]) == []  # cut off at the compressor's chunk_len


def test_standardize_first_standardises_selected_positions_in_center_mode():
    mem = torch.randn(64, 3, 4) * torch.tensor([1.0, 10.0, 100.0, 1000.0]) + 7.0
    stats = init_memory_stats(3, 4)
    update_memory_stats(stats, mem)
    out = normalize_memory(mem, stats, "center", standardize_first=1)
    torch.testing.assert_close(out[:, 0].var(0, unbiased=False), torch.ones(4), atol=1e-2, rtol=0)
    torch.testing.assert_close(out[:, 1:], mem[:, 1:] - mem[:, 1:].mean(0), atol=1e-3, rtol=1e-4)
    unset_memory_stats(stats, slice(0, 1))
    out = normalize_memory(mem, stats, "center", standardize_first=1)
    assert torch.equal(out[:, 0], mem[:, 0])  # not yet seen: identity there, the rest as before
    update_memory_stats(stats, mem[:8] * 3)  # the unset position takes the batch as it is, the rest move slowly
    torch.testing.assert_close(stats[0, 0], (mem[:8, 0] * 3).mean(0))
    assert not torch.allclose(stats[0, 1], (mem[:8, 1] * 3).mean(0))


def test_config_refuses_a_selector_it_cannot_splice():
    with pytest.raises(ConfigError, match="model.memory_select"):
        ModelConfig(chunk_len=32, compression_rate=8, memory_select=2)  # memory_norm none
    with pytest.raises(ConfigError, match="model.memory_select"):
        ModelConfig(chunk_len=32, compression_rate=8, memory_select=5, memory_norm="center")  # m = 4
    with pytest.raises(ConfigError, match="scp.select_weight"):
        ScpConfig(select_weight=-1)
    with pytest.raises(ConfigError, match="memory_select_detach': 'value' is not one of \['none', 'keys', 'all', 'base', 'values'\]"):
        from_dict(ModelConfig, {"memory_select_detach": "value"})
    # a config of a run saved when the option was a bool still loads (true: the keys)
    assert from_dict(ModelConfig, {"memory_select_detach": True}).memory_select_detach == SelectDetach.KEYS


@pytest.fixture(scope="module")
def trained(tiny_backbone, tmp_path_factory):
    from clara.pretrain.scp import build_scp_model, train_scp
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    root = tmp_path_factory.mktemp("select")
    teacher = make_teacher("world")
    recs = [r for d in fresh_world_documents(4, seed=7) for r in result_records(synthesize_document(d, teacher), "world")]
    data = root / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = ClaraConfig(
        out_dir=str(root / "run"),
        model=ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8), memory_norm="center", memory_select=2,
                          memory_select_detach="all"),
        train=TrainConfig(lr=3e-3, max_steps=3, batch_size=3, save_every=3, log_every=1, seed=0),
        scp=ScpConfig(max_target_tokens=32, qa_layout="rows", select_one_slot=True),
    )
    model = build_scp_model(cfg)
    before = {k: v.detach().clone() for k, v in model.selector.named_parameters()}
    train_scp(cfg, data, model=model)
    return model, before, root, [r["doc"] for r in recs[:3]]


def test_scp_trains_the_selector_with_its_span_term_and_saves_it(trained):
    from safetensors.torch import load_file

    model, before, root, _ = trained
    assert not torch.equal(model.selector.queries, before["queries"])
    assert not torch.equal(model.selector.keys, before["keys"])
    rows = [json.loads(x) for x in (root / "run/metrics.jsonl").read_text().splitlines()]
    assert any(r.get("select", 0) > 0 for r in rows if r.get("kind") == "train")
    saved = load_file(str(root / "run/adapters/memory_tokens.safetensors"))
    torch.testing.assert_close(saved["select/queries"], model.selector.queries.detach())
    assert json.loads((root / "run/adapters/clara_model.json").read_text())["memory_select"] == 2


def test_a_saved_selector_compresses_the_same_after_loading(trained, tiny_backbone):
    from clara.model.loading import load_trained_model

    model, _, root, docs = trained
    loaded = load_trained_model(root / "run/adapters", tiny_backbone, precision="fp32")
    assert loaded.memory_select == 2 and loaded.compressor_hash() == model.compressor_hash()
    assert loaded.selector.detach == SelectDetach.ALL
    model.eval()
    with torch.no_grad():
        mem = model.compress(docs)
        torch.testing.assert_close(loaded.compress(docs), mem)
        # the first two memory vectors are poolings of the text states (the attention sums to 1 over text)
        assert torch.allclose(model.select_attention.sum(-1), torch.ones(len(docs), 2), atol=1e-5)
    with torch.no_grad():
        loaded.selector.queries.mul_(2.0)
    assert loaded.compressor_hash() != model.compressor_hash()  # banks of the old selector are refused


def test_adapters_without_a_selector_load_with_its_positions_stats_unset(tiny_backbone, tmp_path):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8), memory_norm="center")
    plain = ClaraModel.from_config(cfg)
    with torch.no_grad():
        plain.mem_stats[0].normal_()
        plain.mem_stats[1].uniform_(0.5, 2.0)
    plain.save_adapters(tmp_path / "plain")
    selecting = ClaraModel.from_config(ModelConfig(**{**cfg.__dict__, "memory_select": 2}))
    selecting.load_adapters(tmp_path / "plain")
    stats = selecting.mem_stats.detach()
    assert (stats[1, :2] < 0).all()  # held memory tokens' states: set again by the next training batch
    torch.testing.assert_close(stats[:, 2:], plain.mem_stats.detach()[:, 2:])
    torch.testing.assert_close(selecting.mem_embed, plain.mem_embed)


@pytest.mark.parametrize("detach, span_reaches, values_reach", [
    ("none", True, True), ("keys", False, True), ("all", False, False), (True, False, True),  # True: an older file
    ("base", True, True),  # the keys train the states; the values pooled are other states (below)
    ("values", True, True),  # the keys train the states; the values reach them only through the attention (below)
])
def test_detach_keeps_the_selector_out_of_the_text_states(detach, span_reaches, values_reach):
    states = torch.randn(1, 5, 8, requires_grad=True)
    mask = torch.ones(1, 5, dtype=torch.bool)
    sel = MemorySelector(8, 2, detach=SelectDetach(detach))
    values = torch.randn(1, 5, 8, requires_grad=True) if detach == "base" else None
    slots, attention = sel(states, mask, values)
    span_loss(attention, [[4]]).backward(retain_graph=True)
    assert (states.grad is not None and states.grad.abs().sum() > 0) == span_reaches
    assert sel.queries.grad.abs().sum() > 0  # the selector itself still learns
    states.grad = None
    slots.square().sum().backward()  # the generator's loss reaches the text states through the selected values
    assert (states.grad is not None and states.grad.abs().sum() > 0) == values_reach
    if detach == "values":  # the gradient the slots send is the attention's alone, none through the values pooled
        states.grad = None
        slots, attention = sel(states, mask)
        weights = torch.randn_like(slots)
        (slots * weights).sum().backward(retain_graph=True)
        through_attention = states.grad.clone()
        states.grad = None
        ((attention @ states.detach()) * weights).sum().backward()
        torch.testing.assert_close(through_attention, states.grad)
    if values is not None:
        assert values.grad is None  # base: the pooled states are never reshaped
        with pytest.raises(ValueError, match="needs separate values"):
            sel(states, mask)
    else:
        with pytest.raises(ValueError, match="takes no separate values"):
            sel(states, mask, states)


def test_base_values_pool_the_bare_backbones_text_states(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    torch.manual_seed(0)
    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                                               lora=LoraConfig(r=4, alpha=8), memory_norm="center", memory_select=2,
                                               memory_select_detach="base"))
    with torch.no_grad():  # a compressor that differs from the bare backbone (LoRA B starts at zero)
        for p in model.adapters.parameters("compressor"):
            p.normal_(0, 0.2)
    model.eval()
    doc = "Hyndath was founded in 1683. About 485,800 people live there."
    with torch.no_grad():
        mem = model.compress([doc])  # (1, m, H)
        ids = model._ids(doc)[:model.chunk_len]
        row = torch.tensor([ids + list(model.tokens.mem_ids)])
        embeds = model._embed(row).index_put((torch.zeros(4, dtype=torch.long), torch.arange(len(ids), len(ids) + 4)),
                                             model.mem_embed)
        states = {}
        for name in (None, "compressor"):
            with model.using(name):
                states[name] = model.lm.get_decoder()(inputs_embeds=embeds).last_hidden_state[0, :len(ids)]  # (n, H)
    attention = model.select_attention[0, :, :len(ids)]  # (p, n)
    torch.testing.assert_close(mem[0, :2], attention @ states[None], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mem[0, :2], attention @ states["compressor"], rtol=1e-3, atol=1e-3)
