"""Which facts a lines-layout SCP target keeps under scp.max_target_tokens (issue 28's plateau)."""

import pytest
from transformers import AutoTokenizer

from clara.errors import ConfigError
from clara.eval.target_coverage import main, relation_coverage


@pytest.fixture(scope="module")
def tok(tiny_backbone):
    return AutoTokenizer.from_pretrained(tiny_backbone)


def test_a_long_enough_target_trains_every_fact_and_a_short_one_only_the_first(tok):
    whole = relation_coverage(tok, 12, seed=3, world_ranges=300, max_target_tokens=100_000)
    assert whole and all(r["trained"] == r["stated"] > 0 for r in whole.values())
    cut = relation_coverage(tok, 12, seed=3, world_ranges=300, max_target_tokens=40)
    assert {k: r["stated"] for k, r in cut.items()} == {k: r["stated"] for k, r in whole.items()}
    # people's documents state birth year first and their employer later: the cut keeps the one, not the other
    assert cut["birth_year"]["trained"] == cut["birth_year"]["stated"]
    assert cut["employer"]["trained"] == 0 < cut["employer"]["stated"]
    assert all(cut[k]["trained"] <= whole[k]["trained"] for k in cut)


def test_rows_are_refused_and_the_cli_writes_its_table(tok, tiny_backbone, tmp_path, capsys):
    with pytest.raises(ConfigError, match="rows"):
        relation_coverage(tok, 2, layout="rows")
    out = tmp_path / "coverage.json"
    assert main(["--tokenizer", str(tiny_backbone), "--docs", "4", "--max-target-tokens", "40", "--out", str(out)]) == 0
    assert "| birth_year |" in capsys.readouterr().out and out.is_file()
