"""Rewards, curriculum and behaviour metrics (joint/rewards.py)."""

import math

import pytest
import torch

from clara.rl.rewards import (
    RewardWeights, behaviour_metrics, combine_rewards, distractor_probability, format_reward, group_normalise,
    well_formed,
)
from clara.rl.rollout import Trajectory


def traj(turns, answer=None, group=0, queries=(), retrieved=(), sc=0.0, n=1, question="who is x"):
    t = Trajectory(question=question, group=group, ids=[], generated=[], turns=list(turns), answer=answer,
                   queries=list(queries), retrieved=[list(r) for r in retrieved])
    t.logp, t.sc_sum = [0.0] * n, sc * n
    return t


def test_well_formed_tags():
    assert well_formed("<think>a</think><search>b</search>")
    assert well_formed("<answer>Paris</answer>")
    assert not well_formed("<think>a<search>b</search></think>")  # nested
    assert not well_formed("<answer>a")  # unclosed
    assert not well_formed("</search>")


def test_curriculum_schedule_hand_values():
    # b = 4, T = 10: i = 5 -> (4^0.5 - 1)/3 = 1/3 of the way from p_s to p_e
    assert distractor_probability(5, 10, 0.1, 0.7, 4.0) == pytest.approx(0.1 + (1 / 3) * 0.6)
    assert distractor_probability(0, 10, 0.1, 0.7, 4.0) == pytest.approx(0.1)
    assert distractor_probability(10, 10, 0.1, 0.7, 4.0) == pytest.approx(0.7)
    assert distractor_probability(20, 10, 0.1, 0.7, 4.0) == pytest.approx(0.7)  # held at p_e after T
    assert distractor_probability(3, 10, 0.0, 1.0, 1.0) == pytest.approx(0.3)  # b = 1: linear
    # b < 1 front-loads the increase: b = 0.25, i/T = 0.5 -> (0.5 - 1)/(0.25 - 1) = 2/3
    assert distractor_probability(5, 10, 0.0, 1.0, 0.25) == pytest.approx(2 / 3)


def test_combined_reward_em_format_hit_and_self_certainty():
    trajs = [
        traj(["<search>q</search>", "<answer>Paris</answer>"], "Paris", queries=["q"], retrieved=[[3, 1]], sc=2.0),
        traj(["<answer>Rome"], None, sc=1.0),                        # no answer: answer 0, format 0
        traj(["<answer>the paris</answer>"], "the paris", sc=1.0),   # EM after normalisation
        traj(["<think>x<answer>Lyon</answer>"], "Lyon", sc=3.0),     # wrong and malformed
    ]
    w = RewardWeights(answer=1.0, format=0.5, self_certainty=0.1, retrieval_hit=0.2)
    reward, terms = combine_rewards(trajs, [["Paris"]], w, group_size=4, gold_ids=[[1]])
    assert terms["answer"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert terms["format"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert terms["retrieval_hit"].tolist() == [1.0, 0.0, 0.0, 0.0]
    sc = torch.tensor([2.0, 1.0, 1.0, 3.0])
    z = (sc - sc.mean()) / sc.std(unbiased=False)
    assert terms["self_certainty"] == pytest.approx(z.tolist(), abs=1e-5)
    expected = torch.tensor([1.5 + 0.2, 0.0, 1.5, 0.0]) + 0.1 * z
    assert reward.tolist() == pytest.approx(expected.tolist(), abs=1e-5)
    assert terms["bridge_hit"].tolist() == [0.0] * 4  # one gold document: no bridge
    # two gold documents: the bridge is the last; only a search that retrieved it earns bridge_hit
    two = [traj(["<answer>x</answer>"], "x", retrieved=[[1, 5], [2, 7]]), traj(["<answer>x</answer>"], "x", retrieved=[[1, 5]]),
           traj(["<answer>x</answer>"], "x", retrieved=[[7]]), traj(["<answer>x</answer>"], "x")]
    r2, t2 = combine_rewards(two, [["y"]], RewardWeights(format=0.0, bridge_hit=0.5), 4, gold_ids=[[1, 7]])
    assert t2["bridge_hit"].tolist() == [1.0, 0.0, 1.0, 0.0] and r2.tolist() == [0.5, 0.0, 0.5, 0.0]
    w_f1 = RewardWeights(metric="f1", format=0.0)
    r, _ = combine_rewards([traj(["<answer>paris france</answer>"], "paris france")], [["Paris"]], w_f1, 1)
    assert float(r) == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_group_normalise_constant_group_is_zero():
    assert group_normalise(torch.tensor([1.0, 1.0, 0.0, 2.0]), 2).tolist() == pytest.approx([0, 0, -1, 1], abs=1e-5)


def test_behaviour_metrics():
    trajs = [
        traj(["<think>a</think><search>who is x</search>", "<search>Org of x</search>", "<answer>Acme</answer>"],
             "Acme", queries=["who is x", "Org of x"], retrieved=[[0], [2]]),
        traj(["<answer>Bob</answer>"], "Bob"),
    ]
    docs = {0: "x works at Acme.", 2: "Acme is an organisation."}
    m = behaviour_metrics(trajs, doc_text=lambda g, d: docs[d])
    assert m["search_count"] == 1.0 and m["thinking_rate"] == 0.5 and m["answer_rate"] == 1.0
    assert m["query_rewriting"] == 0.5  # first query repeats the question
    assert m["source_referencing"] == 0.5  # Acme found in a retrieved doc; Bob never retrieved
    assert format_reward(trajs[0]) == 1.0 and not math.isnan(m["gen_tokens"])
