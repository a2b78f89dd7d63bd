"""Served answers against raw-text RAG on the same retrieval (issue 27), through a real server."""

import json

import pytest

from clara.config import LoraConfig, ModelConfig
from clara.errors import DataError


@pytest.fixture(scope="module")
def tiny_model(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    return ClaraModel.from_config(cfg).eval()


def test_served_and_raw_rag_read_the_same_passages(tmp_path, tiny_model, monkeypatch):
    from clara.eval import bank_answers
    from clara.serving.bank import MemoryBank
    from clara.serving.bank_build import build_bank

    rows = [{"id": f"{a}#{n}", "title": f"Town {a}", "text": f"Town {a} part {n} was founded in {1000 + 10 * a + n}."}
            for a in range(4) for n in range(2)]  # fmt: skip
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_bank(tmp_path / "p.jsonl", tiny_model, tmp_path / "bank", progress=False)
    data = tmp_path / "q.jsonl"
    recs = [{"data_type": "qa", "doc_id": r["id"], "doc": f"{r['title']}\n{r['text']}",
             "pairs": [{"question": f"When was {r['title']} part {r['id'][-1]} founded?", "answer": r["text"][-5:-1]}]}
            for r in rows[:3]]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    pairs = bank_answers.load_pairs(data)
    assert [p["doc_id"] for p in pairs] == ["0#0", "0#1", "1#0"] and pairs[0]["answers"] == ["1000"]

    from clara.eval import reading

    seen, reading_evaluate = {}, reading.evaluate_reading

    def spy(model, tok, questions, documents, **kw):  # what raw-text RAG was given to read
        seen.update({q["id"]: documents[q["gold_ids"][0]]["text"] for q in questions})
        return reading_evaluate(model, tok, questions, documents, **kw)

    monkeypatch.setattr(reading, "evaluate_reading", spy)
    res = bank_answers.evaluate_bank_answers(tiny_model, MemoryBank.open(tmp_path / "bank"), pairs, k=2, max_new_tokens=3)
    assert res["n"] == 3 and res["k"] == 2 and res["bank_size"] == 8
    for rec, p in zip(res["records"], pairs):
        assert len(rec["sources"]) == 2 and rec["gold"] == p["doc_id"]
        # raw-text RAG read exactly the served sources' passages, in the served order
        by_id = {r["id"]: r for r in rows}
        want = "\n\n".join(f"{by_id[s]['title']}\n{by_id[s]['text']}" for s in rec["sources"])
        assert seen[p["id"]] == want
    hits = sum(r["gold"] in r["sources"] for r in res["records"]) / 3
    assert res["gold_passage_hit"] == pytest.approx(hits)
    assert set(res["served"]) >= {"em", "f1", "cover_em"} and set(res["raw_text_rag"]) >= {"em", "f1", "cover_em"}
    assert "raw-text RAG" in bank_answers.format_table(res)


def test_split_rows_count_as_their_passage():
    from clara.eval.bank_answers import article_of, is_row_of

    assert is_row_of("309#0", "309#0") and is_row_of("309#0#2", "309#0")
    assert not is_row_of("309#1", "309#0") and not is_row_of("309#0x", "309#0") and not is_row_of("309#01", "309#0")
    assert article_of("309#0#2") == article_of("309#4") == "309"


def test_records_need_the_gold_passage_id(tmp_path):
    from clara.eval.bank_answers import load_pairs

    (tmp_path / "q.jsonl").write_text(json.dumps({"data_type": "qa", "doc": "d", "pairs": [
        {"question": "q?", "answer": "a"}]}) + "\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(DataError, match="q.jsonl:1: doc_id: missing"):
        load_pairs(tmp_path / "q.jsonl")
