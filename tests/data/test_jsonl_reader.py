"""The JSON-lines reader: line numbers, skipping, corpus resolution, atomic writing."""

import json
import logging
from pathlib import Path

import pytest

from clara.errors import DataError
from clara.data.jsonl import ReadStats, iter_records, read_records, write_jsonl
from clara.data.records import Document, EvalRecord, JointRecord, Limits, RecordKind


def _write(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = [ln if isinstance(ln, bytes) else (json.dumps(ln).encode() if not isinstance(ln, str) else ln.encode())
            for ln in lines]
    path.write_bytes(b"\n".join(body) + b"\n")
    return path


def test_blank_lines_bom_and_crlf_are_fine_and_line_numbers_count_them(tmp_path):
    good = {"id": "a", "title": "T", "text": "x"}
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\r\n\r\n   \n" + b'{"id": "b", "text": ""}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:4: text: must not be empty$"):
        read_records(path, RecordKind.DOCUMENTS)
    stats = ReadStats(str(path))
    docs = read_records(path, "documents", skip_bad=True, stats=stats)
    assert docs == [Document(id="a", title="T", text="x")]
    assert (stats.lines, stats.records, stats.skipped) == (2, 1, 1)


def test_stats_line_is_the_line_number_of_the_record_just_yielded(tmp_path):
    path = _write(tmp_path / "e.jsonl", ["", {"question": "a?", "answer": "b"}, "  ", "{bad", {"question": "c?", "answer": "d"}])
    stats = ReadStats(str(path))
    assert [(r.question, stats.line) for r in iter_records(path, "eval", skip_bad=True, stats=stats)] == [
        ("a?", 2), ("c?", 5)]


def test_skip_bad_returns_exactly_the_good_records_and_logs_each(tmp_path, caplog):
    good = [{"id": f"q{i}", "question": f"q {i}?", "answers": [str(i)]} for i in range(5)]
    lines = [good[0], b"{oops", good[1], {"id": "q0", "question": "dup", "answers": ["x"]}, good[2],
             b"\xff", good[3], {"question": "", "answers": ["a"]}, good[4]]
    path = _write(tmp_path / "e.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger="clara.data.jsonl"):
        records = read_records(path, RecordKind.EVAL, skip_bad=True)
    assert [r.to_json() for r in records] == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [w.split(": ")[1].rsplit(":", 1)[1] for w in warnings[:4]] == ["2", "4", "6", "8"]
    assert "duplicate id \"q0\" (first on line 1)" in warnings[1]
    assert warnings[-1] == f"skipped 4 bad record(s) of 9 in {path}"


def test_iterator_stops_at_the_bad_line_after_yielding_good_ones(tmp_path):
    path = _write(tmp_path / "e.jsonl", [{"question": "a?", "answer": "b"}, {"question": "c?"}])
    it = iter_records(path, RecordKind.EVAL)
    assert next(it).question == "a?"
    with pytest.raises(DataError, match=r"e\.jsonl:2: answers: missing"):
        next(it)


def test_line_over_the_byte_limit_is_an_error_and_reading_goes_on(tmp_path):
    limits = Limits(max_line_bytes=200)
    path = _write(tmp_path / "d.jsonl", [{"id": "a", "text": "x" * 1000}, {"id": "b", "text": "ok"}])
    with pytest.raises(DataError, match=r"d\.jsonl:1: record: line too long \(1024 bytes > limit 200\)"):
        read_records(path, "documents", limits=limits)
    assert [d.id for d in read_records(path, "documents", limits=limits, skip_bad=True)] == ["b"]


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: cannot read: No such file"):
        read_records(tmp_path / "nope.jsonl", "eval")


def _world(tmp_path: Path) -> Path:
    _write(tmp_path / "world" / "documents.jsonl",
           [{"id": f"doc-{i}", "title": f"T{i}", "text": f"t{i}", "entity_id": f"e{i}", "entity_type": "person"}
            for i in range(3)])
    return _write(tmp_path / "world" / "questions" / "train.jsonl", [
        {"id": "q-000001", "question": "Q1?", "answers": ["1975"], "type": "single_hop", "gold_ids": ["doc-2"],
         "doc_ids": ["doc-0", "doc-1", "doc-2"], "pos_index": [2], "entity_ids": ["e2"]},
        {"id": "q-000002", "question": "Q2?", "answers": ["x"], "type": "two_hop", "gold_ids": ["doc-0", "doc-1"],
         "doc_ids": ["doc-1", "doc-2", "doc-0"], "pos_index": [0, 2], "entity_ids": ["e0", "e1"]},
    ])


def test_world_questions_find_their_corpus_one_folder_up(tmp_path):
    path = _world(tmp_path)
    stats = ReadStats(str(path))
    records = read_records(path, RecordKind.JOINT, stats=stats)
    assert all(isinstance(r, JointRecord) for r in records)
    assert [[d.id for d in r.candidates] for r in records] == [["doc-0", "doc-1", "doc-2"], ["doc-1", "doc-2", "doc-0"]]
    assert records[1].candidates[0] == Document(id="doc-1", title="T1", text="t1")
    assert stats.corpus == str(tmp_path / "world" / "documents.jsonl")


def test_a_bad_corpus_is_fatal_even_when_skipping(tmp_path):
    path = _world(tmp_path)
    corpus = tmp_path / "world" / "documents.jsonl"
    corpus.write_text(corpus.read_text() + '{"id": "doc-0", "text": "again"}\n')
    with pytest.raises(DataError) as e:
        read_records(path, RecordKind.JOINT, skip_bad=True)
    assert str(e.value).startswith(f"{corpus}:4: id: duplicate id \"doc-0\" (first on line 1)")
    assert "clara data check" in str(e.value)


def test_write_jsonl_round_trips_and_leaves_nothing_on_failure(tmp_path):
    recs = [EvalRecord(question="q?", answers=("a",), id="1"), EvalRecord(question="r?", answers=("b", "c"))]
    out = tmp_path / "out.jsonl"
    assert write_jsonl(out, recs) == 2
    assert read_records(out, "eval") == recs

    def broken():
        yield recs[0]
        raise DataError("x.jsonl:2: question: missing")

    target = tmp_path / "new" / "fresh.jsonl"
    with pytest.raises(DataError):
        write_jsonl(target, broken())
    assert list(target.parent.iterdir()) == []
    # an existing file is left untouched by a failed rewrite
    before = out.read_bytes()
    with pytest.raises(DataError):
        write_jsonl(out, broken())
    assert out.read_bytes() == before
