"""The endless fresh-document stream never repeats an entity."""

from itertools import islice

import pytest

from clara.world import iter_fresh_documents
from clara.world.questions import states


def test_fresh_documents_are_distinct_and_answerable():
    docs = list(islice(iter_fresh_documents(seed=0), 300))  # spans several batches of 40
    assert len({d["title"] for d in docs}) == 300
    assert len({d["id"] for d in docs}) == len({d["entity_id"] for d in docs}) == 300
    for d in docs:
        assert d["qa"] and len(d["qa"]) == len(d["facts"])
        assert len({f["relation"] for f in d["facts"]}) == len(d["facts"])  # no fact repeated
        for pair in d["qa"]:
            assert states(d["text"], pair["answer"]), (pair, d["text"])
            assert d["title"] in pair["question"]
        assert len(d["text"].split()) <= 180


def test_fresh_stream_is_deterministic_and_seed_dependent():
    a = [d["text"] for d in islice(iter_fresh_documents(seed=3), 50)]
    b = [d["text"] for d in islice(iter_fresh_documents(seed=3), 50)]
    c = [d["text"] for d in islice(iter_fresh_documents(seed=4), 50)]
    assert a == b and a != c


def test_fresh_stream_avoids_excluded_names():
    first = {d["title"] for d in islice(iter_fresh_documents(seed=1), 100)}
    again = {d["title"] for d in islice(iter_fresh_documents(seed=1, exclude_names=first), 100)}
    assert first.isdisjoint(again)


def test_default_stream_is_unchanged_by_world_ranges():
    """world_ranges=0 (the default) is the stream every release asset and reader backbone trained on: pinned."""
    import hashlib

    h = hashlib.sha256()
    for d in islice(iter_fresh_documents(seed=5), 120):
        h.update(d["text"].encode())
    assert h.hexdigest()[:16] == "abd2f4eb099b860a"


def _facts(seed: int, n: int, world_ranges: int) -> list[dict]:
    return [f for d in islice(iter_fresh_documents(seed, world_ranges=world_ranges), n) for f in d["facts"]]


def test_world_ranges_give_small_batches_a_worlds_values():
    """Each 40-entity batch on its own ranges has every birth year in the 1990s, no mentor and 4 occupations
    (issue 28: world 9 asks for 1930s-1990s years and mentors); with a 300-entity world's ranges it has them."""
    from clara.errors import ConfigError
    from clara.world.entities import OCCUPATIONS

    def of(facts, relation):
        return [f["value"] for f in facts if f["relation"] == relation]

    narrow, wide = _facts(7, 400, 0), _facts(7, 400, 300)
    assert {str(y)[:3] for y in of(narrow, "birth_year")} == {"199"}
    assert not of(narrow, "mentor") and len(set(of(narrow, "occupation"))) == 4
    decades = {str(y)[:3] for y in of(wide, "birth_year")}
    assert {"193", "194", "195", "196", "197", "198", "199"} <= decades, decades
    assert len(of(wide, "mentor")) > 50
    assert set(of(wide, "occupation")) == set(OCCUPATIONS)
    docs = list(islice(iter_fresh_documents(seed=7, world_ranges=300), 300))
    assert len({d["title"] for d in docs}) == 300  # still never repeats an entity
    with pytest.raises(ConfigError, match="world_ranges"):
        next(iter_fresh_documents(seed=7, world_ranges=12))
