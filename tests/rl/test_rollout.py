"""Rollout mechanics with latent search: scripted actions, splicing, exact log-prob replay."""

import torch

from clara.rl.rollout import (
    CandidateRetriever, RolloutParams, SamplingPolicy, ScriptedPolicy, rollout, sequence_embeds,
    sequence_logprobs,
)

SCRIPTS = [
    ["<think>need the river</think><search>river B</search>", "<answer>town 1</answer>"],
    ["<search>first</search>", "<search>second</search>", "<answer>x</answer>"],
    ["<answer>direct</answer>"],
    ["<think>hmm</think><search>a</search>", "<search>b</search>", "<search>c</search>"],  # runs out of turns
]


def _scripted(model, cand_mem, turns=3):
    questions = ["Which town does river B run through?", "Which river runs through town 3?"]
    retriever = CandidateRetriever(cand_mem, k=2)
    return rollout(model, questions, group_size=2, retriever=retriever, policy=ScriptedPolicy(model, SCRIPTS),
                   params=RolloutParams(max_turns=turns, max_turn_tokens=64))


def test_scripted_rollout_searches_splices_and_answers(model, cand_mem):
    trajs = _scripted(model, cand_mem)
    m, slot = model.num_mem, model.tokens.slot_id
    assert [t.queries for t in trajs] == [["river B"], ["first", "second"], [], ["a", "b"]]
    assert [t.answer for t in trajs] == ["town 1", "x", "direct", None]
    assert [t.group for t in trajs] == [0, 0, 1, 1]
    for t in trajs:
        assert len(t.ids) == len(t.generated)
        assert t.ids.count(slot) == len(t.queries) * 2 * m  # k = 2 blocks of m per search
        assert len(t.memory) == len(t.queries) and all(b.shape == (2, m, model.hidden_size) for b in t.memory)
        # slot positions and the information markup are never marked as generated
        assert not any(g for i, g in zip(t.ids, t.generated) if i == slot)
        assert sum(t.generated) == t.num_generated
    # the 4th rollout searched in its last turn: no information, no answer
    assert len(trajs[3].turns) == 3 and trajs[3].finished
    # retrieved memory is exactly the chosen candidates' memory
    t = trajs[0]
    assert torch.equal(t.memory[0], cand_mem[0, t.retrieved[0]].float())


def test_spliced_embeddings_hold_the_rescaled_memory(model, cand_mem):
    from clara.model.memory import rescale_to_rms

    t = _scripted(model, cand_mem)[0]
    ids, embeds, _ = sequence_embeds(model, [t])
    slots = (ids[0] == model.tokens.slot_id).nonzero().squeeze(-1)
    expected = rescale_to_rms(t.memory[0].reshape(-1, model.hidden_size), model.embed_rms)
    assert torch.allclose(embeds[0, slots], expected, atol=1e-6)


def test_replayed_logprobs_equal_sampling_time_scripted(model, cand_mem):
    trajs = _scripted(model, cand_mem)
    with torch.no_grad():
        logp, mask = sequence_logprobs(model, trajs, adapter="generator")
    for b, t in enumerate(trajs):
        assert int(mask[b].sum()) == t.num_generated
        assert torch.allclose(logp[b, : t.num_generated], torch.tensor(t.logp), atol=1e-5, rtol=0)


def test_replayed_logprobs_equal_sampling_time_sampled(model, cand_mem):
    trajs = rollout(model, ["q one", "q two"], group_size=3, retriever=CandidateRetriever(cand_mem, k=1),
                    policy=SamplingPolicy(seed=3), params=RolloutParams(max_turns=2, max_turn_tokens=12))
    with torch.no_grad():
        logp, mask = sequence_logprobs(model, trajs, adapter="generator")
    got = logp[mask]
    want = torch.tensor([x for t in trajs for x in t.logp])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=0)
    # another adapter (the reference, here the bare backbone) gives different log-probs on the same tokens
    with torch.no_grad():
        ref, _ = sequence_logprobs(model, trajs, adapter=None)
    assert not torch.allclose(ref[mask], want, atol=1e-3)


def test_memory_changes_the_policy_distribution(model, cand_mem):
    """The spliced memory is really read: other memory, other log-probs of the same answer tokens."""
    trajs = _scripted(model, cand_mem)
    t = trajs[0]
    with torch.no_grad():
        a, _ = sequence_logprobs(model, [t])
        t.memory = [torch.flip(b, dims=[0]) * -1 for b in t.memory]
        b, _ = sequence_logprobs(model, [t])
    n_first_turn = len(model.tokenizer(SCRIPTS[0][0], add_special_tokens=False)["input_ids"])
    assert torch.allclose(a[0, :n_first_turn], b[0, :n_first_turn], atol=1e-6)  # before the search: same
    assert not torch.allclose(a[0, n_first_turn:], b[0, n_first_turn:], atol=1e-4)  # after it: different
