"""SCP objective and recipe on the tiny backbone: mechanics only (never quality, DESIGN §2)."""

import json
import re

import pytest
import torch

from clara.config import ClaraConfig, LoraConfig, ModelConfig, QaLayout, ScpConfig, TrainConfig
from clara.pretrain.scp import PARAPHRASE_INSTRUCTIONS, ScpExample, build_scp_model, load_examples, mean_pairwise_cosine, scp_loss, train_scp
from clara.model.prompts import QA_INSTRUCTION


def make_cfg(backbone, out, **train):
    t = dict(lr=3e-3, max_steps=4, batch_size=3, save_every=0, log_every=1, seed=0)
    t.update(train)
    return ClaraConfig(
        out_dir=str(out),
        model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8)),
        train=TrainConfig(**t),
        scp=ScpConfig(max_target_tokens=48),
    )


def examples(recs, qa_layout="lines"):
    from clara.pretrain.scp import example_from_record
    from clara.data.records import PretrainRecord

    return [example_from_record(PretrainRecord.from_json(r, "test"), ScpConfig(qa_layout=qa_layout)) for r in recs]


def test_loss_is_finite_and_both_terms_contribute(tiny_backbone, tmp_path, fresh_docs):
    model = build_scp_model(make_cfg(tiny_backbone, tmp_path))
    batch = examples(fresh_docs[:4])
    ce_only, m0 = scp_loss(model, batch, mse_weight=0.0)
    full, m1 = scp_loss(model, batch, mse_weight=0.1)
    assert torch.isfinite(full) and torch.isfinite(ce_only)
    assert m1["mse"] > 0 and m1["ce"] > 0
    assert full.item() == pytest.approx(m1["ce"] + 0.1 * m1["mse"], rel=1e-5)
    assert abs(full.item() - ce_only.item()) > 1e-4
    # the MSE term sends its own gradient to the compressor
    grads = []
    for lam in (0.0, 0.1):
        model.zero_grad(set_to_none=True)
        scp_loss(model, batch, mse_weight=lam)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.adapters.parameters("compressor") if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_scp_trains_compressor_generator_and_memory_not_query_or_base(tiny_backbone, tmp_path, fresh_docs):
    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    model = build_scp_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_scp(cfg, data, model=model)
    assert result.step == 4 and all(x is not None for x in result.losses)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    lora = lambda name: {n for n in before if f".{name}." in n and "lora_" in n}  # noqa: E731
    assert lora("compressor") and lora("compressor") <= changed
    assert {n for n in lora("generator") if "lora_B" in n} <= changed  # B starts at zero, so A's grad is 0 at step 1
    assert "mem_embed" in changed
    assert not (lora("query") & changed), "the query adapter must stay untouched"
    base = {n for n in before if "lora_" not in n and n != "mem_embed"}
    assert base and not (base & changed), sorted(base & changed)[:3]
    assert (tmp_path / "run/adapters/compressor/adapter_model.safetensors").is_file()
    # memory of different documents stays distinct
    docs = list(dict.fromkeys(r["doc"] for r in fresh_docs))
    with torch.no_grad():
        cos = mean_pairwise_cosine(model.compress(docs))
    assert cos < 0.99, cos
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all({"ce", "mse", "mem_cos"} <= r.keys() for r in rows if r.get("kind") == "train")


