"""Typed records: every supported format parses to the same dataclasses; errors are one line."""

import json

import pytest

from clara.errors import DataError
from clara.data.records import (
    DataType,
    Document,
    EvalRecord,
    JointRecord,
    Limits,
    PretrainRecord,
    QAPair,
)

W = "f.jsonl:7"


def err(fn, *args, **kw) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ pretrain


def test_pretrain_project_and_reference_qa_normalise_to_the_same_record():
    project = {"id": "p1", "doc_id": "d1", "data_type": "qa", "doc": "Mara was born in 1975.",
               "pairs": [{"question": "When was Mara born?", "answer": "1975"}]}
    reference = {"data_type": "qa", "question": ["When was Mara born?"], "answers": ["1975"],
                 "docs": ["Mara was born in 1975."]}
    a = PretrainRecord.from_json(project, W)
    b = PretrainRecord.from_json(reference, W)
    assert a.pairs == b.pairs == (QAPair("When was Mara born?", "1975"),)
    assert a.doc == b.doc and a.data_type is b.data_type is DataType.QA
    assert (a.id, a.doc_id, b.id) == ("p1", "d1", None)
    assert PretrainRecord.from_json(a.to_json(), W) == a


def test_pretrain_source_names_the_data_set_in_either_format():
    ref = {"data_type": "qa", "question": ["a?"], "answers": ["1"], "docs": ["d"], "source": "nq"}
    r = PretrainRecord.from_json(ref, W)
    assert r.source == "nq" and r.to_json()["source"] == "nq"
    assert PretrainRecord.from_json(r.to_json(), W) == r
    assert "source" not in PretrainRecord.from_json({k: v for k, v in ref.items() if k != "source"}, W).to_json()
    assert err(PretrainRecord.from_json, {**ref, "source": 5}, W) == f"{W}: source: expected a string, got 5"


def test_pretrain_reference_paraphrase_takes_answer_and_instruction():
    ref = {"data_type": "paraphrase", "question": ["Rewrite the document."], "answers": ["Born 1975: Mara."],
           "docs": ["Mara was born", "in 1975."]}
    r = PretrainRecord.from_json(ref, W)
    assert r.paraphrase == "Born 1975: Mara." and r.instruction == "Rewrite the document."
    assert r.doc == "Mara was born\n\nin 1975."
    assert r.pairs == ()
    assert r.to_json() == {"data_type": "paraphrase", "doc": r.doc, "paraphrase": r.paraphrase,
                           "instruction": r.instruction}
    blank = PretrainRecord.from_json({**ref, "question": [""]}, W)
    assert blank.instruction is None


def test_pretrain_errors_name_the_field():
    ref = {"data_type": "qa", "question": ["a", "b"], "answers": ["x"], "docs": ["d"]}
    assert err(PretrainRecord.from_json, ref, W) == f"{W}: answers: has 1 items but question has 2; they pair up"
    assert err(PretrainRecord.from_json, {**ref, "data_type": "summary"}, W).startswith(
        f'{W}: data_type: unknown value "summary"')
    assert err(PretrainRecord.from_json, {"data_type": "qa", "pairs": []}, W).startswith(f"{W}: doc: missing")
    bad_pair = {"data_type": "qa", "doc": "d", "pairs": [{"question": "q", "answer": 3}]}
    assert err(PretrainRecord.from_json, bad_pair, W) == f"{W}: pairs[0].answer: expected a string, got 3"
    para = {"data_type": "paraphrase", "doc": "d", "paraphrase": "   "}
    assert err(PretrainRecord.from_json, para, W) == f"{W}: paraphrase: must not be empty"


# ------------------------------------------------------------------ documents


def test_document_formats():
    d = Document.from_json({"id": "doc-1", "title": "T", "text": "body", "entity_id": "e"}, W)
    assert (d.id, d.title, d.text) == ("doc-1", "T", "body")
    f = Document.from_json({"id": 12, "contents": '"Mara Kellen"\nMara was born.'}, W)
    assert (f.id, f.title, f.text) == ("12", "Mara Kellen", "Mara was born.")
    assert Document.from_json({"id": "x", "contents": "no title line"}, W).title == ""
    assert err(Document.from_json, {"title": "T", "text": "b"}, W) == f"{W}: id: missing (required field)"
    assert err(Document.from_json, {"id": "x", "text": "b" * 50}, W, Limits(max_doc_chars=10)).startswith(
        f"{W}: text: too long (50 chars > limit 10)")


# ------------------------------------------------------------------ questions

CORPUS = {f"doc-{i}": Document(id=f"doc-{i}", title=f"T{i}", text=f"text {i}") for i in range(5)}


