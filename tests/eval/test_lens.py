"""Logit lens: projection through final norm + tied LM head, tables, heatmaps, compare mode, CLI."""

import argparse
import json

import pytest
import torch

from clara.config import LoraConfig, ModelConfig
from clara.errors import ConfigError
from clara.eval import lens_cli
from clara.eval.lens import (
    decoder_layers,
    excluded_ids,
    final_norm,
    format_lens_table,
    lens_overlap,
    other_kind_targets,
    wrong_targets,
    logit_lens,
    memory_states,
    output_head,
    parse_layers,
    project,
)
from clara.eval.lens import _token_words, _union_top_ids

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))  # m = 4 slots
    m = ClaraModel.from_config(cfg)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # distinct adapters, so the query lens differs from the bare backbone
        for name in m.adapters.names:
            for p in m.adapters.parameters(name):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


@pytest.fixture(scope="module")
def adapters_dir(model, tmp_path_factory):
    return model.save_adapters(tmp_path_factory.mktemp("run") / "adapters")


def run_cli(argv):
    parser = argparse.ArgumentParser(prog="clara")
    lens_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def word_tokens(model, n):
    """n ordinary (non-special) token ids that decode to letters."""
    banned = set(excluded_ids(model))
    ids = [i for i in range(len(model.tokenizer)) if i not in banned and model.tokenizer.decode([i]).strip().isalpha()]
    return ids[50 : 50 + n]


def test_memory_state_equal_to_a_token_embedding_decodes_to_that_token(model):
    lm, m = model.lm, model.num_mem
    emb, head, norm = lm.get_input_embeddings(), output_head(lm), final_norm(lm)
    assert head.weight.data_ptr() == emb.weight.data_ptr()  # tied embeddings
    targets = word_tokens(model, m)
    saved = norm.weight.detach().clone()
    g = torch.Generator().manual_seed(1)
    last = decoder_layers(lm)[-1]
    with torch.no_grad():
        # far from identity, with mixed signs: skipping (or repeating) the norm scrambles the direction
        sign = torch.randint(0, 2, norm.weight.shape, generator=g) * 2 - 1
        norm.weight.copy_(sign * (torch.rand(norm.weight.shape, generator=g) + 0.5))
        # RMSNorm(x) = w * x / rms(x): a state e_t / w comes out of the norm as e_t / rms, ∝ e_t
        states = emb.weight[targets] / norm.weight  # (m, H)

    def force_memory(module, args, output):
        output = output.clone()
        output[:, -m:] = states.to(output.dtype)  # the last block's output at the memory positions
        return output

    handle = last.register_forward_hook(force_memory)
    try:
        res = logit_lens(model, "Where was Kalora born?", "query", "last", top=1)
        with torch.no_grad():  # the same states read *without* the norm decode to other tokens
            skipped = project(states, norm, head, excluded_ids(model), normed=True).argmax(-1).tolist()
            twice = project(norm(states), norm, head, excluded_ids(model)).argmax(-1).tolist()
    finally:
        handle.remove()
        with torch.no_grad():
            norm.weight.copy_(saved)
    assert [slot[0] for slot in res.top_ids[0]] == targets
    assert res.tokens[0][0][0] == model.tokenizer.decode([targets[0]]).strip()
    # so this test catches a lens that forgets the final norm, or applies it to already-normed states
    assert sum(a == b for a, b in zip(skipped, targets)) <= 1 and sum(a == b for a, b in zip(twice, targets)) <= 1


def test_last_layer_states_are_the_encoder_output_and_memory_tokens_are_never_decoded(model):
    texts = ["Where was Kalora born?", "Briven founded the museum of Lumtor in 1850."]
    states = memory_states(model, texts, "compressor")  # (B, L+1, m, H)
    assert states.shape == (2, len(decoder_layers(model.lm)) + 1, model.num_mem, model.hidden_size)
    with torch.no_grad():
        mem = model.compress(texts)
        assert torch.allclose(final_norm(model.lm)(states[:, -1]), mem, atol=1e-5)
        # unmasked, the memory rows (mean of the vocabulary) would take part in the softmax
        probs = project(states[:, -1], final_norm(model.lm), output_head(model.lm), excluded_ids(model))
    assert probs[..., list(model.tokens.all_ids)].abs().max() == 0
    assert torch.allclose(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-4)


