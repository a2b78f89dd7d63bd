"""`clara corpus split`: whole articles held out, never a passage of one in the training file."""

import json

import pytest

from clara.cli.main import main
from clara.data.corpus import source_id, split_by_source
from clara.errors import ConfigError


def _corpus(path):
    rows = [{"id": f"{src}#{n}", "title": title, "text": f"passage {n} of {title}"}
            for src, title, k in (("1", "Andorra", 3), ("2", "Aruba", 2), ("3", "Aikido", 4), ("4", "Ampere", 1))
            for n in range(k)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


def _ids(path):
    return [json.loads(x)["id"] for x in path.read_text(encoding="utf-8").splitlines()]


def test_titles_hold_out_every_passage(tmp_path):
    _corpus(tmp_path / "p.jsonl")
    s = split_by_source(tmp_path / "p.jsonl", tmp_path / "train.jsonl", tmp_path / "held.jsonl", titles=["Aruba", "Ampere"])
    assert _ids(tmp_path / "held.jsonl") == ["2#0", "2#1", "4#0"]
    assert _ids(tmp_path / "train.jsonl") == ["1#0", "1#1", "1#2", "3#0", "3#1", "3#2", "3#3"]
    assert s["heldout_titles"] == ["Ampere", "Aruba"] and (s["train_sources"], s["heldout_sources"]) == (2, 2)


def test_fraction_splits_by_source_not_passage(tmp_path):
    _corpus(tmp_path / "p.jsonl")
    for seed in range(6):
        split_by_source(tmp_path / "p.jsonl", tmp_path / "t.jsonl", tmp_path / "h.jsonl", fraction=0.5, seed=seed)
        held = {source_id(i) for i in _ids(tmp_path / "h.jsonl")}
        train = {source_id(i) for i in _ids(tmp_path / "t.jsonl")}
        assert not held & train and held | train == {"1", "2", "3", "4"}


def test_unknown_title_and_bad_fraction_are_refused(tmp_path):
    _corpus(tmp_path / "p.jsonl")
    with pytest.raises(ConfigError, match="no passage has the title 'Nowhere'"):
        split_by_source(tmp_path / "p.jsonl", tmp_path / "t.jsonl", tmp_path / "h.jsonl", titles=["Nowhere"])
    with pytest.raises(ConfigError, match="--heldout-fraction 1.0"):
        split_by_source(tmp_path / "p.jsonl", tmp_path / "t.jsonl", tmp_path / "h.jsonl", fraction=1.0)
    assert not (tmp_path / "t.jsonl").exists()


def test_cli(tmp_path, capsys):
    _corpus(tmp_path / "p.jsonl")
    assert main(["corpus", "split", str(tmp_path / "p.jsonl"), "--train", str(tmp_path / "t.jsonl"),
                 "--heldout", str(tmp_path / "h.jsonl"), "--heldout-titles", "Aikido"]) == 0  # fmt: skip
    assert "1 held out (4 passages)" in capsys.readouterr().out
