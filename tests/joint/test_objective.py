"""The joint loss: gradients reach the query adapter only through the soft half of Z."""

import dataclasses
from pathlib import Path

import pytest
import torch

from clara.config import GeneratorPrompt
from clara.joint import objective as objective_module
from clara.model.memory_cache import MemoryCache
from clara.joint.objective import JointObjective, select_memory
from clara.model.scoring import candidate_scores, model_scores
from clara.joint.train import build_joint_model
from clara.world.splits import load_split
from clara.model.prompts import ask

@pytest.fixture
def setup(joint_cfg, perturb):
    cfg = joint_cfg()
    model = build_joint_model(cfg)
    perturb(model)
    model.adapters.copy_adapter("compressor", "query")  # as the recipe does, on trained-looking weights
    records = load_split(cfg, "train", train=True)[:2]
    cache = MemoryCache.for_model(model, Path(cfg.out_dir).parent / "cache")
    cache.fill(model, (d for r in records for d in r.candidates))
    return model, JointObjective(model, cache, cfg.joint), records


def _grads(model, name):
    return [p.grad for p in model.adapters.parameters(name)]


def test_gradient_reaches_every_query_lora_param_and_nothing_frozen(setup):
    model, objective, records = setup
    loss, metrics = objective(records)
    loss.backward()
    query = _grads(model, "query")
    assert query and all(g is not None and g.abs().sum() > 0 for g in query), "query adapter got no gradient"
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model, "generator"))
    assert all(g is None or g.abs().sum() == 0 for g in _grads(model, "compressor"))
    assert model.mem_embed.grad is None
    lora = {id(p) for n in model.adapters.names for p in model.adapters.parameters(n)}
    base = [p for p in model.parameters() if id(p) not in lora and p is not model.mem_embed]
    assert base and all(p.grad is None for p in base)
    assert 0.0 <= metrics["hit_at_k"] <= 1.0


def test_without_the_soft_path_the_query_adapter_gets_nothing(setup, monkeypatch):
    """The control for the test above: a hard-only selection stops the query gradient."""
    model, objective, records = setup
    real = objective_module.straight_through_topk

    def hard_only(scores, k, temperature):
        z, idx = real(scores, k, temperature)
        return z.detach(), idx

    monkeypatch.setattr(objective_module, "straight_through_topk", hard_only)
    objective(records)[0].backward()
    assert all(g is None or g.abs().sum() == 0 for g in _grads(model, "query"))


def test_scp_prompt_scores_the_answer_as_stage_1_asks_and_still_trains_the_query(setup):
    """joint.prompt=scp: the loss is the generator's, on the hard top-k, asked with SCP's QA instruction and
    the reply forced to start "Question: q\nAnswer:"; the query's gradient still arrives."""
    model, objective, records = setup
    cfg = dataclasses.replace(objective.cfg, prompt=GeneratorPrompt.SCP)
    loss, _ = JointObjective(model, objective.cache, cfg)(records)
    loss.backward()
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model, "query"))
    with torch.no_grad():
        questions = [r.question for r in records]
        mem = objective.cache.candidates(records, model.device)
        scores = model_scores(model, model.encode_query(questions), mem, cfg.scoring)
        selected = select_memory(scores, mem, cfg.top_k, cfg.temperature)[0]
        inputs, prefixes = ask(questions, "scp")
        answers = [r.answers[0] for r in records]
        kw = dict(max_answer_len=cfg.max_answer_len)
        asked = model.generator_loss(inputs, selected, answers, reply_prefixes=prefixes, **kw)
        direct = model.generator_loss(questions, selected, answers, **kw)
    torch.testing.assert_close(loss.detach(), asked)
    assert not torch.isclose(asked, direct)  # the form of the question is not a no-op


@pytest.mark.parametrize("scoring", ["flattened", "pooled"])
def test_straight_through_forward_is_the_hard_top_k_memory(scoring):
    g = torch.Generator().manual_seed(0)
    cand = torch.randn(3, 7, 4, 16, generator=g)  # (B, N, m, H)
    query = torch.randn(3, 4, 16, generator=g, requires_grad=True)  # (B, m, H)
    scores = candidate_scores(query, cand, scoring)  # (B, N)
    flat = cand.mean(2) if scoring == "pooled" else cand.flatten(2)
    expected = torch.nn.functional.cosine_similarity(
        (query.mean(1) if scoring == "pooled" else query.flatten(1))[:, None], flat, dim=-1)
    assert torch.allclose(scores, expected, atol=1e-5)
    selected, z, idx = select_memory(scores, cand, k=3, temperature=0.02)
    assert torch.equal(idx, scores.topk(3, dim=1).indices)
    hard = torch.stack([cand[b, idx[b]] for b in range(3)])  # (B, k, m, H)
    assert torch.equal(selected, hard)
    selected.sum().backward()
    assert query.grad is not None and query.grad.abs().sum() > 0


def test_query_warmup_gives_the_query_exactly_zero_gradient_and_the_generator_its_own(setup):
    model, objective, records = setup
    objective(records, query_grad=False)[0].backward()
    query = _grads(model, "query")
    assert query and all(g is not None and g.abs().sum() == 0 for g in query)  # in the graph, zero (DDP-safe)
    assert all(g is not None and g.abs().sum() > 0 for g in _grads(model, "generator"))


def test_query_warmup_steps_hold_the_query_then_release_it(joint_cfg, perturb, tmp_path):
    """joint.query_warmup_steps=2: after 2 steps the query reasoner is still the compressor's copy while the
    generator moved; a third step moves the query too."""
    import dataclasses

    from clara.joint.train import run_joint

    def lora(model, name):
        return torch.cat([p.detach().flatten().clone() for p in model.adapters.parameters(name)])

    moved = {}
    for steps in (2, 3):
        cfg = joint_cfg(max_steps=steps)
        cfg = dataclasses.replace(cfg, out_dir=str(tmp_path / f"run{steps}"),
                                  joint=dataclasses.replace(cfg.joint, query_warmup_steps=2, eval_every=0))
        model = run_joint(cfg)["model"]
        generator_b = [p for n, p in model.adapters.peft.named_parameters() if ".generator." in n and "lora_B" in n]
        moved[steps] = (not torch.equal(lora(model, "query"), lora(model, "compressor")),
                        bool(sum(p.detach().abs().sum() for p in generator_b) > 0))  # lora_B starts at zero
    assert moved[2] == (False, True) and moved[3] == (True, True), moved
