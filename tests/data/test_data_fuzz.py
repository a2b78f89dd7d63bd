"""Fuzz: hundreds of malformed JSONL lines, each one a one-line `file:line:` error, never a traceback.

Every case is one bad line placed among good lines. The reader must raise DataError naming
the right line (and, where the case targets one field, that field); `clara data convert`
must exit 1 with a single `error: file:line: ...` line and leave no output behind.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from clara.cli.main import main as clara_main
from clara.errors import DataError
from clara.data.jsonl import read_records
from clara.data.records import DEFAULT_LIMITS

DOCS = [{"id": f"doc-{i}", "title": f"Title {i}", "text": f"Text of document {i}."} for i in range(4)]

GOOD = {
    "pretrain": [
        {"id": "g1", "data_type": "qa", "doc": "Mara was born in 1975.", "pairs": [{"question": "When?", "answer": "1975"}]},
        {"data_type": "qa", "question": ["Who?"], "answers": ["Mara"], "docs": ["Mara lives here."]},
        {"id": "g3", "data_type": "paraphrase", "doc": "A city.", "paraphrase": "It is a city."},
    ],
    "joint": [
        {"id": "g1", "question": "When?", "answers": ["1975"], "docs": ["a", "b"], "pos_index": [0]},
        {"id": "g2", "question": "Who?", "answers": ["Mara"], "doc_ids": ["doc-0", "doc-1", "doc-2"], "pos_index": 2},
        {"id": "g3", "question": "Where?", "golden_answers": ["Tarsin"], "metadata": {"doc_ids": ["doc-3"], "pos_index": [0]}},
    ],
    "eval": [
        {"id": "g1", "question": "When?", "golden_answers": ["1975"], "metadata": {}},
        {"id": "g2", "question": "Who?", "answer": "Mara", "docs": [{"id": "x", "title": "", "text": "t"}], "pos_index": [0]},
        {"question": "Where?", "answers": ["Tarsin"], "type": "single_hop"},
    ],
    "documents": [
        {"id": "g1", "title": "A", "text": "alpha"},
        {"id": "g2", "contents": '"B"\nbeta'},
        {"id": "g3", "title": "", "text": "gamma", "entity_type": "city"},
    ],
}

# A valid base record per kind (with every field the mutations touch) and its required fields.
BASE = {
    "pretrain": {"id": "bad", "data_type": "qa", "doc": "Some doc.", "pairs": [{"question": "Q?", "answer": "A"}]},
    "joint": {"id": "bad", "question": "Q?", "answers": ["A"], "docs": ["d0", "d1", "d2"], "pos_index": [1],
              "type": "single_hop", "gold_ids": ["doc-1"]},
    "eval": {"id": "bad", "question": "Q?", "golden_answers": ["A"], "doc_ids": ["doc-0", "doc-1"], "pos_index": [0]},
    "documents": {"id": "bad", "title": "T", "text": "body"},
}
REQUIRED = {"pretrain": ["data_type", "doc", "pairs"], "joint": ["question", "answers", "docs"],
            "eval": ["question", "golden_answers"], "documents": ["id", "text"]}
WRONG_VALUES = [1, 1.5, True, None, [], {}, [1], [None], {"a": [{"b": None}]}]
STRING_FIELDS = {"pretrain": ["doc", "id"], "joint": ["question", "type", "id"], "eval": ["question", "id"],
                 "documents": ["text", "title", "id"]}
BIG_Q = DEFAULT_LIMITS.max_question_chars + 1
BIG_DOC = DEFAULT_LIMITS.max_doc_chars + 1


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


def _mutated(kind: str, path: list, value, delete: bool = False) -> bytes:
    obj = copy.deepcopy(BASE[kind])
    target = obj
    for key in path[:-1]:
        target = target[key]
    if delete:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return _line(obj)


def _syntax_cases(kind: str):
    good = _line(BASE[kind])
    yield good[:-1], "record"  # truncated
    yield good[:-1] + b",}", "record"  # trailing comma
    yield good.replace(b'"', b"'"), "record"  # single quotes
    yield good[:-1] + b', "x": NaN}', "record"
    yield good[:-1] + b', "x": Infinity}', "record"
    yield good[:-1] + b', "id": "dup"}', "record"  # duplicate key
    yield b"[" * 100_000, "record"  # nested garbage beyond the parser's depth
    yield b'{"x": ' + b"9" * 5000 + b"}", "record"  # integer too long to convert
    yield good + b" {}", "record"  # two values on a line
    yield b"undefined", "record"
    yield b"{\x00}", "record"
    for raw in (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xe2\x82", b"\xc0\xaf", b"\x80abc"):
        yield good[:10] + raw + good[10:], "record"  # invalid UTF-8
    for top in (b"[]", b"1", b'"a string"', b"null", b"true", b"[{}]", b"[" + good + b"]"):
        yield top, "record"  # not an object


def _field_cases(kind: str):
    for f in REQUIRED[kind]:
        yield _mutated(kind, [f], None, delete=True), None
    yield b"{}", None
    for f in STRING_FIELDS[kind]:
        for v in WRONG_VALUES:
            if (f == "id" and v == 1) or (f == "title" and v is None):  # integer ids, null titles are valid
                continue
            yield _mutated(kind, [f], v), f
        if f not in ("id", "title"):  # a title may be empty
            yield _mutated(kind, [f], ""), f
            yield _mutated(kind, [f], " \t "), f
        big = BIG_DOC if f in ("doc", "text") else BIG_Q
        yield _mutated(kind, [f], "x" * (DEFAULT_LIMITS.max_id_chars + 1 if f == "id" else big)), f
        yield _mutated(kind, [f], "ok\ud800"), f  # lone surrogate


def _kind_cases(kind: str):
    if kind == "pretrain":
        for v in ("summary", "QA", "", 1, None, ["qa"]):
            yield _mutated(kind, ["data_type"], v), "data_type"
        for v in WRONG_VALUES[:6] + [[]]:
            yield _mutated(kind, ["pairs"], v), "pairs"
        for v in (1, "q", [], None):
            yield _mutated(kind, ["pairs", 0], v), "pairs[0]"
        yield _mutated(kind, ["pairs", 0, "answer"], ""), "pairs[0].answer"
        yield _mutated(kind, ["pairs", 0, "question"], "q" * BIG_Q), "pairs[0].question"
        yield _mutated(kind, ["paraphrase"], "p"), "paraphrase"
        ref = {"data_type": "qa", "question": ["a", "b"], "answers": ["x"], "docs": ["d"]}
        yield _line(ref), "answers"
        yield _line({**ref, "answers": ["x", 2]}), "answers[1]"
        yield _line({**ref, "docs": []}), "docs"
        yield _line({**ref, "docs": "d"}), "docs"
        yield _line({"data_type": "paraphrase", "answers": [], "docs": ["d"]}), "answers"
    if kind in ("joint", "eval"):
        ans = "answers" if kind == "joint" else "golden_answers"
        for v in ("A", [], [1], [""], None, {"a": 1}):
            yield _mutated(kind, [ans], v), None
        yield _line({**BASE[kind], "answer": "other"}), None  # disagreeing answer fields
        for v in (-1, 3, 10**30, [0, 0], [True], ["0"], 1.0, [1.0], {"0": 1}):
            yield _mutated(kind, ["pos_index"], v), None
        yield _line({**BASE[kind], "id": "g1"}), "id"  # duplicate of a good line's id
        for v in ([], "doc-0", [1.5], ["doc-404"], [None]):
            cand = "docs" if kind == "joint" else "doc_ids"
            yield _mutated(kind, [cand], v), None
        yield _line({**BASE[kind], "metadata": "not an object"}), "metadata"
        yield _line({**BASE[kind], "docs": ["a"], "doc_ids": ["doc-0"]}), None
        yield _line({**BASE[kind], "extra": ["\ud800"]}), "extra"
    if kind == "joint":
        for v in (1, None, []):
            yield _mutated(kind, ["docs", 1], v), "docs[1]"
        yield _mutated(kind, ["docs", 1], {"id": "x"}), "docs[1].text"
        yield _mutated(kind, ["docs", 1], {"id": "x", "text": ""}), "docs[1].text"
        yield _mutated(kind, ["docs", 1], {"contents": "T\n"}), "docs[1].contents"
        yield _mutated(kind, ["docs"], None, delete=True), "docs"
    if kind == "documents":
        yield _line({"id": "bad", "contents": '"Only a title"\n'}), "contents"
        yield _line({"id": "bad", "contents": 5}), "contents"
        yield _line({"id": "g2", "text": "dup"}), "id"


def all_cases() -> list[tuple[str, bytes, str | None]]:
    cases = []
    for kind in GOOD:
        for gen in (_syntax_cases, _field_cases, _kind_cases):
            cases += [(kind, raw, f) for raw, f in gen(kind)]
    return cases


CASES = all_cases()


def _write_case(folder: Path, i: int, kind: str, bad: bytes) -> tuple[Path, int]:
    """Good lines (and a blank one) around the bad line; returns the file and the bad line number."""
    good = [_line(g) for g in GOOD[kind]]
    before = good[: i % 3 + 1]
    lines = before + ([b""] if i % 2 else []) + [bad] + good[len(before):]
    path = folder / f"case{i:03d}.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, len(lines) - len(good[len(before):])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "documents.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    return path


def test_there_are_at_least_200_cases_of_every_sort():
    assert len(CASES) >= 200
    assert {k for k, _, _ in CASES} == set(GOOD)


def test_good_lines_alone_read_cleanly(tmp_path, corpus):
    for kind, lines in GOOD.items():
        path = tmp_path / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(g) + "\n" for g in lines + [BASE[kind]]))
        assert len(read_records(path, kind, corpus=corpus)) == len(lines) + 1


def _assert_one_line_error(msg: str, path: Path, lineno: int, fieldname: str | None) -> None:
    assert msg.startswith(f"{path}:{lineno}: "), msg
    assert "\n" not in msg and "\r" not in msg and len(msg) < 400, msg
    if fieldname is not None:
        assert msg.startswith(f"{path}:{lineno}: {fieldname}: "), msg


def test_reader_rejects_every_case_with_file_line_field(tmp_path, corpus):
    for i, (kind, bad, fieldname) in enumerate(CASES):
        path, lineno = _write_case(tmp_path, i, kind, bad)
        with pytest.raises(DataError) as e:
            read_records(path, kind, corpus=corpus)
        _assert_one_line_error(str(e.value), path, lineno, fieldname)
        # skipping instead returns exactly the good lines
        good = read_records(path, kind, corpus=corpus, skip_bad=True)
        assert len(good) == len(GOOD[kind]), (i, str(e.value))


def _only_inputs_left(folder: Path, out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in folder.iterdir() if p.suffix != ".jsonl"]
    assert leftovers == [], leftovers  # no temporary files from the atomic writer


def test_cli_convert_every_case_in_process(tmp_path, corpus, capsys):
    for i, (kind, bad, fieldname) in enumerate(CASES):
        path, lineno = _write_case(tmp_path, i, kind, bad)
        out = tmp_path / "out" / f"case{i:03d}.out"
        rc = clara_main(["data", "convert", str(path), str(out), "--kind", kind, "--corpus", str(corpus)])
        captured = capsys.readouterr()
        assert rc == 1, (i, captured)
        assert captured.out == ""
        err = captured.err.rstrip("\n")
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        _assert_one_line_error(err[len("error: "):], path, lineno, fieldname)
        if out.parent.exists():
            _only_inputs_left(out.parent, out)


def test_cli_convert_in_subprocess_sample(tmp_path, corpus):
    sample = CASES[:: max(1, len(CASES) // 8)][:8]
    for i, (kind, bad, fieldname) in enumerate(sample):
        path, lineno = _write_case(tmp_path, i, kind, bad)
        out = tmp_path / f"out{i}.jsonl"
        r = subprocess.run(
            [sys.executable, "-m", "clara.cli", "data", "convert", str(path), str(out), "--kind", kind,
             "--corpus", str(corpus)],
            capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 1, r
        assert "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}:{lineno}: "), r.stderr
        assert not out.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".out{i}")]
