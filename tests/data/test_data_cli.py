"""`clara data check|convert` end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clara.cli.main import main as clara_main


def _jsonl(path: Path, objs: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def _read(path: Path) -> list:
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def test_check_prints_every_problem_and_exits_1(tmp_path, capsys):
    path = _jsonl(tmp_path / "j.jsonl", [
        {"question": "ok?", "answers": ["a"], "docs": ["d0", "d1"], "pos_index": 1},
        {"question": "q?", "answers": ["a"], "docs": ["d0"], "pos_index": 4},
        "{not json",
        {"question": "q?", "answers": [], "docs": ["d0"]},
        {"question": "fine?", "answer": "b", "docs": [{"id": "x", "contents": "T\nbody"}]},
        {"answers": ["a"], "docs": ["d"]},
    ])
    assert clara_main(["data", "check", str(path), "--kind", "joint"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}:2: pos_index: index 4 out of range for 1 candidates",
        f"{path}:3: record: invalid JSON: Expecting property name enclosed in double quotes at column 2",
        f"{path}:4: answers: must not be an empty array",
        f"{path}:6: question: missing (required field)",
    ]
    assert err.strip() == f"error: {path}: 4 bad line(s) of 6"


def test_check_summary_for_clean_files(tmp_path, capsys):
    pre = _jsonl(tmp_path / "p.jsonl", [
        {"data_type": "qa", "question": ["a?", "b?"], "answers": ["1", "2"], "docs": ["doc one"]},
        {"id": "x", "data_type": "qa", "doc": "doc two", "pairs": [{"question": "c?", "answer": "3"}]},
        {"data_type": "paraphrase", "question": ["Rewrite:"], "answers": ["p"], "docs": ["doc three"]},
    ])
    assert clara_main(["data", "check", str(pre), "--kind", "pretrain"]) == 0
    out = capsys.readouterr().out
    assert f"{pre}: 3 pretrain record(s), no problems" in out
    assert "data_type: paraphrase 1, qa 2" in out
    assert "qa pairs per qa record: 1.5 (max 2)" in out

    joint = _jsonl(tmp_path / "q.jsonl", [
        {"question": "a?", "answers": ["1"], "docs": ["d"] * 4, "pos_index": [0], "type": "single_hop"},
        {"question": "b?", "answers": ["2"], "docs": ["d"] * 2, "pos_index": [0, 1], "type": "two_hop"},
    ])
    assert clara_main(["data", "check", str(joint), "--kind", "joint"]) == 0
    out = capsys.readouterr().out
    assert "candidates per question: 3.0 (max 4)" in out and "positives per question: 1.5 (max 2)" in out
    assert "type: single_hop 1, two_hop 1" in out


def test_check_empty_file_is_an_error(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    assert clara_main(["data", "check", str(path), "--kind", "eval"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {path}: no records (the file is empty or blank)"


def test_convert_reference_pretrain_to_project_format(tmp_path, capsys):
    src = _jsonl(tmp_path / "ref.jsonl", [
        {"data_type": "qa", "question": ["a?"], "answers": ["1"], "docs": ["the doc"]},
        {"data_type": "paraphrase", "question": [], "answers": ["para"], "docs": ["doc 2"]},
    ])
    out = tmp_path / "out" / "pre.jsonl"
    assert clara_main(["data", "convert", str(src), str(out), "--kind", "pretrain"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 2 pretrain record(s) to {out}"
    assert _read(out) == [
        {"data_type": "qa", "doc": "the doc", "pairs": [{"question": "a?", "answer": "1"}]},
        {"data_type": "paraphrase", "doc": "doc 2", "paraphrase": "para"},
    ]


def test_convert_flashrag_with_corpus_inlines_candidates(tmp_path):
    corpus = _jsonl(tmp_path / "corpus" / "wiki.jsonl", [
        {"id": "0", "contents": '"Ann Bell"\nAnn Bell wrote the book.'},
        {"id": "1", "contents": '"Other"\nSomething else.'},
    ])
    src = _jsonl(tmp_path / "nq.jsonl", [
        {"id": "test_0", "question": "who wrote the book?", "golden_answers": ["Ann Bell"],
         "metadata": {"doc_ids": ["1", "0"], "pos_index": [1], "split": "test"}},
    ])
    out = tmp_path / "nq.eval.jsonl"
    assert clara_main(["data", "convert", str(src), str(out), "--kind", "eval", "--corpus", str(corpus)]) == 0
    assert _read(out) == [{
        "id": "test_0", "question": "who wrote the book?", "answers": ["Ann Bell"],
        "docs": [{"id": "1", "title": "Other", "text": "Something else."},
                 {"id": "0", "title": "Ann Bell", "text": "Ann Bell wrote the book."}],
        "pos_index": [1], "metadata": {"split": "test"},
    }]


def test_flashrag_records_take_candidates_from_a_separate_file(tmp_path, capsys):
    corpus = _jsonl(tmp_path / "wiki.jsonl", [{"id": str(i), "contents": f"T{i}\nbody {i}"} for i in range(4)])
    src = _jsonl(tmp_path / "nq.jsonl", [
        {"id": "a", "question": "qa?", "golden_answers": ["x"], "metadata": {}},
        {"id": 7, "question": "qb?", "golden_answers": ["y"], "metadata": {}},
    ])
    cands = _jsonl(tmp_path / "retrieved.jsonl", [
        {"id": 7, "doc_ids": ["3", "2"], "pos_index": [1]},
        {"id": "a", "docs": ["inline text"]},
    ])
    out = tmp_path / "joint.jsonl"
    args = ["data", "convert", str(src), str(out), "--kind", "joint", "--corpus", str(corpus)]
    assert clara_main(args + ["--candidates", str(cands)]) == 0
    rows = _read(out)
    assert rows[0]["docs"] == [{"title": "", "text": "inline text"}] and rows[0]["pos_index"] == []
    assert [d["id"] for d in rows[1]["docs"]] == ["3", "2"] and rows[1]["pos_index"] == [1]
    # without candidates a joint question is an error naming the question's line
    capsys.readouterr()
    args.append("--overwrite")  # OUT exists now
    assert clara_main(args) == 1
    assert capsys.readouterr().err.startswith(f"error: {src}:1: docs: missing")
    # a bad candidate entry names both the question line and the candidates line
    _jsonl(cands, [{"id": 7, "doc_ids": ["3", "99"]}, {"id": "a", "docs": ["t"]}])
    assert clara_main(args + ["--candidates", str(cands)]) == 1
    assert capsys.readouterr().err.strip() == (
        f'error: {src}:2: doc_ids[1]: unknown document id "99" (not in the corpus) (candidates from {cands}:1)')
    _jsonl(cands, [{"id": 7, "doc_ids": ["3"]}, {"id": 7, "docs": ["t"]}])
    assert clara_main(args + ["--candidates", str(cands), "--skip-bad-records"]) == 1
    assert capsys.readouterr().err.strip() == f'error: {cands}:2: id: duplicate id "7" (first at {cands}:1)'
    assert _read(out) == rows  # the earlier good output is untouched by the failed runs


def test_convert_skip_bad_records_keeps_exactly_the_good_ones(tmp_path, capsys):
    good = [{"id": f"d{i}", "title": "", "text": f"text {i}"} for i in range(3)]
    src = _jsonl(tmp_path / "docs.jsonl", [good[0], '{"id": 1.5, "text": "x"}', good[1], "[]", good[2]])
    out = tmp_path / "clean.jsonl"
    assert clara_main(["data", "convert", str(src), str(out), "--kind", "documents"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {src}:2: id: expected a string, got 1.5"
    assert not out.exists()
    assert clara_main(["data", "convert", str(src), str(out), "--kind", "documents", "--skip-bad-records"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote 3 documents record(s) to {out}, skipped 2 bad line(s)"
    assert _read(out) == good


def test_convert_all_bad_with_skip_writes_nothing(tmp_path, capsys):
    src = _jsonl(tmp_path / "bad.jsonl", ["[]", "{}"])
    out = tmp_path / "o.jsonl"
    assert clara_main(["data", "convert", str(src), str(out), "--kind", "eval", "--skip-bad-records"]) == 1
    assert capsys.readouterr().err.strip().endswith("no records to convert (all 2 line(s) were bad)")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]


@pytest.mark.parametrize("action", ["check", "convert"])
def test_every_flag_has_help(action):
    r = subprocess.run([sys.executable, "-m", "clara.cli", "data", action, "--help"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    flags = ["--kind", "--corpus", "--candidates", "--max-question-chars", "--max-doc-chars"]
    flags += ["--skip-bad-records"] if action == "convert" else []
    text = " ".join(r.stdout.split())
    for flag in flags:
        # argparse prints a flag's help right after it; a flag with no help would be followed by the next flag
        after = text.split(flag, 2)[-1].split("--")[0]
        assert len(after.split()) >= 4, (flag, after)
