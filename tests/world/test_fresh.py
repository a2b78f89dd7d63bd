"""The endless fresh-document stream never repeats an entity."""

from itertools import islice

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
