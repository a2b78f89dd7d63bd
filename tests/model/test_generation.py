"""Generation from inputs_embeds with a KV cache matches Hugging Face generate token for token."""

import pytest
import torch

from clara.model.generation import SamplingParams, generate_from_embeds, pick_next_token, yield_points
from clara.model.memory import left_pad

PROMPTS = ["Where was Kalo born?", "The museum of Mira is 300 years old, said Selad. Who said it?", "Age?"]


def hf_greedy(model, ids, mask, n):
    out = model.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                            eos_token_id=None, pad_token_id=model.pad_id)
    return out[:, ids.shape[1]:].tolist()


@pytest.mark.parametrize("batch", [[0], [0, 1, 2]], ids=["one", "mixed-lengths"])
def test_greedy_from_embeds_equals_generate_from_ids(model, batch):
    rows = [model.prompt_ids(PROMPTS[i], 0) for i in batch]
    ids, mask = left_pad(rows, model.pad_id)
    params = SamplingParams(max_new_tokens=12)  # no eos: always 12 tokens, like eos_token_id=None
    with model.using("generator"), torch.no_grad():
        ours = generate_from_embeds(model.lm, model.lm.get_input_embeddings()(ids), mask, params)
        theirs = hf_greedy(model, ids, mask, 12)
    assert ours == theirs
    assert all(len(r) == 12 for r in ours)


def test_yield_points_chunk_the_prompt_and_call_back_after_every_forward(model):
    rows = [model.prompt_ids(p, 0) for p in PROMPTS]  # mixed lengths: the short rows' first chunks are all padding
    ids, mask = left_pad(rows, model.pad_id)
    params = SamplingParams(max_new_tokens=6)
    calls = []
    with model.using("generator"), torch.no_grad():
        embeds = model.lm.get_input_embeddings()(ids)
        whole = generate_from_embeds(model.lm, embeds, mask, params)
        with yield_points(lambda: calls.append(1), prefill_tokens=len(rows) * 4):  # 4 positions a row per chunk
            chunked = generate_from_embeds(model.lm, embeds, mask, params)
        assert generate_from_embeds(model.lm, embeds, mask, params) == whole  # no calls: the context is over
    assert chunked == whole
    chunks = -(-ids.shape[1] // 4)
    assert len(calls) == chunks + 5  # after every prompt chunk and each of the 5 later forwards


def test_batched_generate_equals_one_at_a_time(model):
    mem = model.compress(PROMPTS).detach()[:, None]  # (3, 1, m, H)
    batched = model.generate(PROMPTS, mem, max_new_tokens=10)
    alone = [model.generate([p], mem[i : i + 1], max_new_tokens=10)[0] for i, p in enumerate(PROMPTS)]
    assert batched == alone
    assert model.adapters.active == "compressor" and model.training  # generate restores both


def test_memory_changes_the_next_token_distribution(model):
    mem = model.compress(PROMPTS).detach()[:, None]  # (3, 1, m, H)
    logits = []
    for i in range(2):
        embeds, mask = model.build_generator_inputs(PROMPTS[:1], mem[i : i + 1])
        with model.using("generator"), torch.no_grad():
            logits.append(model.lm(inputs_embeds=embeds, attention_mask=mask).logits[0, -1])
    assert (logits[0] - logits[1]).abs().max() > 1e-4


def test_sampling_is_seeded_and_stop_strings_cut_the_text(model):
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
    first = model.generate(PROMPTS, None, seed=7, **kw)
    assert first == model.generate(PROMPTS, None, seed=7, **kw)
    assert first != model.generate(PROMPTS, None, seed=8, **kw)
    text = max(first, key=len)
    # a two-character stop string from the middle, clear of undecodable-byte marks
    starts = [i for i in range(len(text) // 2, len(text) - 1) if "\ufffd" not in text[i : i + 2]]
    assert starts, text
    stop = text[starts[0] : starts[0] + 2]
    cut = model.generate(PROMPTS, None, seed=7, stop=[stop], **kw)
    for full, short in zip(first, cut):
        i = full.find(stop)
        assert short == (full if i < 0 else full[:i])


def test_tiny_top_p_is_greedy_and_banned_tokens_never_appear(model):
    logits = torch.randn(4, 50)
    params = SamplingParams(temperature=1.0, top_p=1e-6)
    torch.testing.assert_close(pick_next_token(logits, params, None), logits.argmax(-1))
    logits[:, 7] = 100.0
    banned = SamplingParams(banned_ids=(7,))
    assert not bool((pick_next_token(logits, banned, None) == 7).any())


def test_eos_stops_a_row_and_is_dropped(model):
    ids, mask = left_pad([model.prompt_ids(p, 0) for p in PROMPTS[:2]], model.pad_id)
    embeds = model.lm.get_input_embeddings()(ids)
    with torch.no_grad():
        free = generate_from_embeds(model.lm, embeds, mask, SamplingParams(max_new_tokens=6))
        eos = free[0][2]  # pretend the third token of row 0 ends the sequence
        stopped = generate_from_embeds(model.lm, embeds, mask, SamplingParams(max_new_tokens=6, eos_ids=(eos,)))
    assert stopped[0] == free[0][: free[0].index(eos)]
    assert len(stopped[0]) <= 2


def test_reply_prefix_continues_after_the_forced_start(model):
    prefix = "Question: Where was Kalo born?\nAnswer:"
    ours = model.generate(PROMPTS[:1], None, max_new_tokens=8, reply_prefixes=[prefix])
    ids, mask = left_pad([model.prompt_ids(PROMPTS[0], 0) + model.tokenizer.encode(prefix, add_special_tokens=False)],
                         model.pad_id)  # fmt: skip
    with model.using("generator"), torch.no_grad():
        rows = generate_from_embeds(model.lm, model.lm.get_input_embeddings()(ids), mask,
                                    SamplingParams(max_new_tokens=8, eos_ids=model.eos_ids, banned_ids=model.tokens.all_ids))  # fmt: skip
    assert ours == [model.tokenizer.decode(rows[0], skip_special_tokens=True)]
    assert ours != model.generate(PROMPTS[:1], None, max_new_tokens=8)  # the prefix changed the reply
