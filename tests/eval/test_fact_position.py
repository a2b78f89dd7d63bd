"""The fact-position probe: rows by hand, and a run on the tiny backbone (numbers meaningless)."""

import json

from clara.eval.fact_position import fact_rows, main, position_em
from clara.pretrain.scp import qa_target
from clara.pretrain.synth import fresh_world_documents
from clara.pretrain.teachers import WorldTeacher


def test_rows_carry_the_gold_pairs_before_each_fact_in_training_order():
    docs = list(fresh_world_documents(3, 5))
    teacher = WorldTeacher()
    rows = fact_rows(docs, teacher)
    for i, doc in enumerate(docs):
        pairs = teacher.simple_qa(doc, teacher.facts(doc))
        mine = [r for r in rows if r.doc == i]
        assert [r.position for r in mine] == list(range(len(pairs))) and len(pairs) >= 3
        assert mine[0].prefix == ""
        # the last fact's prefix and its own pair are the doc's simple-QA target, in order
        last = mine[-1]
        assert last.prefix + f"Question: {last.question}\nAnswer: {last.answer}" == qa_target(pairs)


def test_run_on_tiny_backbone_counts_every_fact(tiny_backbone, tmp_path):
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8, lora=LoraConfig(r=4, alpha=8))
    adapters = ClaraModel.from_config(cfg).save_adapters(tmp_path / "adapters")
    out = tmp_path / "fp.json"
    assert main(["--model", str(adapters), "--docs", "2", "--batch-size", "4", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    n_rows = len(fact_rows(list(fresh_world_documents(2, stats["seed"])), WorldTeacher()))
    for way in ("alone", "in_place", "wrong"):
        assert sum(r["n"] for r in stats[way]["by_position"].values()) == n_rows
        assert 0.0 <= stats[way]["em"] <= 1.0


def test_exact_answers_score_one(monkeypatch):
    """A model that replies with each row's gold answer scores EM 1 both ways; position EM is per slot."""
    import torch

    docs = list(fresh_world_documents(2, 5))
    rows = fact_rows(docs, WorldTeacher())
    answers = {r.question: r.answer for r in rows}

    class Echo:
        def generate(self, instructions, mem, *, reply_prefixes, **kw):
            return [" " + answers[p.rsplit("Question: ", 1)[1].split("\n")[0]] for p in reply_prefixes]

    res = position_em(Echo(), torch.zeros(2, 1, 1), rows, batch_size=3)
    assert res["alone"]["em"] == res["in_place"]["em"] == 1.0
    assert res["wrong"]["em"] == 1.0  # it ignores memory: what it knows is in its weights
    assert set(res["alone"]["by_position"]) == {r.position for r in rows}


def test_wrong_way_reads_the_next_documents_memory():
    """A model that answers only from its own document's memory scores 1 alone and 0 from a wrong one."""
    import torch

    docs = list(fresh_world_documents(3, 5))
    rows = fact_rows(docs, WorldTeacher())
    answers = {r.question: (r.doc, r.answer) for r in rows}

    class Reader:
        def generate(self, instructions, mem, *, reply_prefixes, **kw):
            out = []
            for p, m in zip(reply_prefixes, mem):
                doc, ans = answers[p.rsplit("Question: ", 1)[1].split("\n")[0]]
                out.append(" " + (ans if int(m.flatten()[0]) == doc else "no idea"))
            return out

    res = position_em(Reader(), torch.arange(3.0)[:, None, None], rows, batch_size=4)
    assert res["alone"]["em"] == res["in_place"]["em"] == 1.0 and res["wrong"]["em"] == 0.0


def test_pairs_are_marked_trained_as_the_run_laid_out_its_file(tmp_path):
    """Every pair in the file trains (with rows_per_document 1, one group each); a pair not in the file is
    untrained; EM is split by the mark."""
    import torch

    from clara.config import ScpConfig
    from clara.eval.fact_position import trained_rows

    docs = list(fresh_world_documents(2, 5))
    teacher = WorldTeacher()
    kept = teacher.simple_qa(docs[0], teacher.facts(docs[0]))[:2]  # the file trains 2 pairs of doc 0 only
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"data_type": "qa", "id": "d0", "docs": [docs[0].as_text()],
                                "question": [p.question for p in kept], "answers": [p.answer for p in kept]}) + "\n")
    trained = trained_rows(str(path), ScpConfig(qa_layout="rows", rows_per_document=1))
    assert trained == {qa_target([p]) for p in kept}
    assert trained_rows(str(path), None) == trained  # the lines layout trains the same two pairs
    rows = fact_rows(docs, teacher, trained)
    assert [r.trained for r in rows if r.doc == 0][:3] == [True, True, False] and not any(r.trained for r in rows if r.doc)
    answers = {r.question: (r.answer if r.trained else "wrong") for r in rows}

    class Half:
        def generate(self, instructions, mem, *, reply_prefixes, **kw):
            return [" " + answers[p.rsplit("Question: ", 1)[1].split("\n")[0]] for p in reply_prefixes]

    res = position_em(Half(), torch.zeros(2, 1, 1), rows, batch_size=3)["alone"]["by_trained"]
    assert res["trained"] == {"n": 2, "em": 1.0} and res["untrained"] == {"n": len(rows) - 2, "em": 0.0}


def test_text_rows_read_each_documents_text_and_the_wrong_way_the_next_ones():
    """A read_text run's probe: documents as text where memory would go; the wrong way gets the next text."""
    docs = list(fresh_world_documents(3, 5))
    rows = fact_rows(docs, WorldTeacher())
    texts = [d.as_text() for d in docs]
    answers = {r.question: (texts[r.doc], r.answer) for r in rows}

    class TextReader:
        def generate(self, instructions, mem, *, reply_prefixes, documents, **kw):
            assert mem is None
            out = []
            for p, d in zip(reply_prefixes, documents):
                text, ans = answers[p.rsplit("Question: ", 1)[1].split("\n")[0]]
                out.append(" " + (ans if d == text else "no idea"))
            return out

    res = position_em(TextReader(), None, rows, batch_size=4, texts=texts)
    assert res["alone"]["em"] == res["in_place"]["em"] == 1.0 and res["wrong"]["em"] == 0.0
