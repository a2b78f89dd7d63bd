"""DGPO cold start (DESIGN §8): distil teacher trajectories into the agent before RL.

A generator fresh from joint training answers at once and never writes ``<search>``: GRPO then
sees no search to reward (every rollout of a group looks the same). The cold start teaches the
protocol first. The teacher knows each question's gold chain (the world's ``pos_index``: for a
two-hop question the first document, then the bridge document) and writes::

    <search>{question}</search>            -> memory of the query reasoner's top-k is spliced in
    <search>{bridge document's title}</search>   (two-document questions only)
    <answer>{gold answer}</answer>

The rollout runs exactly as at inference — same prompt, same query reasoner, same retrieval over
the question's candidates — with the teacher's tokens forced (:class:`ScriptedPolicy`); the loss
is the policy's next-token cross-entropy on those tokens (= KL(teacher ‖ π) for a deterministic
teacher). Run it as its own ``clara rl`` run with ``rl.cold_start=true``; the GRPO run then starts
from its adapters (``rl.init_adapters``), so GRPO's reference policy is the cold-started one.
"""

from __future__ import annotations

from typing import Sequence

import torch

from clara.rl.rollout import ANSWER_CLOSE, ANSWER_OPEN, SEARCH_CLOSE, SEARCH_OPEN


def teacher_script(record) -> list[str]:
    """The teacher's turns for one question record (needs ``answers``; uses ``pos_index`` and titles)."""
    turns = [f"{SEARCH_OPEN}{record.question}{SEARCH_CLOSE}"]
    golds = [record.candidates[i] for i in (record.pos_index or [])]
    if len(golds) > 1 and golds[-1].title:  # the second hop: look up the bridge entity by name
        turns.append(f"{SEARCH_OPEN}{golds[-1].title}{SEARCH_CLOSE}")
    turns.append(f"{ANSWER_OPEN}{record.answers[0]}{ANSWER_CLOSE}")
    return turns


def teacher_rollouts(model, records: Sequence, retriever, max_turn_tokens: int) -> list:
    """One teacher-forced rollout per record (its turns from :func:`teacher_script`)."""
    from clara.rl.rollout import RolloutParams, ScriptedPolicy, rollout

    policy = ScriptedPolicy(model, [teacher_script(r) for r in records])  # tokenises each turn once
    longest = max(len(turn) for turns in policy.ids for turn in turns)
    params = RolloutParams(max_turns=max(len(turns) for turns in policy.ids), max_turn_tokens=max(max_turn_tokens, longest))
    return rollout(model, [r.question for r in records], 1, retriever, policy, params)


def cold_start_loss(model, records: Sequence, retriever, max_turn_tokens: int) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean next-token CE of the generator on the teacher's tokens -> (loss, metrics)."""
    from clara.rl.rollout import sequence_logprobs

    trajs = teacher_rollouts(model, records, retriever, max_turn_tokens)
    logp, mask = sequence_logprobs(model, trajs, "generator", 1.0)  # (B, L), with grad
    loss = -logp[mask].mean()
    hits = [bool(set(ids) & set(r.pos_index)) for t, r in zip(trajs, records) for ids in t.retrieved]
    metrics = {"ce": float(loss.detach()), "teacher_tokens": float(mask.sum()),
               "search_count": sum(len(t.queries) for t in trajs) / len(trajs),
               "teacher_recall": sum(hits) / max(1, len(hits))}  # fmt: skip
    return loss, metrics