def test_world_question_resolves_doc_ids_against_corpus():
    line = {"id": "q-000001", "question": "What year?", "answers": ["1975"], "type": "single_hop",
            "gold_ids": ["doc-3"], "doc_ids": ["doc-0", "doc-3", "doc-1"], "pos_index": [1],
            "entity_ids": ["e-1"]}
    r = JointRecord.from_json(line, W, corpus=CORPUS)
    assert [d.id for d in r.candidates] == ["doc-0", "doc-3", "doc-1"]
    assert r.pos_index == (1,) and r.type == "single_hop" and r.gold_ids == ("doc-3",)
    assert r.extra == {"entity_ids": ["e-1"]}
    # pos_index is derived from gold_ids when absent
    line.pop("pos_index")
    assert JointRecord.from_json(line, W, corpus=CORPUS).pos_index == (1,)
    # round trip through the project format keeps everything
    again = JointRecord.from_json(json.loads(json.dumps(r.to_json())), W)
    assert again == r and again.extra == r.extra
    assert err(JointRecord.from_json, line, W).endswith("doc_ids: candidate ids need a corpus; pass --corpus documents.jsonl")
    line["doc_ids"] = ["doc-0", "doc-9"]
    assert err(JointRecord.from_json, line, W, corpus=CORPUS) == (
        f'{W}: doc_ids[1]: unknown document id "doc-9" (not in the corpus)')


def test_inline_candidates_strings_and_dicts():
    r = JointRecord.from_json({"question": "q", "answer": "a", "docs": ["plain", {"id": 4, "contents": "T\nbody"},
                                                                       {"title": "U", "text": "more"}],
                               "pos_index": 2}, W)
    assert r.answers == ("a",) and r.pos_index == (2,)
    assert r.candidates == (Document("plain"), Document("body", "T", "4"), Document("more", "U"))
    assert err(JointRecord.from_json, {"question": "q", "answer": "a", "docs": []}, W) == (
        f"{W}: docs: must not be an empty array")
    assert err(JointRecord.from_json, {"question": "q", "answer": "a"}, W).startswith(f"{W}: docs: missing")
    assert err(JointRecord.from_json, {"question": "q", "answer": "a", "docs": ["d"], "pos_index": [0, 1]}, W) == (
        f"{W}: pos_index[1]: index 1 out of range for 1 candidates")
    assert err(JointRecord.from_json, {"question": "q", "answer": "a", "docs": ["d"], "pos_index": True}, W) == (
        f"{W}: pos_index: expected an array, got true")


def test_flashrag_record_with_candidates_in_metadata():
    rec = {"id": "test_0", "question": "who wrote it?", "golden_answers": ["Ann", "Ann B."],
           "metadata": {"doc_ids": ["doc-2", "doc-4"], "pos_index": [1], "source": "nq"}}
    r = JointRecord.from_json(rec, W, corpus=CORPUS)
    assert r.answers == ("Ann", "Ann B.") and r.pos_index == (1,) and r.id == "test_0"
    assert [d.id for d in r.candidates] == ["doc-2", "doc-4"]
    # candidates move to the top level on output; the rest of metadata is kept
    assert r.to_json()["metadata"] == {"source": "nq"}
    e = EvalRecord.from_json({"id": "t1", "question": "q?", "golden_answers": ["x"], "metadata": {}}, W)
    assert e.candidates == () and e.pos_index == () and e.answers == ("x",)
    assert "docs" not in e.to_json()
    assert err(EvalRecord.from_json, {"question": "q", "answers": ["x"], "pos_index": 0}, W) == (
        f"{W}: pos_index: given without candidates ('docs' or 'doc_ids')")


def test_answer_fields():
    base = {"question": "q"}
    assert EvalRecord.from_json({**base, "answers": ["a"], "golden_answers": ["a"]}, W).answers == ("a",)
    assert err(EvalRecord.from_json, {**base, "answers": ["a"], "golden_answers": ["b"]}, W) == (
        f"{W}: golden_answers: disagrees with 'answers'; give only one of them")
    assert err(EvalRecord.from_json, base, W).startswith(f"{W}: answers: missing")
    assert err(EvalRecord.from_json, {**base, "answers": "a"}, W) == f'{W}: answers: expected an array, got "a"'
    assert err(EvalRecord.from_json, {**base, "answers": [""]}, W) == f"{W}: answers[0]: must not be empty"


def test_echoed_values_are_truncated_and_single_line():
    msg = err(EvalRecord.from_json, {"question": 7, "answers": ["a"]}, W)
    assert msg == f"{W}: question: expected a string, got 7"
    long_bad = "x\n" * 500
    msg = err(PretrainRecord.from_json, {"data_type": long_bad, "doc": "d"}, W)
    assert len(msg) < 150 and "\\n" in msg and msg.endswith('"... (expected "qa" or "paraphrase")')
    msg = err(EvalRecord.from_json, {"question": "q\ud800", "answers": ["a"]}, W)
    assert msg == f"{W}: question: not valid Unicode (unpaired surrogate at char 1)"