def test_train_adapters_compressor_keeps_the_generator_as_loaded(tiny_backbone, tmp_path, fresh_docs):
    """scp.train_adapters=[compressor]: the loss reaches the compressor through the memory and the generator
    never moves, so nothing can be learned into its weights (issue 28)."""
    import dataclasses

    from clara.errors import ConfigError

    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    cfg = dataclasses.replace(cfg, scp=dataclasses.replace(cfg.scp, train_adapters=("compressor",)))
    model = build_scp_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_scp(cfg, data, model=model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any(".compressor." in n for n in changed) and "mem_embed" in changed
    assert not any(".generator." in n or ".query." in n for n in changed), sorted(changed)[:3]
    with pytest.raises(ConfigError, match="scp.train_adapters.*subset of compressor,generator"):
        ScpConfig(train_adapters=("query",))
    with pytest.raises(ConfigError, match="scp.train_adapters.*must include generator with scp.read_text"):
        ScpConfig(train_adapters=("compressor",), read_text=True)


def test_train_adapters_generator_leaves_the_memory_as_loaded(tiny_backbone, tmp_path, fresh_docs):
    """scp.train_adapters=[generator]: neither the compressor nor the memory-token embeddings (its input, saved
    with it) move, so every document's memory is what it was (issue 28: they used to train under the MSE term)."""
    import dataclasses

    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    cfg = dataclasses.replace(cfg, scp=dataclasses.replace(cfg.scp, train_adapters=("generator",)))
    model = build_scp_model(cfg)
    assert not model.mem_embed.requires_grad
    docs = list(dict.fromkeys(r["doc"] for r in fresh_docs))
    with torch.no_grad():
        memory = model.compress(docs)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_scp(cfg, data, model=model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any(".generator." in n for n in changed)
    assert not any(".compressor." in n or ".query." in n or n == "mem_embed" for n in changed), sorted(changed)[:3]
    with torch.no_grad():
        torch.testing.assert_close(model.compress(docs), memory, rtol=0, atol=0)


def test_reference_format_records_become_examples(tmp_path):
    path = tmp_path / "ref.jsonl"
    lines = [
        {"data_type": "qa", "question": ["Who founded Brell?", "When?"], "answers": ["Tarvel Osk", "1901"],
         "docs": ["Brell was founded by Tarvel Osk in 1901."]},
        {"data_type": "paraphrase", "question": [""], "answers": ["Tarvel Osk founded Brell in 1901."],
         "docs": ["Brell was founded by Tarvel Osk in 1901."]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    qa, para = load_examples(path)
    assert qa == ScpExample("Brell was founded by Tarvel Osk in 1901.", QA_INSTRUCTION,
                            "Question: Who founded Brell?\nAnswer: Tarvel Osk\nQuestion: When?\nAnswer: 1901")
    assert para.target == "Tarvel Osk founded Brell in 1901." and para.instruction in PARAPHRASE_INSTRUCTIONS
    assert [e.instruction for e in load_examples(path, ("qa",))] == [QA_INSTRUCTION]


def test_fresh_stream_is_deterministic_and_never_repeats():
    from clara.pretrain.scp import FreshExamples

    a, b = FreshExamples(3, 40), FreshExamples(3, 40)
    assert [a[i] for i in (5, 0, 39)] == [b[i] for i in (5, 0, 39)]
    qa_docs = [a[i].doc for i in range(40) if a[i].instruction == QA_INSTRUCTION]
    assert len(qa_docs) == len(set(qa_docs)) >= 15


def test_fresh_world_ranges_reach_the_examples():
    """scp.fresh_world_ranges=300: --world-fresh examples come from the stream with a world's ranges (mentors,
    pre-1990 birth years); 0 keeps the old stream; a value below a batch's 40 entities is refused."""
    from clara.errors import ConfigError
    from clara.pretrain.scp import FreshExamples

    old, wide = (FreshExamples(3, 60, ("qa",), ScpConfig(fresh_world_ranges=n)) for n in (0, 300))
    old_targets = " ".join(old[i].target for i in range(60))
    wide_targets = " ".join(wide[i].target for i in range(60))
    assert [old[i] for i in range(5)] == [FreshExamples(3, 5, ("qa",))[i] for i in range(5)]
    assert "mentor" not in old_targets and "mentor" in wide_targets
    assert re.search(r"\b19[3-8]\d\b", wide_targets) and not re.search(r"\b19[3-8]\d\b", old_targets)
    # the config's bound is the stream's batch (a literal there: the world imports clara.config)
    from clara.world.generate import FRESH_BATCH_ENTITIES

    ScpConfig(fresh_world_ranges=FRESH_BATCH_ENTITIES)
    with pytest.raises(ConfigError, match="scp.fresh_world_ranges"):
        ScpConfig(fresh_world_ranges=FRESH_BATCH_ENTITIES - 1)


def test_shuffled_pairs_keep_every_pair_in_a_stable_order_per_document():
    from clara.pretrain.scp import FreshExamples

    def lines(e):
        return e.target.split("\n")

    fixed, shuffled, again = (FreshExamples(3, 30, ("qa",), ScpConfig(qa_layout=s)) for s in ("lines", "shuffled", "shuffled"))
    firsts_shuffled = set()
    for i in range(30):
        a, b = fixed[i], shuffled[i]
        assert a.doc == b.doc and b == again[i]  # same documents; the order is a function of the record
        pairs_a = set(zip(lines(a)[0::2], lines(a)[1::2]))
        assert pairs_a == set(zip(lines(b)[0::2], lines(b)[1::2])) and len(pairs_a) >= 4
        firsts_shuffled.add(lines(b)[0])
    # the teacher's order puts the same kind of fact first; shuffled, the first pair varies
    assert sum(a != b for a, b in ((fixed[i].target, shuffled[i].target) for i in range(30))) >= 25
    assert len(firsts_shuffled) == 30


def test_rows_layout_gives_one_row_per_pair_in_the_eval_form():
    from clara.pretrain.scp import FreshExamples

    lines, rows = (FreshExamples(3, 20, ("qa",), ScpConfig(qa_layout=s)) for s in ("lines", "rows"))
    for i in range(20):
        a, b = lines[i], rows[i]
        assert a.doc == b.doc and a.target == b.target and a.targets == (a.target,)
        assert "\n".join(b.targets) == a.target and len(b.targets) >= 4  # every pair, none cut
        assert all(t.startswith("Question: ") and t.count("\nAnswer: ") == 1 for t in b.targets)
    two, again = (FreshExamples(3, 20, ("qa",), ScpConfig(qa_layout=QaLayout.ROWS, rows_per_document=2)) for _ in range(2))
    picked = [two[i].targets for i in range(20)]
    assert picked == [again[i].targets for i in range(20)]  # a stable draw per document
    assert all(len(p) == 2 and set(p) <= set(rows[i].targets) for i, p in enumerate(picked))
    assert len({p[0].split("\n")[0].split()[1] for p in picked}) >= 3  # different kinds of fact come first


def test_a_file_trains_every_pair_once_an_epoch_in_groups_of_rows_per_document(tmp_path):
    # 5 pairs, n = 2: three examples (2 + 2 + 1 rows), each pair in exactly one, the document the same in all.
    # One draw per record would train the same 2 pairs every epoch (issue 28's capacity test: 38 of 128 facts).
    doc = "Brell was founded by Tarvel Osk in 1901. It has 300 people, a mill, and a river called Osk."
    pairs = [("Who founded Brell?", "Tarvel Osk"), ("When was Brell founded?", "1901"), ("How many people?", "300"),
             ("What does Brell have?", "a mill"), ("What is the river called?", "Osk")]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"data_type": "qa", "id": "brell", "docs": [doc], "question": [q for q, _ in pairs],
                                "answers": [a for _, a in pairs]}) + "\n")
    got = load_examples(path, ("qa",), scp=ScpConfig(qa_layout=QaLayout.ROWS, rows_per_document=2))
    assert [len(e.rows) for e in got] == [2, 2, 1] and {e.doc for e in got} == {doc}
    rows = [r for e in got for r in e.rows]
    assert sorted(rows) == sorted(f"Question: {q}\nAnswer: {a}" for q, a in pairs)
    assert load_examples(path, ("qa",), scp=ScpConfig(qa_layout=QaLayout.ROWS, rows_per_document=2)) == got  # stable
    assert [len(e.rows) for e in load_examples(path, ("qa",), scp=ScpConfig(qa_layout=QaLayout.ROWS))] == [5]


def test_rows_per_document_is_refused_outside_the_rows_layout():
    from clara.errors import ConfigError

    assert ScpConfig(qa_layout=QaLayout.ROWS, rows_per_document=2).rows_per_document == 2
    with pytest.raises(ConfigError, match="scp.rows_per_document.*rows only, not lines"):
        ScpConfig(rows_per_document=2)


def test_rows_layout_loss_is_the_token_mean_over_every_pair_from_one_compression(tiny_backbone, tmp_path, fresh_docs):
    model = build_scp_model(make_cfg(tiny_backbone, tmp_path))
    model.eval()
    qa = [r for r in fresh_docs if r.get("data_type") == "qa"][:3]
    batch = examples(qa, "rows")
    loss, m = scp_loss(model, batch, mse_weight=0.0, max_target_tokens=256)  # no row is cut
    # by hand: each row's summed NLL from its own document's memory, over all rows' tokens
    with torch.no_grad():
        mem = model.compress([e.doc for e in batch])
        total, tokens = 0.0, 0
        for i, e in enumerate(batch):
            for t in e.targets:
                total += float(model.generator_loss([e.instruction], mem[i : i + 1, None], [t], reduction="sum",
                                                    max_answer_len=256)[0])
                tokens += len(model._answer_ids(t, 256))
    assert loss.item() == pytest.approx(total / tokens, rel=1e-4)
    assert m["tokens"] == sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for e in batch for t in e.targets)
    lines_loss, _ = scp_loss(model, examples(qa), mse_weight=0.0)
    assert abs(lines_loss.item() - loss.item()) > 1e-4  # a different objective from the lines target


