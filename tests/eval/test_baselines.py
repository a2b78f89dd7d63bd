"""BM25 and MiniLM rank the same candidates sensibly on a small world."""

import pytest

from clara.eval.baselines import bm25_rankings, minilm_rankings
from clara.eval.retrieval import load_eval_records
from clara.model.scoring import ALL, recall_by_type


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    from clara.world import generate_world, write_world

    world = write_world(generate_world(seed=0, entities=40, candidates=8), tmp_path_factory.mktemp("w") / "w")
    return load_eval_records(world=str(world), splits=["train"], types=["single_hop", "two_hop_linked"])


def check_sane(rankings, records):
    assert [sorted(r) for r in rankings] == [list(range(len(x.candidates))) for x in records]
    table = recall_by_type(rankings, records, ks=(1, 8))
    assert table[ALL]["R@8"] == 1.0  # every candidate ranked: all gold found
    chance = 1 / 8
    assert table["single_hop"]["R@1"] > 0.7 > 3 * chance  # names in the question match the article
    return table


def test_bm25_recall(records):
    table = check_sane(bm25_rankings(records), records)
    assert table["two_hop_linked"]["R@1"] >= 0.4


def test_minilm_recall(records):
    check_sane(minilm_rankings(records), records)
