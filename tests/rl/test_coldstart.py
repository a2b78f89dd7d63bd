"""DGPO cold start: the teacher's trajectories and the distillation run that teaches the search protocol."""

import dataclasses

from clara.training import read_metrics


def _records(world_dir, types):
    from clara.eval.retrieval import load_eval_records

    return load_eval_records(world=str(world_dir), splits=["train"], types=types, limit=2)


def test_teacher_searches_the_question_then_the_bridge_entity_then_answers(world_dir):
    from clara.rl.coldstart import teacher_script

    two_hop = _records(world_dir, ["two_hop_hidden"])[0]
    bridge = two_hop.candidates[two_hop.pos_index[-1]]
    assert bridge.title and bridge.title not in two_hop.question  # hidden: the question never names the bridge
    assert teacher_script(two_hop) == [f"<search>{two_hop.question}</search>", f"<search>{bridge.title}</search>",
                                       f"<answer>{two_hop.answers[0]}</answer>"]  # fmt: skip
    single = _records(world_dir, ["single_hop"])[0]
    assert teacher_script(single) == [f"<search>{single.question}</search>", f"<answer>{single.answers[0]}</answer>"]


def test_teacher_rollout_retrieves_and_its_loss_trains_only_the_generator(model, world_dir, tmp_path):
    from clara.rl.coldstart import cold_start_loss, teacher_rollouts
    from clara.model.memory_cache import MemoryCache
    from clara.rl.rollout import CandidateRetriever

    records = _records(world_dir, ["two_hop_hidden"])
    cache = MemoryCache.for_model(model, tmp_path / "cache")
    cache.fill(model, (d for r in records for d in r.candidates))
    retriever = CandidateRetriever(cache.candidates(records), k=2)
    trajs = teacher_rollouts(model, records, retriever, max_turn_tokens=4)  # scripts longer than 4 tokens still fit
    assert [t.answer for t in trajs] == [r.answers[0] for r in records]
    assert all(len(t.queries) == 2 and len(t.memory) == 2 for t in trajs)  # two searches, memory spliced after each
    loss, metrics = cold_start_loss(model, records, retriever, max_turn_tokens=4)
    assert metrics["search_count"] == 2.0 and metrics["teacher_tokens"] > 20 and loss.item() > 0
    loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in model.adapters.parameters("generator")) > 0
    for other in ("query", "compressor"):
        assert all(p.grad is None for p in model.adapters.parameters(other))


def test_cold_start_run_lowers_the_teacher_loss(rl_cfg, tmp_path):
    from clara.rl.train import run_rl

    cfg = rl_cfg("cold", cold_start=True, question_types=["two_hop_hidden", "single_hop"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=16, lr=1e-2))
    run_rl(cfg)
    rows = read_metrics(tmp_path / "cold" / "metrics.jsonl", kind="train")
    assert [r["step"] for r in rows] == list(range(1, 17)) and all("teacher_recall" in r for r in rows)
    first, last = sum(r["ce"] for r in rows[:2]) / 2, sum(r["ce"] for r in rows[-2:]) / 2
    assert last < first - 0.5, (first, last)  # the protocol tokens are learnt