def test_answer_only_loss_is_the_mean_over_answer_tokens_after_the_asked_question(tiny_backbone, tmp_path, fresh_docs):
    """scp.answer_only: each row's reply is forced up to "Answer:" (as evaluation asks) and only the answer
    and its end are targets."""
    from clara.pretrain.scp import split_reply

    assert split_reply("Question: Who?\nAnswer: Ada Lee") == ("Question: Who?\nAnswer:", "Ada Lee")
    assert split_reply("A paraphrase.") == ("", "A paraphrase.")
    model = build_scp_model(make_cfg(tiny_backbone, tmp_path))
    model.eval()
    batch = examples([r for r in fresh_docs if r.get("data_type") == "qa"][:3], "rows")
    loss, m = scp_loss(model, batch, mse_weight=0.0, max_target_tokens=256, answer_only=True)
    with torch.no_grad():
        mem = model.compress([e.doc for e in batch])
        total, tokens = 0.0, 0
        for i, e in enumerate(batch):
            for t in e.targets:
                prefix, answer = split_reply(t)
                total += float(model.generator_loss([e.instruction], mem[i : i + 1, None], [answer], reduction="sum",
                                                    max_answer_len=256, reply_prefixes=[prefix])[0])
                tokens += len(model._prefixed_answer_ids(prefix, answer, 256)[1])
    assert loss.item() == pytest.approx(total / tokens, rel=1e-4)
    assert m["tokens"] == sum(len(model.tokenizer(split_reply(t)[1], add_special_tokens=False)["input_ids"])
                              for e in batch for t in e.targets)
    whole, _ = scp_loss(model, batch, mse_weight=0.0, max_target_tokens=256)
    assert abs(whole.item() - loss.item()) > 1e-4


