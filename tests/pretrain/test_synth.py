"""Guided synthesis: world teacher, the verify-and-regenerate loop, resume after a torn write, CLI."""

import argparse
import json

import pytest

from clara.data.jsonl import read_records
from clara.pretrain.synth import dropped_path, fresh_world_documents, summary_path, synthesize, synthesize_document
from clara.pretrain.teachers import Fact, SynthDoc, Teacher, WorldTeacher
from clara.data.records import QAPair
from clara.world.questions import states


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_world_teacher_covers_every_fact(tmp_path):
    docs = list(fresh_world_documents(30, seed=3))
    out = tmp_path / "synth.jsonl"
    s = synthesize(docs, WorldTeacher(), out)
    assert s["kept"] == 30 and s["dropped"] == 0 and s["mean_coverage_kept"] == 1.0
    records = read_records(out, "pretrain")  # valid pretrain records, unique ids
    assert len(records) == 60
    by_doc = {d.id: d for d in docs}
    for rec in records:
        doc = by_doc[rec.doc_id]
        values = [f["value"] for f in doc.facts]
        if rec.data_type.value == "qa":
            simple = rec.pairs[: len(values)]
            assert sorted(p.answer for p in simple) == sorted(values)  # one pair per fact, none repeated
            assert len({p.question for p in rec.pairs}) == len(rec.pairs)
            assert len(rec.pairs) > len(values)  # complex pairs too
            assert any(";" in p.answer or p.answer == doc.title for p in rec.pairs[len(values):])
        else:
            assert rec.paraphrase != doc.text and all(states(rec.paraphrase, v) for v in values)
    assert json.loads(summary_path(out).read_text())["kept"] == 30


class ForgetfulTeacher(Teacher):
    """Leaves facts uncovered: ``answers_from`` is the round from which a fact gets its pair."""

    name = "forgetful"

    def __init__(self, answers_from):
        self.answers_from = answers_from
        self.calls = []

    def facts(self, doc):
        return [Fact(f"fact {i}", doc.title, f"r{i}", f"v{i}") for i in range(len(self.answers_from))]

    def simple_qa(self, doc, facts, attempt=0):
        self.calls.append((attempt, [f.relation for f in facts]))
        return [QAPair(f"What is {f.relation} of {doc.title}?", f.value)
                for f in facts if self.answers_from[int(f.relation[1:])] <= attempt]

    def complex_qa(self, doc, facts):
        return []

    def paraphrase(self, doc):
        return "para " + doc.text


DOC = SynthDoc("d0", "Zed", "Zed text.")


def test_verify_loop_regenerates_only_for_uncovered_facts():
    teacher = ForgetfulTeacher([0, 0, 2, 5])
    r = synthesize_document(DOC, teacher, threshold=0.9)
    assert r.kept and r.coverage == 1.0 and r.rounds == 5
    assert teacher.calls[0] == (0, ["r0", "r1", "r2", "r3"])
    assert teacher.calls[1] == (1, ["r2", "r3"]) and teacher.calls[3] == (3, ["r3"])
    assert [p.answer for p in r.pairs] == ["v0", "v1", "v2", "v3"]


def test_verify_loop_drops_below_threshold_after_ten_rounds(tmp_path):
    teacher = ForgetfulTeacher([0, 0, 0, 99])  # 3/4 ever covered
    r = synthesize_document(DOC, teacher, threshold=0.9)
    assert not r.kept and r.coverage == 0.75 and r.rounds == 10 and len(teacher.calls) == 11
    assert synthesize_document(DOC, ForgetfulTeacher([0, 0, 0, 99]), threshold=0.75).kept
    out = tmp_path / "o.jsonl"
    s = synthesize([DOC], ForgetfulTeacher([0, 0, 0, 99]), out)
    assert s["dropped"] == 1 and out.read_text() == ""
    dropped = _lines(dropped_path(out))
    assert dropped[0]["doc_id"] == "d0" and dropped[0]["uncovered"] == ["fact 3"]
    # a dropped document is done: a re-run does not ask the teacher again
    again = ForgetfulTeacher([0, 0, 0, 99])
    assert synthesize([DOC], again, out)["skipped_already_done"] == 1 and again.calls == []


def test_resume_after_torn_write_has_no_duplicates_and_no_loss(tmp_path):
    docs = list(fresh_world_documents(12, seed=5))
    full = tmp_path / "full.jsonl"
    synthesize(docs, WorldTeacher(), full)
    out = tmp_path / "out.jsonl"
    synthesize(docs[:7], WorldTeacher(), out)
    # a crash in the middle of writing document 8: its qa line whole, its paraphrase line torn
    part = full.read_bytes().splitlines(keepends=True)
    torn = part[14] + part[15][: len(part[15]) // 2]
    with open(out, "ab") as f:
        f.write(torn)
    s = synthesize(docs, WorldTeacher(), out)
    assert s["skipped_already_done"] == 7 and s["kept"] == 5
    assert out.read_bytes() == full.read_bytes()  # deterministic teacher: identical to an uninterrupted run
    ids = [r["id"] for r in _lines(out)]
    assert len(ids) == len(set(ids)) == 24
    # torn mid-line only (no newline at all after a whole document)
    with open(out, "ab") as f:
        f.write(b'{"id": "x", "doc_')
    assert synthesize(docs, WorldTeacher(), out)["kept"] == 0
    assert out.read_bytes() == full.read_bytes()


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"doc_id": "a", "data_type": "qa"}\nnot json\n{"doc_id": "b", "data_type": "qa"}\n')
    from clara.errors import DataError

    with pytest.raises(DataError, match=r"o.jsonl:2"):
        synthesize([DOC], WorldTeacher(), out)


def _cli(argv):
    from clara.pretrain import cli

    parser = argparse.ArgumentParser(prog="clara")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_synth_world_and_help(tmp_path, capsys):
    out = tmp_path / "s.jsonl"
    assert _cli(["pretrain", "synth", "--world-fresh", "20", "--teacher", "world", "--out", str(out)]) == 0
    assert "kept 20" in capsys.readouterr().out
    assert _cli(["pretrain", "synth", "--world-fresh", "25", "--out", str(out)]) == 0
    assert "kept 5" in capsys.readouterr().out and len(_lines(out)) == 50
    with pytest.raises(SystemExit):
        _cli(["pretrain", "synth", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--docs", "--world-fresh", "--world-ranges", "--teacher", "--threshold", "--max-rounds", "--workers",
                 "--base-url"):
        assert flag in help_text


def test_cli_synth_world_ranges_reach_the_stream(tmp_path):
    """--world-ranges 300: the fresh documents have a world's birth years (not only the 1990s) and mentors."""
    out = tmp_path / "wide.jsonl"
    assert _cli(["pretrain", "synth", "--world-fresh", "80", "--world-ranges", "300", "--out", str(out)]) == 0
    pairs = [p for r in _lines(out) if r["data_type"] == "qa" for p in r["pairs"]]
    assert any("mentor" in p["question"] for p in pairs)
    years = {p["answer"][:3] for p in pairs if "born" in p["question"] and p["answer"].isdigit()}
    assert len(years) >= 4, years
