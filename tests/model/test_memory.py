"""Memory tokens, batching and splicing: batched equals per-item, slots are filled in order."""

import pytest
import torch

from clara.model.memory import SLOT_TOKEN, left_pad, rescale_to_rms, splice_memory

DOCS = ["Kalo.", "Kalo was born in Venra and studied physics at the school of Mira in 1802.",
        "", "The museum of Mira is 300 years old, said Selad."]


def test_memory_tokens_are_distinct_special_tokens(model):
    tok = model.tokenizer
    names = [f"<MEM{i}>" for i in range(model.num_mem)] + [SLOT_TOKEN]
    ids = tok.convert_tokens_to_ids(names)
    assert len(set(ids)) == len(names) == model.num_mem + 1
    assert tok("".join(names), add_special_tokens=False)["input_ids"] == ids  # never split by BPE
    assert model.lm.get_input_embeddings().weight.shape[0] >= len(tok)
    assert model.num_mem == 4 and model.hidden_size == 128


def test_batched_compress_equals_per_item(model):
    with torch.no_grad():
        batched = model.compress(DOCS)  # (4, m, H), mixed lengths incl. empty
        single = torch.cat([model.compress([d]) for d in DOCS])
        q_batched = model.encode_query(DOCS)
        q_single = torch.cat([model.encode_query([d]) for d in DOCS])
    assert batched.shape == (len(DOCS), model.num_mem, model.hidden_size)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(q_batched, q_single, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])  # different documents, different memory


def test_documents_are_truncated_to_chunk_len(model):
    long_doc = " ".join(["Kalo was born in Venra."] * 40)
    ids = model.tokenizer(long_doc, add_special_tokens=False)["input_ids"]
    assert len(ids) > model.chunk_len
    head = model.tokenizer.decode(ids[: model.chunk_len])
    assert model.tokenizer(head, add_special_tokens=False)["input_ids"] == ids[: model.chunk_len]
    with torch.no_grad():
        torch.testing.assert_close(model.compress([long_doc]), model.compress([head]), atol=1e-5, rtol=1e-4)


def test_text_mean_excludes_memory_and_padding(model):
    with torch.no_grad():
        mem, mean = model.compress(DOCS[:2], return_text_mean=True)
        _, mean_alone = model.compress(DOCS[1:2], return_text_mean=True)
    assert mean.shape == (2, model.hidden_size)
    torch.testing.assert_close(mean[1], mean_alone[0], atol=1e-5, rtol=1e-4)


def test_splice_fills_slots_in_order_and_keeps_gradient():
    ids, _ = left_pad([[5, 9, 9, 6, 9], [9, 7, 9, 9]], pad_id=0)  # slot id 9, three slots per row
    embeds = torch.zeros(2, 5, 3)
    memory = torch.arange(18, dtype=torch.float).reshape(2, 3, 3).requires_grad_()
    out = splice_memory(embeds, ids, 9, memory)
    torch.testing.assert_close(out[0, [1, 2, 4]], memory[0])
    torch.testing.assert_close(out[1, [1, 3, 4]], memory[1])
    assert float(out[0, 3].detach().abs().sum()) == 0.0
    out.sum().backward()
    assert torch.equal(memory.grad, torch.ones_like(memory))
    with pytest.raises(ValueError, match="memory slots"):
        splice_memory(embeds, ids, 9, memory[:, :2])


def test_rescale_sets_every_vector_to_target_rms():
    x = torch.randn(2, 5, 64) * 45.0
    y = rescale_to_rms(x, 0.03)
    torch.testing.assert_close(y.pow(2).mean(-1).sqrt(), torch.full((2, 5), 0.03), atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(torch.nn.functional.normalize(y, dim=-1), torch.nn.functional.normalize(x, dim=-1))


def test_generator_inputs_hold_rescaled_memory_at_the_slots(model):
    mem = model.compress(DOCS[:2]).detach() * 45.0  # (2, m, H), far larger than token embeddings
    blocks = torch.stack([mem, mem.flip(0)], dim=1)  # (2, k=2, m, H)
    embeds, mask = model.build_generator_inputs(["Where was Kalo born?", "Age?"], blocks)
    ids, _ = left_pad([model.prompt_ids(q, 2) for q in ["Where was Kalo born?", "Age?"]], model.pad_id)
    slots = ids == model.tokens.slot_id  # (B, T)
    assert int(slots.sum()) == 2 * 2 * model.num_mem
    spliced = embeds[slots].reshape(2, 2 * model.num_mem, -1)
    rms = spliced.pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, model.embed_rms), rtol=1e-4, atol=1e-6)
    token_rms = model.lm.get_input_embeddings().weight[:100].pow(2).mean(-1).sqrt().mean()
    assert 0.5 < float(rms.mean() / token_rms) < 2.0
    torch.testing.assert_close(  # block order is kept: row 0 = [doc0, doc1]
        torch.nn.functional.normalize(spliced[0, model.num_mem:], dim=-1),
        torch.nn.functional.normalize(mem[1], dim=-1))
    assert mask.shape == embeds.shape[:2] and int(mask[1].sum()) < mask.shape[1]  # row 1 is left-padded


