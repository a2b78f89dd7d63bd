"""Rewards, the distractor curriculum and behaviour metrics for the search agent (DESIGN §8).

    r = combine_rewards(trajs, golds, gold_docs, weights)        # (B,) one reward per rollout

Reward terms (each in [0, 1] except self-certainty):
- answer: EM or token F1 (``eval.metrics``) of the ``<answer>`` text against the golds; 0 when
  the rollout gave no answer.
- format: 1 when every turn's tags are balanced and in order and an answer was given, else 0.
- self-certainty: SC = mean_t KL(U ‖ p_t) over the rollout's generated tokens, z-normalised
  within its group (population std; a group with equal SC gets 0), so it only ranks rollouts
  of the same question against each other.
- retrieval hit: 1 when any search retrieved a gold document of the question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch

from clara.config import AnswerMetric
from clara.answers import cover_em, exact_match, f1, normalize_answer
from clara.rl.rollout import ANSWER_CLOSE, ANSWER_OPEN, SEARCH_CLOSE, SEARCH_OPEN, THINK_CLOSE, THINK_OPEN, Trajectory

_TAG = re.compile(r"</?(think|search|answer)>")


@dataclass(frozen=True)
class RewardWeights:
    answer: float = 1.0
    format: float = 0.1
    self_certainty: float = 0.0
    retrieval_hit: float = 0.0
    metric: AnswerMetric = AnswerMetric.EM
    bridge_hit: float = 0.0


def answer_reward(answer: str | None, golds: Sequence[str], metric: AnswerMetric | str = AnswerMetric.EM) -> float:
    if answer is None:
        return 0.0
    return exact_match(answer, golds) if AnswerMetric(metric) == AnswerMetric.EM else f1(answer, golds)


def well_formed(text: str) -> bool:
    """Tags never nest or overlap, every opened tag is closed, and nothing opens twice in a row."""
    open_tag = None
    for match in _TAG.finditer(text):
        closing, name = match.group(0).startswith("</"), match.group(1)
        if closing:
            if open_tag != name:
                return False
            open_tag = None
        elif open_tag is not None:
            return False
        else:
            open_tag = name
    return open_tag is None


def format_reward(traj: Trajectory) -> float:
    return float(traj.answer is not None and bool(traj.answer) and all(well_formed(t) for t in traj.turns))


def retrieval_hit(traj: Trajectory, gold_ids: Sequence[int]) -> float:
    gold = set(gold_ids)
    return float(any(gold & set(ids) for ids in traj.retrieved))


def bridge_hit(traj: Trajectory, gold_ids: Sequence[int]) -> float:
    """1 when a search retrieved the *bridge* — the last gold document of a question with two or more
    (DESIGN §7: a hidden two-hop question never names it, so a second search must) — else 0;
    always 0 for a question with one gold document."""
    if len(gold_ids) < 2:
        return 0.0
    return float(any(gold_ids[-1] in ids for ids in traj.retrieved))


def written_recall(trajs: Sequence[Trajectory], records: Sequence) -> float | None:
    """Share of all searches whose retrieved documents include a gold one (None without searches);
    ``records[t.group].pos_index`` holds each trajectory's gold candidates."""
    searches = [(t.group, ids) for t in trajs for ids in t.retrieved]
    if not searches:
        return None
    return sum(bool(set(ids) & set(records[g].pos_index)) for g, ids in searches) / len(searches)


def group_normalise(values: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """(B,) -> (B,) z-scores within each group of ``group_size`` (population std; constant group -> 0)."""
    v = values.float().view(-1, group_size)  # (B/G, G)
    z = (v - v.mean(1, keepdim=True)) / (v.std(1, unbiased=False, keepdim=True) + eps)
    return z.masked_fill((v == v[:, :1]).all(1, keepdim=True), 0.0).view(-1)


def combine_rewards(
    trajs: Sequence[Trajectory],
    golds: Sequence[Sequence[str]],
    weights: RewardWeights,
    group_size: int,
    gold_ids: Sequence[Sequence[int]] = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards (B,) and each term (B,); ``golds``/``gold_ids`` are indexed by ``traj.group``."""
    terms = {
        "answer": torch.tensor([answer_reward(t.answer, golds[t.group], weights.metric) for t in trajs]),
        "format": torch.tensor([format_reward(t) for t in trajs]),
    }
    reward = weights.answer * terms["answer"] + weights.format * terms["format"]
    if weights.self_certainty:
        terms["self_certainty"] = group_normalise(torch.tensor([t.self_certainty for t in trajs]), group_size)
        reward = reward + weights.self_certainty * terms["self_certainty"]
    if weights.retrieval_hit and gold_ids:
        terms["retrieval_hit"] = torch.tensor([retrieval_hit(t, gold_ids[t.group]) for t in trajs])
        reward = reward + weights.retrieval_hit * terms["retrieval_hit"]
    if gold_ids:  # logged whatever its weight: how often any search reached the bridge
        terms["bridge_hit"] = torch.tensor([bridge_hit(t, gold_ids[t.group]) for t in trajs])
        reward = reward + weights.bridge_hit * terms["bridge_hit"]
    return reward, terms


def distractor_probability(i: int, total: int, p_start: float, p_end: float, base: float) -> float:
    """p(i) = p_s + (b^{i/T} − 1)/(b − 1)·(p_e − p_s); base b = 1 is the linear limit."""
    x = min(max(i / total, 0.0), 1.0) if total > 0 else 1.0
    frac = x if abs(base - 1.0) < 1e-12 else (base**x - 1.0) / (base - 1.0)
    return p_start + frac * (p_end - p_start)


# ---------------------------------------------------------------- behaviour metrics


def behaviour_metrics(trajs: Sequence[Trajectory], doc_text=None) -> dict[str, float]:
    """Search count, thinking rate, query rewriting, answer rate and (with ``doc_text``) source referencing.

    ``doc_text(group, retrieved_id) -> str`` gives a retrieved document's text; an answer is
    *source-referenced* when a retrieved document covers it (``cover_em``)."""
    n = max(1, len(trajs))
    queries = [(t.question, q) for t in trajs for q in t.queries]
    out = {
        "search_count": sum(len(t.queries) for t in trajs) / n,
        "thinking_rate": sum(THINK_OPEN in t.text and THINK_CLOSE in t.text for t in trajs) / n,
        "answer_rate": sum(t.answer is not None for t in trajs) / n,
        "query_rewriting": (sum(normalize_answer(q) != normalize_answer(question) for question, q in queries)
                            / len(queries)) if queries else 0.0,
        "gen_tokens": sum(t.num_generated for t in trajs) / n,
    }
    if doc_text is not None:
        answered = [t for t in trajs if t.answer]
        supported = [any(cover_em(doc_text(t.group, d), [t.answer]) for ids in t.retrieved for d in ids) for t in answered]
        out["source_referencing"] = sum(supported) / len(answered) if answered else 0.0
    return out


__all__ = [
    "ANSWER_CLOSE", "ANSWER_OPEN", "SEARCH_CLOSE", "SEARCH_OPEN", "AnswerMetric", "RewardWeights", "answer_reward",
    "behaviour_metrics", "bridge_hit", "combine_rewards", "distractor_probability", "format_reward", "group_normalise",
    "retrieval_hit", "well_formed", "written_recall",
]