def test_answer_only_is_refused_outside_the_rows_layout():
    from clara.errors import ConfigError

    assert ScpConfig(qa_layout=QaLayout.ROWS, answer_only=True).answer_only
    with pytest.raises(ConfigError, match="scp.answer_only.*rows only, not lines"):
        ScpConfig(answer_only=True)


def test_reconstruction_targets_are_each_document_once_from_a_file_and_the_fresh_stream(tmp_path, fresh_docs):
    """scp.data_types reconstruction (issue 28 lever (a)): the document itself is the target."""
    from clara.errors import ConfigError
    from clara.pretrain.scp import RECONSTRUCTION_INSTRUCTION, FreshExamples

    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    docs = list(dict.fromkeys(r["docs"][0] if "docs" in r else r["doc"] for r in fresh_docs))
    got = load_examples(path, ("reconstruction",))
    assert [(e.doc, e.instruction, e.target) for e in got] == [(d, RECONSTRUCTION_INSTRUCTION, d) for d in docs]
    both = load_examples(path, ("qa", "reconstruction"))
    assert len(both) == len(got) + sum(r.get("data_type") == "qa" for r in fresh_docs)
    fresh = FreshExamples(5, 6, ("reconstruction", "qa"))
    assert [e.instruction for e in fresh[:4]] == [RECONSTRUCTION_INSTRUCTION, QA_INSTRUCTION] * 2
    assert fresh[0].target == fresh[0].doc == fresh[1].doc != fresh[2].doc
    only = FreshExamples(5, 2, ("reconstruction",))
    assert [e.doc for e in only[:2]] == [fresh[0].doc, fresh[2].doc]  # one document each, in stream order
    with pytest.raises(ConfigError, match="scp.data_types.*qa,paraphrase,reconstruction"):
        ScpConfig(data_types=("summary",))


