"""The joint-signal diagnostic: hand values for its two measures, and one run on the tiny backbone."""

import torch

from clara.eval.joint_signal import measure, score_gradient_stats, with_and_without_gold


def test_score_gradient_stats_rank_the_gold_by_most_negative_gradient():
    grad = torch.tensor([[0.3, -0.5, 0.1, 0.0], [-0.2, 0.4, -0.1, 0.5]])
    stats = score_gradient_stats(grad, [[1], [2, 3]])  # row 0: gold first; row 1: best gold (2) second
    assert stats == {"gold_first": 0.5, "gold_mean_rank": 1.5, "chance_first": 0.25}


def test_with_and_without_gold_swap_one_pick():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    # gold among the picks: without it, the best candidate not picked takes its place
    assert with_and_without_gold([0, 2], scores, [2]) == ([0, 2], [0, 1])
    # gold not picked: it replaces the last pick
    assert with_and_without_gold([0, 1], scores, [4, 3]) == ([0, 4], [0, 1])


def test_measure_runs_the_joint_forward_on_the_tiny_backbone(joint_cfg, perturb, tmp_path):
    from clara.model.memory_cache import MemoryCache
    from clara.joint.train import build_joint_model
    from clara.world.splits import load_split

    cfg = joint_cfg()
    model = build_joint_model(cfg)
    perturb(model)
    model.adapters.copy_adapter("compressor", "query")
    records = load_split(cfg, "train", train=True)[:5]
    cache = MemoryCache.for_model(model, tmp_path / "cache")
    cache.fill(model, (d for r in records for d in r.candidates))
    stats = measure(model, cache, records, cfg.joint, batch_size=2)
    assert stats["n"] == 5 and 1 <= stats["gold_mean_rank"] <= cfg.joint.candidates
    assert 0 <= stats["gold_first"] <= 1 and 0 <= stats["gold_helps_share"] <= 1 and 0 <= stats["loss_picks_gold"] <= 1
    assert 0 <= stats["retriever_r1"] <= 1 and 0 <= stats["text_loss_picks_gold"] <= 1
    assert stats["gold_helps_mean"] != 0  # the two sets differ, so do the generator's losses
    assert all(p.grad is None for p in model.parameters())  # a measurement leaves no gradients behind
