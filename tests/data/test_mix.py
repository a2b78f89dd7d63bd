"""`clara data mix`: parts by kind and count, sources, a seeded shuffle, clear errors."""

import json

import pytest

from clara.cli.main import main
from clara.data.mix import Part, mix
from clara.errors import ConfigError, DataError


def _synth(path, n):
    rows = []
    for i in range(n):
        doc = f"doc {i}"
        rows += [{"id": f"{i}:qa", "doc_id": str(i), "data_type": "qa", "doc": doc, "pairs": [{"question": "q?", "answer": "a"}]},
                 {"id": f"{i}:continuation", "doc_id": str(i), "data_type": "paraphrase", "doc": doc, "paraphrase": "next"},
                 {"id": f"{i}:paraphrase", "doc_id": str(i), "data_type": "paraphrase", "doc": doc, "paraphrase": doc}]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _read(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_parts_by_kind_count_and_source(tmp_path):
    _synth(tmp_path / "cloze.jsonl", 5)
    counts = mix([f"{tmp_path}/cloze.jsonl:qa:all:wiki", f"{tmp_path}/cloze.jsonl:paraphrase:2",
                  f"{tmp_path}/cloze.jsonl:continuation:1"], tmp_path / "mix.jsonl", seed=3)  # fmt: skip
    assert list(counts.values()) == [5, 2, 1]
    rows = _read(tmp_path / "mix.jsonl")
    kinds = sorted(r["id"].split(":")[1] for r in rows)
    assert kinds == ["continuation"] + ["paraphrase"] * 2 + ["qa"] * 5
    assert {r["source"] for r in rows if r["id"].endswith(":qa")} == {"wiki"}
    assert {r["source"] for r in rows if not r["id"].endswith(":qa")} == {"cloze"}  # the file's stem
    # the same command gives the same bytes; another seed another order
    first = (tmp_path / "mix.jsonl").read_bytes()
    mix([f"{tmp_path}/cloze.jsonl:qa:all:wiki", f"{tmp_path}/cloze.jsonl:paraphrase:2",
         f"{tmp_path}/cloze.jsonl:continuation:1"], tmp_path / "mix.jsonl", seed=3)  # fmt: skip
    assert (tmp_path / "mix.jsonl").read_bytes() == first


def test_bad_parts_and_records(tmp_path):
    _synth(tmp_path / "c.jsonl", 2)
    with pytest.raises(ConfigError, match="kind 'qas' is not one of"):
        Part.parse("c.jsonl:qas:all")
    with pytest.raises(ConfigError, match="N must be a positive count or 'all', got '0'"):
        Part.parse("c.jsonl:qa:0")
    with pytest.raises(ConfigError, match="asks for 3 qa records, .* has 2"):
        mix([f"{tmp_path}/c.jsonl:qa:3"], tmp_path / "m.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"data_type": "qa", "doc": "d", "pairs": []}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl:1: pairs: must not be an empty array"):
        mix([f"{tmp_path}/bad.jsonl:all:all"], tmp_path / "m.jsonl")
    assert not (tmp_path / "m.jsonl").exists()


def test_cli(tmp_path, capsys):
    _synth(tmp_path / "c.jsonl", 3)
    assert main(["data", "mix", f"{tmp_path}/c.jsonl:qa:2", "--out", str(tmp_path / "m.jsonl")]) == 0
    assert "2 records" in capsys.readouterr().out and len(_read(tmp_path / "m.jsonl")) == 2
