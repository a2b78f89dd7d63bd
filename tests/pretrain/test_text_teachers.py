"""Teacher-free SCP targets (issue 27): cloze QA, reconstruction and continuation, by hand values."""

import json

from clara.cli.main import main
from clara.data.jsonl import read_records
from clara.pretrain.synth import follows, read_documents, synthesize
from clara.pretrain.teachers import SynthDoc
from clara.pretrain.text_teachers import (
    CONTINUATION_INSTRUCTION, RECONSTRUCTION_INSTRUCTION, ClozeTeacher, cloze_pairs, occurrences, salient_spans,
)  # fmt: skip

PASSAGE = ("Andorra is a landlocked country in the Pyrenees. Its capital is Andorra la Vella. "
           "The country had a population of 77,543 in 2016. It joined the United Nations on 28 July 1993.\n"
           "History\nThe Andorra la Vella council met in 1993.")  # fmt: skip


def test_salient_spans_by_kind():
    spans = salient_spans("It joined the United Nations on 28 July 1993 with 77,543 people.")
    assert ("28 July 1993", "date") in [(s, k) for s, _, k in spans]
    assert ("77,543", "number") in [(s, k) for s, _, k in spans]
    assert ("United Nations", "named") in [(s, k) for s, _, k in spans]
    assert not any(s == "1993" for s, _, _ in spans)  # inside the date, not a span of its own
    # a capitalised word opening a sentence is no name; leading function words are trimmed
    assert [s for s, _, _ in salient_spans("Its capital is Paris.")] == ["Paris"]
    assert [s for s, _, _ in salient_spans("In the UK the rule holds.")] == ["UK"]
    assert [s for s, _, _ in salient_spans("They met at St and left, with NATO")] == ["NATO"]  # short: acronyms only
    assert [s for s, _, _ in salient_spans("Under the DSM-5 rules")] == ["DSM-5"]  # no number inside a name


def test_occurrences_are_whole_words():
    assert occurrences("in 1993 and 19930", "1993") == 1
    assert occurrences("Andorra la Vella, Andorra", "Andorra") == 2


def test_cloze_pairs_hand_values():
    pairs = {p.answer: p.question for _, p in cloze_pairs(PASSAGE, "Andorra", "doc-1")}
    # "Andorra la Vella" occurs twice in the passage: never an answer; "1993" twice too; the title never
    assert "Andorra la Vella" not in pairs and "1993" not in pairs and "Andorra" not in pairs
    # one pair per sentence that has a usable span, a stable draw among them
    assert pairs == {"Pyrenees": "Fill in the blank: Andorra is a landlocked country in the ____.",
                     "2016": "Fill in the blank: The country had a population of 77,543 in ____.",
                     "28 July 1993": "Fill in the blank: It joined the United Nations on ____."}  # fmt: skip
    assert {p.answer for _, p in cloze_pairs(PASSAGE, "Andorra", "doc-1")} == set(pairs)
    for answer, question in pairs.items():
        assert "____" in question and occurrences(question, answer) == 0


def test_synth_writes_cloze_reconstruction_and_continuation(tmp_path):
    corpus = tmp_path / "passages.jsonl"
    rows = [{"id": "7#0", "title": "Andorra", "text": PASSAGE},
            {"id": "7#1", "title": "Andorra", "text": "Catalan is the official language since 1993."},
            {"id": "9#0", "title": "Aruba", "text": "Aruba lies in the Caribbean Sea near Venezuela."},
            {"id": "9#2", "title": "Aruba", "text": "no salient span here at all, only words."}]  # fmt: skip
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    docs = list(read_documents(corpus))
    assert [d.next_text for d in docs] == [rows[1]["text"], "", "", ""]  # 9#0 -> 9#2 is not the next passage
    out = tmp_path / "cloze.jsonl"
    s = synthesize(docs, ClozeTeacher(), out)
    assert (s["kept"], s["dropped"]) == (3, 1)
    recs = {r.id: r for r in read_records(out, "pretrain")}
    assert set(recs) == {"7#0:qa", "7#0:continuation", "7#0:paraphrase", "7#1:qa", "7#1:paraphrase", "9#0:qa",
                         "9#0:paraphrase"}  # fmt: skip
    assert recs["7#0:paraphrase"].paraphrase == PASSAGE
    assert recs["7#0:paraphrase"].instruction == RECONSTRUCTION_INSTRUCTION
    assert recs["7#0:continuation"].paraphrase == rows[1]["text"]
    assert recs["7#0:continuation"].instruction == CONTINUATION_INSTRUCTION
    assert recs["7#0:qa"].doc == "Andorra\n" + PASSAGE
    assert [p.answer for p in recs["7#1:qa"].pairs] == ["Catalan"] or [p.answer for p in recs["7#1:qa"].pairs] == ["1993"]
    assert {p.answer for p in recs["9#0:qa"].pairs} <= {"Caribbean Sea", "Venezuela"}
    # resumable: a second run does nothing new
    assert synthesize(read_documents(corpus), ClozeTeacher(), out)["skipped_already_done"] == 4


def test_follows():
    assert follows("12#3", "12#4") and not follows("12#3", "12#5") and not follows("12#3", "13#4")
    assert not follows("a", "b") and not follows("x#y", "x#z")


def test_cli_cloze(tmp_path, capsys):
    corpus = tmp_path / "p.jsonl"
    corpus.write_text(json.dumps({"id": "1#0", "title": "T", "text": PASSAGE}) + "\n", encoding="utf-8")
    assert main(["pretrain", "synth", "--corpus", str(corpus), "--teacher", "cloze", "--out", str(tmp_path / "o.jsonl")]) == 0
    assert "synth (cloze)" in capsys.readouterr().out
    assert ClozeTeacher().facts(SynthDoc("1#0", "T", PASSAGE))
