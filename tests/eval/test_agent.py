"""`clara eval agent`: greedy agent rollouts scored beside one-shot retrieval and closed book."""

import dataclasses
import json
import subprocess
import sys

import pytest

from clara.config import LoraConfig, ModelConfig


@pytest.fixture
def model(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    return ClaraModel.from_config(cfg)


@pytest.fixture
def hidden(world_dir):
    from clara.eval.retrieval import load_eval_records

    return load_eval_records(world=str(world_dir), splits=["test", "dev", "train"], types=["two_hop_hidden"], limit=2)


def test_agent_scores_count_answers_searches_and_behaviour(model, hidden, tmp_path):
    from clara.eval.agent import agent_scores
    from clara.model.memory_cache import MemoryCache
    from clara.rl.rollout import CandidateRetriever, RolloutParams, ScriptedPolicy, rollout

    assert len(hidden) == 2
    cache = MemoryCache.for_model(model, tmp_path / "cache")
    cache.fill(model, (d for r in hidden for d in r.candidates))
    gold = hidden[0].answers[0]
    scripts = [  # question 0: two rewritten searches, then the gold answer; question 1: a wrong answer at once
        ["<think>first the bridge</think><search>bridge entity</search>", "<search>its city</search>",
         f"<answer>{gold}</answer>"],
        ["<answer>Nowhere at all</answer>"],
    ]  # fmt: skip
    trajs = rollout(model, [r.question for r in hidden], 1, CandidateRetriever(cache.candidates(hidden), k=2),
                    ScriptedPolicy(model, scripts), RolloutParams(max_turns=4, max_turn_tokens=64))  # fmt: skip
    s = agent_scores(trajs, hidden)
    assert s["n"] == 2 and s["em"] == 0.5
    assert s["search_count"] == 1.0 and s["two_plus_searches"] == 0.5 and s["thinking_rate"] == 0.5
    assert s["query_rewriting"] == 1.0 and s["answer_rate"] == 1.0
    assert 0.0 <= s["recall_written"] <= 1.0 and 0.0 <= s["source_referencing"] <= 1.0
    # bridge hit: question 1 made no search; question 0 hit iff a search retrieved its last gold document
    bridge = hidden[0].pos_index[-1]
    assert len(hidden[0].pos_index) >= 2 and s["bridge_hit"] == float(any(bridge in ids for ids in trajs[0].retrieved)) / 2


def test_eval_agent_command_writes_all_three_systems(model, world_dir, tmp_path):
    adapters = model.save_adapters(tmp_path / "adapters", prompt="scp")  # no --prompt: asked as recorded
    out = tmp_path / "agent.json"
    cmd = [sys.executable, "-m", "clara.cli", "eval", "agent", "--model", str(adapters), "--world", str(world_dir),
           "--split", "test,dev,train", "--limit", "3", "--max-turns", "2", "--max-turn-tokens", "4",
           "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["n"] == 3 and set(res["systems"]) == {"agent", "one_shot", "closed_book"}
    assert all(s["n"] == 3 for s in res["systems"].values()) and len(res["rollouts"]) == 3
    assert res["settings"]["top_k"] == 2 and res["settings"]["prompt"] == "scp" and "| agent | 3 |" in r.stdout
    # a type the world lacks is a clear error, not an empty table
    bad = subprocess.run(cmd[:-4] + ["--types", "no_such_type"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "no questions selected" in bad.stderr


def test_one_shot_asks_the_generator_in_the_stage_2_prompt(model, hidden, tmp_path, monkeypatch):
    """One-shot retrieval reads memory as the stage-2 run trained the generator to (joint.prompt)."""
    import clara.eval.retrieval as retrieval
    from clara.eval.agent import AgentSettings, evaluate_agent
    from clara.model.memory_cache import MemoryCache

    asked = []
    real = retrieval.answer_eval

    def spy(*args, **kwargs):
        asked.append(kwargs.get("prompt"))
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "answer_eval", spy)
    cache = MemoryCache.for_model(model, tmp_path / "cache")
    cache.fill(model, (d for r in hidden for d in r.candidates))
    settings = AgentSettings(max_turns=1, max_turn_tokens=2, max_new_tokens=2)
    for prompt in ("scp", "direct"):
        res = evaluate_agent(model, hidden, cache, dataclasses.replace(settings, prompt=prompt))
        assert res["systems"]["one_shot"]["n"] == len(hidden)
    assert asked == ["scp", "direct"]


def test_em_by_relation_and_its_table():
    from clara.eval.agent import em_by_relation, format_agent_table
    from clara.data.records import EvalRecord

    records = [EvalRecord(question=f"q{i}", answers=(gold,), type="two_hop_hidden", extra={"relation": rel})
               for i, (gold, rel) in enumerate([("Plenia", "birth_city>country"), ("Tarsin", "birth_city>country"),
                                                ("1975", "mentor>birth_year")])]  # fmt: skip
    preds = {"agent": ["plenia", "Plenia", "1998"], "one_shot": ["Tarsin", "Tarsin", "1975"]}
    rows = em_by_relation(preds, records)
    assert rows == {"birth_city>country": {"n": 2, "agent": 0.5, "one_shot": 0.5},
                    "mentor>birth_year": {"n": 1, "agent": 0.0, "one_shot": 1.0}}
    scores = {"n": 3, "em": 0.0, "f1": 0.0, "cover_em": 0.0}
    table = format_agent_table({"systems": {"agent": scores, "one_shot": scores}, "by_relation": rows})
    assert "| relation | n | agent EM | one_shot EM |" in table and "| mentor>birth_year | 1 | 0.000 | 1.000 |" in table
