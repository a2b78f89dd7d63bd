"""Splice-side memory normalisation (model.memory_norm): centring removes what all documents share."""

import dataclasses

import pytest
import torch

from clara.model.memory import init_memory_stats, memory_stats_ready, normalize_memory, update_memory_stats


def _shared_plus_small(n=6, m=4, H=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(m, H, generator=g) * 10  # (m, H) the common direction, per position
    return shared + torch.randn(n, m, H, generator=g) * 0.1  # (n, m, H)


def test_center_removes_the_shared_part_and_keeps_differences():
    mem = _shared_plus_small()
    stats = init_memory_stats(4, 16)
    assert normalize_memory(mem, stats, "center") is mem  # unset stats: identity
    update_memory_stats(stats, mem)
    assert memory_stats_ready(stats)
    out = normalize_memory(mem, stats, "center")
    torch.testing.assert_close(out.mean(0), torch.zeros(4, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[0] - out[1], mem[0] - mem[1])  # differences between documents intact
    flat = torch.nn.functional.normalize(out.reshape(6, -1), dim=-1)
    raw = torch.nn.functional.normalize(mem.reshape(6, -1), dim=-1)
    assert (raw @ raw.T)[0, 1] > 0.99 and abs(float((flat @ flat.T)[0, 1])) < 0.5


def test_standardize_gives_unit_variance_per_dimension():
    mem = _shared_plus_small(n=64) * torch.linspace(3, 50, 16)  # very different per-dimension scales
    stats = init_memory_stats(4, 16)
    update_memory_stats(stats, mem)
    out = normalize_memory(mem, stats, "standardize")
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(4, 16), atol=1e-2, rtol=0)


def test_running_stats_move_towards_new_batches():
    stats = init_memory_stats(2, 3)
    update_memory_stats(stats, torch.zeros(5, 2, 3))
    update_memory_stats(stats, torch.ones(5, 2, 3), momentum=0.5)
    torch.testing.assert_close(stats[0], torch.full((2, 3), 0.5))


def test_default_model_has_no_stats_and_unchanged_parameters(model):
    assert model.memory_norm == "none" and model.mem_stats is None
    assert not any("mem_stats" in n for n, _ in model.named_parameters())


@pytest.fixture
def center_model(model_cfg, perturb):
    from clara.model.clara_model import ClaraModel

    m = ClaraModel.from_config(dataclasses.replace(model_cfg, memory_norm="center"))
    perturb(m, seed=0)
    return m


def test_training_splice_sets_stats_and_eval_uses_them_frozen(center_model):
    docs = ["alpha beta gamma", "delta epsilon", "zeta eta theta iota"]
    center_model.train()
    mem = center_model.compress(docs)  # (3, m, H)
    loss = center_model.generator_loss(["q"] * 3, mem[:, None], ["a", "b", "c"])
    loss.backward()
    stats = center_model.mem_stats
    assert memory_stats_ready(stats.data) and stats.grad is None  # updated by running average, not by the optimiser
    torch.testing.assert_close(stats.data[0], mem.detach().mean(0))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in center_model.adapters.parameters("compressor"))
    center_model.eval()
    before = stats.data.clone()
    with torch.no_grad():
        spliced = center_model.prepare_memory(mem[:, None])  # (3, m, H)
    torch.testing.assert_close(stats.data, before)  # eval forwards never move the stats
    rms = spliced.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, center_model.embed_rms), rtol=1e-4, atol=1e-6)


def test_save_load_restores_norm_and_stats(center_model, make_model, tmp_path):
    center_model.train()
    mem = center_model.compress(["one two three", "four five"])
    center_model.generator_loss(["q", "q"], mem[:, None], ["a", "b"])  # sets the stats
    center_model.save_adapters(tmp_path / "ad")
    fresh = make_model()  # built with memory_norm=none, as eval tools rebuild from config
    fresh.load_adapters(tmp_path / "ad")
    assert fresh.memory_norm == "center"
    torch.testing.assert_close(fresh.mem_stats.data, center_model.mem_stats.data)
    center_model.eval()
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh.prepare_memory(mem.detach()[:, None]), center_model.prepare_memory(mem.detach()[:, None]))


def test_unknown_norm_is_refused_and_known_ones_parse():
    from clara.config import ClaraConfig, MemoryNorm, from_dict
    from clara.errors import ConfigError

    assert from_dict(ClaraConfig, {"model": {"memory_norm": "center"}}).model.memory_norm is MemoryNorm.CENTER
    with pytest.raises(ConfigError, match="memory_norm"):
        from_dict(ClaraConfig, {"model": {"memory_norm": "whiten"}})


def test_stats_stay_put_while_the_compressor_is_frozen(center_model):
    center_model.train()
    mem = center_model.compress(["alpha beta gamma", "delta epsilon"]).detach()
    center_model.generator_loss(["q"] * 2, mem[:, None], ["a", "b"])  # compressor trains: stats set
    before = center_model.mem_stats.data.clone()
    center_model.set_trainable(["query", "generator"], mem_embed=False)  # as in joint training
    try:
        center_model.generator_loss(["q"] * 2, mem[:, None] * 3.0, ["a", "b"]).backward()
        torch.testing.assert_close(center_model.mem_stats.data, before)
    finally:
        center_model.set_trainable(["compressor", "query", "generator"])


def test_retrieval_scores_in_the_centred_space(center_model, model):
    """With centring on, queries and documents are scored after removing the shared mean memory
    (raw cosines all sit near 1); without it, scoring is the plain cosine."""
    from clara.model.scoring import candidate_scores, model_scores
    from clara.model.memory import update_memory_stats

    g = torch.Generator().manual_seed(0)
    shared = torch.randn(center_model.num_mem, center_model.hidden_size, generator=g) * 20  # (m, H)
    docs = shared + torch.randn(1, 6, center_model.num_mem, center_model.hidden_size, generator=g)  # (1, N, m, H)
    query = docs[:, 2] + 0.1 * torch.randn(docs[:, 2].shape, generator=g)  # (1, m, H): near document 2
    with torch.no_grad():
        update_memory_stats(center_model.mem_stats.data, docs[0])
    raw = candidate_scores(query, docs, "flattened")[0]
    centred = model_scores(center_model, query, docs, "flattened")[0]
    assert raw.std() < 0.05 and centred.std() > 5 * raw.std()  # the shared direction hides the differences
    assert int(centred.argmax()) == 2
    torch.testing.assert_close(model_scores(model, query, docs, "flattened"), candidate_scores(query, docs, "flattened"))
    before = center_model.compressor_hash()
    with torch.no_grad():
        center_model.mem_stats.data[0] += 1.0
    assert center_model.compressor_hash() != before  # banks and caches keyed by it see the new space