def test_read_text_control_trains_the_generator_on_documents_as_text_and_leaves_the_compressor(tiny_backbone, tmp_path, fresh_docs):
    """scp.read_text (the capacity test's text-LoRA control): the generator reads each document as text."""
    import dataclasses

    from clara.errors import ConfigError
    from clara.pretrain.scp import text_control_loss

    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    cfg = dataclasses.replace(cfg, scp=ScpConfig(max_target_tokens=48, qa_layout=QaLayout.ROWS, read_text=True,
                                                 data_types=("qa",)))
    model = build_scp_model(cfg)
    model.eval()
    batch = examples([r for r in fresh_docs if r.get("data_type") == "qa"][:2], "rows")
    loss, m = text_control_loss(model, batch, 48)
    with torch.no_grad():
        rows = [(e, t) for e in batch for t in e.targets]
        tl, _, _ = model.generator_pass([e.instruction for e, _ in rows], None, [t for _, t in rows],
                                        max_answer_len=48, documents=[e.doc for e, _ in rows])
        from_memory, _ = scp_loss(model, batch, mse_weight=0.0, max_target_tokens=48)
    assert loss.item() == pytest.approx(tl.mean().item(), rel=1e-5) and set(m) == {"ce", "tokens"}
    assert abs(loss.item() - from_memory.item()) > 1e-4  # the text, not the memory, is read
    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_scp(cfg, data, model=model)
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any(".generator." in n for n in changed)
    assert not any(".compressor." in n for n in changed) and "mem_embed" not in changed
    with pytest.raises(ConfigError, match="scp.read_text.*neither"):
        ScpConfig(read_text=True, contrastive_weight=0.1)


def test_infonce_matches_hand_values_and_ranks_own_document_first():
    from clara.pretrain.scp import memory_text_infonce

    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    mem = text[:, None].expand(3, 2, 3).clone()  # every slot of document i equals its text mean
    loss, acc = memory_text_infonce(mem, text, temperature=0.5)
    # centred rows of the identity: cos = 1 on the diagonal and -1/2 off it, so each row's softmax is
    # exp(2) / (exp(2) + 2·exp(-1)) in both directions
    expected = -torch.log(torch.exp(torch.tensor(2.0)) / (torch.exp(torch.tensor(2.0)) + 2 * torch.exp(torch.tensor(-1.0))))
    assert acc == 1.0 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # memory of the wrong documents: every row picks another document's text
    shuffled, acc_wrong = memory_text_infonce(mem[[1, 2, 0]], text, temperature=0.5)
    assert acc_wrong == 0.0 and shuffled.item() > loss.item() + 2
    # a large shared direction changes nothing: the batch centring removes it
    shifted, _ = memory_text_infonce(mem + 100.0, text + 50.0, temperature=0.5)
    assert shifted.item() == pytest.approx(loss.item(), rel=1e-4)


