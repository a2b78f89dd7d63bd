"""The reference CLaRa's stage-2 instruction-tuning and stage-3 end-to-end records (issue 27).

Both carry ``gold_answer`` and plain-string ``docs`` but no ``pos_index``; the instruction-tuning
record adds ``answer``, a teacher's generated answer that must not become the gold.
"""

import json

import pytest

from clara.cli.main import main as clara_main
from clara.data.records import Document, EvalRecord, JointRecord
from clara.errors import DataError

W = "ref.jsonl:3"

DOCS = [
    "Lyon is the third-largest city of France.",  # no Paris
    "The Louvre, in Paris, is the world's most-visited museum.",  # gold
    "Parisian cafes line the boulevards.",  # "Parisian" is not the token "paris"
    "Tourists love PARIS!",  # case and punctuation normalised away
]
END_TO_END = {"question": "In which city is the Louvre?", "docs": DOCS, "gold_answer": "Paris"}
INSTRUCTION = {**END_TO_END, "answer": "The Louvre is in Paris, on the Seine."}
CANDIDATES = tuple(Document(text=d) for d in DOCS)


@pytest.mark.parametrize("cls", [JointRecord, EvalRecord])
def test_end_to_end_record_takes_gold_answer_and_derives_pos_index(cls):
    r = cls.from_json(END_TO_END, W)
    assert r.answers == ("Paris",)
    assert r.candidates == CANDIDATES
    assert r.pos_index == (1, 3)
    assert r.extra == {"pos_from": "answer_match"}


@pytest.mark.parametrize("cls", [JointRecord, EvalRecord])
def test_instruction_tuning_record_keeps_the_generated_answer_apart(cls):
    r = cls.from_json(INSTRUCTION, W)
    assert r.answers == ("Paris",)
    assert r.candidates == CANDIDATES and r.pos_index == (1, 3)
    assert r.extra == {"generated_answer": "The Louvre is in Paris, on the Seine.", "pos_from": "answer_match"}
    # written and read back: no "answer disagrees with answers", the same fields
    again = cls.from_json(json.loads(json.dumps(r.to_json())), W)
    assert (again, again.extra) == (r, r.extra)


def test_gold_answer_articles_and_an_article_free_document():
    rec = {"question": "Seat of the court?", "docs": ["It sits in Hague.", "Amsterdam."], "gold_answer": "The Hague"}
    assert EvalRecord.from_json(rec, W).pos_index == (0,)


def test_a_given_label_is_kept_not_derived():
    r = JointRecord.from_json({**INSTRUCTION, "pos_index": [0]}, W)
    assert r.pos_index == (0,) and "pos_from" not in r.extra
    docs = [{"id": "a", "text": DOCS[0]}, {"id": "b", "text": DOCS[1]}]
    r = JointRecord.from_json({**END_TO_END, "docs": docs, "gold_ids": ["a"]}, W)
    assert r.pos_index == (0,) and r.extra == {}
    closed = EvalRecord.from_json({"question": "q?", "gold_answer": "x", "answer": "y"}, W)
    assert closed.answers == ("x",) and closed.pos_index == () and closed.extra == {"generated_answer": "y"}


def test_reference_form_errors_name_the_field():
    with pytest.raises(DataError) as e:
        JointRecord.from_json({**END_TO_END, "answers": ["Lyon"]}, W)
    assert str(e.value) == f"{W}: answers: disagrees with 'gold_answer'; give only one of them"
    with pytest.raises(DataError) as e:
        JointRecord.from_json({**END_TO_END, "gold_answer": ["Paris"]}, W)
    assert str(e.value) == f"{W}: gold_answer: expected a string, got an array"
    with pytest.raises(DataError) as e:
        JointRecord.from_json({**INSTRUCTION, "generated_answer": "Lyon"}, W)
    assert str(e.value).startswith(f"{W}: generated_answer: disagrees with 'answer'")


@pytest.mark.parametrize("kind", ["joint", "eval"])
def test_convert_writes_project_records_that_read_back(tmp_path, capsys, kind):
    src = tmp_path / "reference.jsonl"
    src.write_text(json.dumps(END_TO_END) + "\n" + json.dumps(INSTRUCTION) + "\n")
    out = tmp_path / f"{kind}.jsonl"
    assert clara_main(["data", "convert", str(src), str(out), "--kind", kind]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 {kind} record(s) to {out}"
    docs = [{"title": "", "text": d} for d in DOCS]
    common = {"question": "In which city is the Louvre?", "answers": ["Paris"], "docs": docs, "pos_index": [1, 3]}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [
        {**common, "pos_from": "answer_match"},
        {**common, "generated_answer": "The Louvre is in Paris, on the Seine.", "pos_from": "answer_match"},
    ]
    assert clara_main(["data", "check", str(out), "--kind", kind]) == 0
    assert "positives per question: 2.0 (max 2)" in capsys.readouterr().out