def test_generator_loss_counts_answer_tokens_only(model):
    questions, answers = ["Where was Kalo born?", "Age of the museum of Mira?"], ["Venra", "300 years"]
    mem = model.compress(DOCS[1:3]).detach()[:, None]  # (2, 1, m, H)
    per_row = model.generator_loss(questions, mem, answers, reduction="none")  # (2,)
    # reference: the full HF causal-LM loss with -100 everywhere except the answer (+eos)
    for i in range(2):
        prompt = model.prompt_ids(questions[i], 1)
        target = model.tokenizer(answers[i], add_special_tokens=False)["input_ids"] + [model.eos_ids[0]]
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        embeds = model._splice(ids, mem[i : i + 1])
        with model.using("generator"):
            ref = model.lm(inputs_embeds=embeds, labels=labels).loss
        torch.testing.assert_close(per_row[i], ref, atol=1e-5, rtol=1e-4)
    mean = model.generator_loss(questions, mem, answers)
    assert 0 < mean.item() < 20


def test_reply_prefix_carries_no_loss_and_the_answer_continues_it(model):
    """With reply prefixes the loss is the answer's NLL after the forced ``Question: q\nAnswer:``, the
    reply tokenised as one text (as SCP's rows train it); the prefix tokens carry no loss."""
    from clara.model.prompts import QA_INSTRUCTION, ask

    questions, answers = ["Where was Kalo born?", "Age of the museum of Mira?"], ["Venra", "300 years"]
    mem = model.compress(DOCS[1:3]).detach()[:, None]  # (2, 1, m, H)
    inputs, prefixes = ask(questions, "scp")
    assert inputs == [QA_INSTRUCTION] * 2 and prefixes[0] == "Question: Where was Kalo born?\nAnswer:"
    assert ask(questions, "direct") == (questions, None)
    per_row = model.generator_loss(inputs, mem, answers, reduction="sum", reply_prefixes=prefixes)  # (2,)
    for i in range(2):
        prompt = model.prompt_ids(QA_INSTRUCTION, 1)
        reply = model.tokenizer(f"{prefixes[i]} {answers[i]}", add_special_tokens=False)["input_ids"]
        n = len(model.tokenizer(prefixes[i], add_special_tokens=False)["input_ids"])
        assert model.tokenizer.decode(reply[n:]).strip() == answers[i]  # the split falls between prefix and answer
        ids = torch.tensor([prompt + reply + [model.eos_ids[0]]])
        labels = torch.tensor([[-100] * (len(prompt) + n) + reply[n:] + [model.eos_ids[0]]])
        embeds = model._splice(ids, mem[i : i + 1])
        with model.using("generator"):
            ref = model.lm(inputs_embeds=embeds, labels=labels).loss * (len(reply) - n + 1)  # mean -> sum
        torch.testing.assert_close(per_row[i], ref, atol=1e-4, rtol=1e-4)
    whole = model.generator_loss(inputs, mem, [f"{p} {a}" for p, a in zip(prefixes, answers)], reduction="sum")
    assert (whole > per_row).all()  # the prefix's own tokens are not in the loss


def test_generator_reads_memory_and_rescale_makes_scale_irrelevant(model):
    questions, answers = ["Where was Kalo born?"], ["Venra"]
    mem = model.compress(DOCS[1:2]).detach()[:, None]  # (1, 1, m, H)
    other = model.compress(DOCS[3:4]).detach()[:, None]
    base = model.generator_loss(questions, mem, answers)
    assert not torch.allclose(base, model.generator_loss(questions, other, answers))
    torch.testing.assert_close(base, model.generator_loss(questions, mem * 45.0, answers))


def test_open_book_pass_puts_the_document_where_memory_goes_and_its_states_align(model):
    """generator_pass with ``documents``: the same prompt as with one memory block, the document's text in
    place of the slots; states come at the positions that predict the answer, row-major, as token_loss."""
    question, answers = "Where was Kalo born?", ["Venra", "300 years"]
    slots = model.tokenizer.decode(model.prompt_ids(question, 1))
    text = model.tokenizer.decode(model.prompt_ids(question, 0, DOCS[1]))
    assert text.replace(DOCS[1], SLOT_TOKEN * model.num_mem) == slots
    with pytest.raises(ValueError, match="either memory slots or a document"):
        model.prompt_ids(question, 1, DOCS[1])
    mem = model.compress(DOCS[1:3]).detach()[:, None]  # (2, 1, m, H)
    L = model.lm.config.num_hidden_layers
    with torch.no_grad():
        by_mem = model.generator_pass([question] * 2, mem, answers, states_at=(0, L))
        by_text = model.generator_pass([question] * 2, None, answers, documents=DOCS[1:3], states_at=(0, L))
        with pytest.raises(ValueError, match="no mem_blocks"):
            model.generator_pass([question] * 2, mem, answers, documents=DOCS[1:3])
    n = sum(len(model.tokenizer(a, add_special_tokens=False)["input_ids"]) + 1 for a in answers)  # + eos each
    for loss, rows, states in (by_mem, by_text):
        assert loss.shape == rows.shape == (n,) and [s.shape for s in states] == [(n, model.hidden_size)] * 2
        assert rows.tolist() == sorted(rows.tolist()) and set(rows.tolist()) == {0, 1}
        # the last hidden state is what the loss projects: its logits give token_loss back
        logits = model.lm.get_output_embeddings()(states[1])
        target = torch.cat([torch.tensor(model.tokenizer(a, add_special_tokens=False)["input_ids"] + [model.eos_ids[0]])
                            for a in answers])
        torch.testing.assert_close(torch.nn.functional.cross_entropy(logits, target, reduction="none"), loss)
    # index 0 is the embedding of the token before each answer token: the same in both views
    torch.testing.assert_close(by_mem[2][0], by_text[2][0])
    assert not torch.allclose(by_mem[2][1], by_text[2][1])  # the last layer has read different contexts