def test_contrastive_term_adds_to_the_loss_and_reaches_the_compressor(tiny_backbone, tmp_path, fresh_docs):
    model = build_scp_model(make_cfg(tiny_backbone, tmp_path))
    batch = examples(fresh_docs[:8])
    assert len({e.doc for e in batch}) >= 3
    grads, metrics = [], []
    for w in (0.0, 0.5):
        model.zero_grad(set_to_none=True)
        loss, m = scp_loss(model, batch, mse_weight=0.1, contrastive_weight=w)
        loss.backward()
        metrics.append((loss.item(), m))
        grads.append(torch.cat([p.grad.flatten() for p in model.adapters.parameters("compressor") if p.grad is not None]))
    (plain, m0), (full, m1) = metrics
    assert "nce" not in m0 and 0 <= m1["nce_acc"] <= 1 and m1["nce"] > 0
    assert full == pytest.approx(m1["ce"] + 0.1 * m1["mse"] + 0.5 * m1["nce"], rel=1e-5)
    assert not torch.allclose(grads[0], grads[1])


def test_contrastive_scp_training_lowers_the_term(tiny_backbone, tmp_path, fresh_docs):
    """A short run with the contrastive term logs its in-batch accuracy, and afterwards the term on the
    documents is lower than after the same run without it (same seed, same data): training optimises it."""
    import dataclasses

    from clara.pretrain.scp import memory_text_infonce

    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    docs = list(dict.fromkeys(r["doc"] for r in fresh_docs))
    nce = {}
    for w in (0.0, 1.0):
        cfg = make_cfg(tiny_backbone, tmp_path / f"run{w}", max_steps=8, batch_size=6)
        cfg = dataclasses.replace(cfg, scp=dataclasses.replace(cfg.scp, contrastive_weight=w))
        model = build_scp_model(cfg)
        train_scp(cfg, data, model=model)
        with torch.no_grad():
            nce[w] = memory_text_infonce(*model.compress(docs, return_text_mean=True))[0].item()
        rows = [json.loads(x) for x in (tmp_path / f"run{w}/metrics.jsonl").read_text().splitlines()]
        train_rows = [r for r in rows if r.get("kind") == "train"]
        assert train_rows and all(("nce_acc" in r) == bool(w) for r in train_rows)
    assert nce[1.0] < 0.5 * nce[0.0], nce


def test_scp_saves_what_it_trains_and_a_loaded_query_reasoner_is_the_compressor(tiny_backbone, tmp_path, fresh_docs):
    """Stage 1 saves compressor + generator only; loading them (e.g. `clara eval retrieval` before joint
    training) makes the query reasoner a copy of the compressor, as joint training starts — not the
    untrained query LoRA, which is the bare backbone."""
    from clara.model.clara_model import ClaraModel

    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run", max_steps=2)
    train_scp(cfg, data, model=build_scp_model(cfg))
    adapters = tmp_path / "run/adapters"
    assert json.loads((adapters / "clara_model.json").read_text())["adapters"] == ["compressor", "generator"]
    assert not (adapters / "query").exists()
    model = ClaraModel.from_config(cfg.model, seed=123)  # another seed: a query LoRA unlike the compressor's
    docs = list(dict.fromkeys(r["doc"] for r in fresh_docs))[:3]
    with torch.no_grad():
        untrained = model.encode_query(docs)
        model.load_adapters(adapters)
        assert torch.equal(model.encode_query(docs), model.compress(docs))
        assert not torch.allclose(untrained, model.encode_query(docs))


def test_kv_readout_trains_through_keys_and_values_and_aligns_the_states(tiny_backbone, tmp_path, fresh_docs):
    """model.memory_readout=kv: SCP's generator reads every layer's keys and values; the alignment term and
    mem_cos read the states part, and the training run saves adapters that rebuild as a kv model."""
    import dataclasses

    from clara.model.loading import load_trained_model

    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, memory_readout="kv"))
    model = build_scp_model(cfg)
    loss, m = scp_loss(model, examples(fresh_docs[:4]), mse_weight=0.1)
    assert loss.item() == pytest.approx(m["ce"] + 0.1 * m["mse"], rel=1e-5) and 0 < m["mem_cos"] <= 1
    result = train_scp(cfg, data, model=model)
    assert result.step == 4 and all(x is not None for x in result.losses)
    loaded = load_trained_model(tmp_path / "run", precision="fp32")
    assert loaded.memory_readout.value == "kv"
