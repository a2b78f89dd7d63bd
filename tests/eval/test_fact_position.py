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
    for way in ("alone", "in_place"):
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
    assert set(res["alone"]["by_position"]) == {r.position for r in rows}