def test_parse_layers():
    assert parse_layers("all", 3) == [0, 1, 2, 3]
    assert parse_layers(None, 3) == parse_layers("last", 3) == [3]
    assert parse_layers("0,2,-1", 3) == [0, 2, 3]
    with pytest.raises(ConfigError, match="out of range"):
        parse_layers("5", 3)


def test_lens_table_and_heatmap_png_on_tiny_model(model, tmp_path):
    import matplotlib.image as mpimg

    from clara.eval.plots import plot_lens_heatmap

    res = logit_lens(model, "Briven founded the museum of Lumtor in 1850.", "compressor", "all", top=3)
    n_layers = len(decoder_layers(model.lm)) + 1
    assert res.layers == list(range(n_layers)) and res.num_slots == model.num_mem
    assert [len(layer) for layer in res.tokens] == [model.num_mem] * n_layers
    assert all(len(slot) == 3 for layer in res.top_ids for slot in layer)
    assert not {i for layer in res.top_ids for slot in layer for i in slot} & set(model.tokens.all_ids)
    assert all(p1 >= p2 for layer in res.top_probs for slot in layer for p1, p2 in zip(slot, slot[1:]))
    table = format_lens_table(res).splitlines()
    assert len(table) == 2 + n_layers and table[0].count("slot ") == model.num_mem
    assert all(row.count(" | ") == model.num_mem for row in table[2:])
    png = plot_lens_heatmap(res, tmp_path / "lens.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = mpimg.imread(png)  # (height, width, channels)
    assert image.shape[0] >= 200 and image.shape[1] >= 400


def test_lens_cli_question_and_document(model, adapters_dir, tiny_backbone, tmp_path, capsys):
    png, out = tmp_path / "q.png", tmp_path / "q.json"
    assert run_cli(["lens", "--model", str(adapters_dir), "question", "Where was Kalora born?",
                    "--layers", "0,-1", "--top", "2", "--png", str(png), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "logit lens (query)" in text and "| last |" in text and "| emb |" in text
    saved = json.loads(out.read_text())
    assert saved["adapter"] == "query" and saved["layers"] == [0, 2] and png.read_bytes()[:8] == PNG_MAGIC
    # the query lens really reads the query adapter: the compressor's lens of the same text differs
    compressor = logit_lens(model, "Where was Kalora born?", "compressor", "last", top=2)
    assert compressor.top_probs[0] != saved["top_probs"][1]
    assert run_cli(["lens", "document", "Briven founded the museum.", "--backbone", str(tiny_backbone),
                    "--chunk-len", "16", "--cr", "4"]) == 0
    assert "logit lens (none)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--model"):
        run_cli(["lens", "question", "q?"])


def test_compare_mode_on_a_tiny_world(model, adapters_dir, tmp_path, capsys):
    from clara.eval.retrieval import load_eval_records
    from clara.world import generate_world, write_world
    from clara.world.lexical import content_words

    world = write_world(generate_world(seed=0, entities=30, candidates=6), tmp_path / "w")
    out = tmp_path / "compare.json"
    assert run_cli(["lens", "compare", "--model", str(adapters_dir), "--world", str(world), "--split", "train",
                    "--limit", "6", "--top", "50", "--out", str(out)]) == 0
    assert "query lens overlap" in capsys.readouterr().out
    stats = json.loads(out.read_text())
    assert stats["n"] == 6 and stats["by_type"]["all"]["n"] == 6
    assert set(stats["by_type"]) <= {"two_hop_linked", "two_hop_hidden", "all"}
    records = {r.id: r for r in load_eval_records(world=str(world), splits=["train"],
                                                   types=["two_hop_linked", "two_hop_hidden"], limit=6)}
    for q in stats["questions"]:
        r = records[q["id"]]
        bridge = content_words(r.candidates[r.pos_index[-1]].as_text())
        for side in ("query", "raw", "memory"):
            words = set(q[side]["words"])
            assert q[side]["overlap"] == len(words) <= q["target_words"]
            assert words <= bridge and not words & content_words(r.question)
    # the control: each question's lens words against another question's target document of the same kind
    from clara.world import document_kinds

    kinds = document_kinds(str(world))
    assert stats["wrong_document"] == "same kind" and set(kinds.values()) == {"person", "organisation", "city"}
    order = [records[q["id"]] for q in stats["questions"]]
    bridges = [r.candidates[r.pos_index[-1]] for r in order]
    wrong = wrong_targets([d.as_text() for d in bridges], [kinds[d.id] for d in bridges])
    others = other_kind_targets([kinds[d.id] for d in bridges])
    assert all(kinds[bridges[o].id] != kinds[d.id] for d, o in zip(bridges, others) if o is not None)
    for q, r, bridge, j, o in zip(stats["questions"], order, bridges, wrong, others):
        own = content_words(bridge.as_text()) - content_words(r.question)
        other = content_words(bridges[j].as_text()) - content_words(r.question)
        other_kind = content_words(bridges[o].as_text()) - content_words(r.question) if o is not None else set()
        # specific words: the bridge's own, not the control's (and the control's own, not the bridge's)
        assert q["specific_words"] == len(own - other) and q["wrong_specific_words"] == len(other - own)
        # every side's counts, recounted from its own lens words (the lens view decodes each text alone);
        # the memory side is the bridge document through the compressor
        for side, adapter, text in (("query", "query", r.question), ("raw", None, r.question),
                                    ("memory", "compressor", bridge.as_text())):  # fmt: skip
            states = memory_states(model, [text], adapter)[:, -1]  # (1, m, H), the last layer
            words = _token_words(model.tokenizer, _union_top_ids(model, states, 50)[0])
            assert q[side]["words"] == sorted(words & own) and q[side]["overlap"] == len(words & own)
            assert q[side]["wrong_overlap"] == len(words & other)
            assert q[side]["other_kind_overlap"] == len(words & other_kind)
            assert q[side]["specific"] == sorted(words & (own - other))
            assert q[side]["specific_overlap"] == len(q[side]["specific"])
            assert q[side]["wrong_specific_overlap"] == len(words & (other - own))
    # the margins are the per-question differences of these counts: their means are the means' differences
    means, margins = stats["by_type"]["all"], stats["margins"]["all"]
    assert margins["query - raw question"]["mean"] == pytest.approx(means["query_overlap"] - means["raw_overlap"])
    assert margins["query - other-kind document"]["mean"] == pytest.approx(
        means["query_overlap"] - means["query_other_kind_overlap"])
    assert margins["bridge memory - same-kind document"]["mean"] == pytest.approx(
        means["memory_overlap"] - means["memory_wrong_overlap"])
    direct = lens_overlap(model, list(records.values()), top=50, kinds=kinds)
    assert direct["by_type"] == stats["by_type"] and direct["sides"] == ["query", "raw", "memory"]
    without = lens_overlap(model, list(records.values()), top=50, kinds=kinds, memory=False)
    assert without["sides"] == ["query", "raw"] and not any(k.startswith("memory") for k in without["by_type"]["all"])
    assert without["by_type"]["all"]["query_overlap"] == direct["by_type"]["all"]["query_overlap"]
    # the two sides really are different forwards (query adapter vs bare backbone)
    assert direct["by_type"]["all"]["query_token_overlap"] != direct["by_type"]["all"]["raw_token_overlap"]


def test_read_view_removes_the_shared_direction_and_decodes_each_text_by_cosine(model):
    """view="read": states sharing one large component decode, once it is removed, to the token
    whose input embedding each text's own part points at; the logit lens of the same states does not
    tell the texts apart (every slot shows the shared component's tokens)."""
    emb = model.lm.get_input_embeddings().weight.detach().float()
    a, b = word_tokens(model, 2)
    shared = 50.0 * torch.nn.functional.normalize(torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(3)), dim=0)
    # two texts, one slot each: shared ± (e_a - e_b); centred over the two, they are ±(e_a - e_b)
    diff = emb[a] - emb[b]
    states = torch.stack([shared + diff, shared - diff])[:, None]  # (2, 1, H)
    first, second = _union_top_ids(model, states, top=1, view="read")
    cos = torch.nn.functional.normalize(diff, dim=0) @ torch.nn.functional.normalize(emb, dim=-1).T
    words = torch.ones_like(cos, dtype=torch.bool)
    words[excluded_ids(model)] = False
    assert first == {int(cos.where(words, -2).argmax())} and second == {int((-cos).where(words, -2).argmax())}
    assert first != second
    lens = _union_top_ids(model, states, top=1, view="lens")
    assert lens[0] == lens[1]  # the shared component dominates the logit lens
    with pytest.raises(ValueError, match="view"):
        _union_top_ids(model, states, top=1, view="nope")
    with pytest.raises(ConfigError, match="at least 2"):
        lens_overlap(model, [object()], view="read")


def test_wrong_targets_pick_the_next_question_with_another_document():
    assert wrong_targets(["a", "a", "b", "c"]) == [2, 2, 3, 0]
    assert wrong_targets(["a", "a"]) == [None, None]
    assert wrong_targets([]) == []
    # with kinds: the next document of the same kind (index 0 is a valid pick), else any other
    assert wrong_targets(["a", "b", "c", "d"], ["city", "person", "person", "city"]) == [3, 2, 1, 0]
    assert wrong_targets(["a", "b", "c"], ["city", "person", "person"]) == [1, 2, 1]
    assert wrong_targets(["a", "b"], [None, "city"]) == [1, 0]


def test_other_kind_targets_pick_the_next_question_with_a_document_of_another_kind():
    assert other_kind_targets(["city", "person", "person", "city"]) == [1, 3, 3, 1]
    assert other_kind_targets(["city", "city"]) == [None, None]
    assert other_kind_targets([None, "city", "person"]) == [None, 2, 1]
    assert other_kind_targets([]) == []


def test_paired_margins_are_per_question_differences_by_type():
    from clara.eval.lens import MARGINS, paired_margins

    def row(kind, query, raw, wrong, other):
        counts = {"overlap": query, "wrong_overlap": wrong, "other_kind_overlap": other, "specific_overlap": 1,
                  "wrong_specific_overlap": 0}  # fmt: skip
        return {"type": kind, "query": counts, "raw": {**counts, "overlap": raw}}

    rows = [row("two_hop_linked", 3, 1, 3, 0), row("two_hop_linked", 1, 1, 2, 1), row("two_hop_hidden", 2, 0, 2, 0)]
    margins = paired_margins(rows)
    assert list(margins) == ["two_hop_hidden", "two_hop_linked", "all"]
    linked = margins["two_hop_linked"]
    assert linked["query - raw question"]["mean"] == pytest.approx(1.0)  # (2 + 0) / 2
    assert linked["query - same-kind document"]["mean"] == pytest.approx(-0.5)  # (0 - 1) / 2
    other = linked["query - other-kind document"]  # differences 3 and 0: resampled means lie in [0, 3]
    assert other["mean"] == pytest.approx(1.5) and 0.0 <= other["low"] < 1.5 < other["high"] <= 3.0
    assert margins["all"]["query - raw question"]["mean"] == pytest.approx(4 / 3)
    assert margins["two_hop_hidden"]["query - raw question"] == {"mean": 2.0, "low": 2.0, "high": 2.0}
    # no memory side in these rows: its margin is left out, the others are all there
    assert set(margins["all"]) == {label for label, side, *_ in MARGINS if side != "memory"}
    for m in margins["all"].values():
        assert m["low"] <= m["mean"] <= m["high"]
