"""The RL loss reaches the generator adapter; `clara rl` runs, logs its metrics and resumes exactly."""

import shutil

import torch
from safetensors.torch import load_file

from clara.rl.grpo import group_advantages, policy_loss
from clara.rl.rollout import CandidateRetriever, RolloutParams, ScriptedPolicy, rollout, sequence_logprobs
from clara.training import read_metrics


def test_policy_gradient_reaches_only_the_generator_adapter(model, cand_mem):
    scripts = [["<search>river A</search>", "<answer>town 0</answer>"], ["<answer>nowhere at all</answer>"]]
    trajs = rollout(model, ["Where does river A run?"], group_size=2, retriever=CandidateRetriever(cand_mem, k=2),
                    policy=ScriptedPolicy(model, scripts), params=RolloutParams(max_turns=2, max_turn_tokens=32))
    adv, zero_var = group_advantages(torch.tensor([1.0, 0.0]), group_size=2)  # non-constant rewards
    assert not bool(zero_var.any())
    logp, mask = sequence_logprobs(model, trajs, "generator")
    old = torch.zeros_like(logp).masked_scatter(mask, torch.tensor([x for t in trajs for x in t.logp]))
    loss, _ = policy_loss(logp, old, adv, mask, mode="dapo")
    loss.backward()
    gen = model.adapters.parameters("generator")
    assert all(p.grad is not None for p in gen)
    assert sum(float(p.grad.abs().sum()) for p in gen) > 0
    for other in ("query", "compressor"):
        assert all(p.grad is None for p in model.adapters.parameters(other))


def test_rl_run_logs_metrics_and_resumes_exactly(rl_cfg, tmp_path):
    from clara.rl.train import run_rl

    cfg = rl_cfg("straight", dgpo_beta=0.1, aggregation="dr_grpo")
    out = run_rl(cfg)
    assert out["result"].step == 4 and 0.0 <= out["raw_question_recall"] <= 1.0
    rows = read_metrics(tmp_path / "straight" / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "zero_var_groups", "kl", "em", "search_count", "thinking_rate",
                "query_rewriting", "source_referencing", "distractor_p", "dgpo_rows", "teacher_kl"):
        assert key in rows[0], key
    assert [r["distractor_p"] for r in rows][0] == 0.0 and rows[-1]["distractor_p"] > 0
    # adapters changed: the generator trained, the query reasoner did not
    start = run_rl.__globals__["build_rl_model"](cfg)
    trained = load_file(str(tmp_path / "straight/adapters/generator/adapter_model.safetensors"))
    assert any(not torch.equal(v, start.adapters.state_dict("generator")[k]) for k, v in trained.items())
    query = load_file(str(tmp_path / "straight/adapters/query/adapter_model.safetensors"))
    assert all(torch.equal(v, start.adapters.state_dict("query")[k]) for k, v in query.items())

    # resume: the run cut back to its step-2 checkpoint (out_dir is part of the config hash, so in place),
    # continued, ends with the same weights and the same per-step losses and rewards
    run = tmp_path / "straight"
    shutil.rmtree(run / "adapters")
    shutil.rmtree(run / "checkpoints" / "step-000004")
    (run / "checkpoints" / "latest").write_text("step-000002\n")
    resumed = run_rl(cfg, resume=True)
    assert resumed["result"].resumed_from == 2
    b = load_file(str(run / "adapters/generator/adapter_model.safetensors"))
    assert all(torch.equal(trained[k], b[k]) for k in trained)
    rows_b = read_metrics(run / "metrics.jsonl", kind="train")
    keys = ("step", "loss", "reward_mean", "kl", "search_count")
    assert [tuple(r[k] for k in keys) for r in rows_b] == [tuple(r[k] for k in keys) for r in rows]
