"""ResumableBatches: deterministic order, exact resume, disjoint DDP shards, clear errors."""

import pytest

from clara.errors import CheckpointError, DataError
from clara.training import ResumableBatches


def stream(n=10, bs=3, seed=7):
    return ResumableBatches(list(range(n)), bs, seed=seed)


def test_state_resumes_at_the_exact_next_batch_across_epochs():
    a = stream()
    a.set_shard(0, 1)
    for _ in range(5):  # 3 batches per epoch: crosses into epoch 1
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(6)]
    b = stream()
    b.set_shard(0, 1)
    b.load_state_dict(state)
    assert [b.next_batch() for _ in range(6)] == expected
    assert state["epoch"] == 1 and state["position"] == 2


def test_order_depends_on_seed_and_epoch_only():
    a, b = stream(), stream()
    epoch0 = [x for _ in range(3) for x in a.next_batch()]
    epoch1 = [x for _ in range(3) for x in a.next_batch()]
    assert epoch0 != epoch1 and len(set(epoch0)) == 9  # reshuffled, no repeats within an epoch
    assert [x for _ in range(3) for x in b.next_batch()] == epoch0
    assert [x for _ in range(3) for x in stream(seed=8).next_batch()] != epoch0


def test_ranks_take_disjoint_slices_of_each_global_batch():
    ranks = [stream(n=13, bs=2) for _ in range(2)]
    for r, s in enumerate(ranks):
        s.set_shard(r, 2)
    assert ranks[0].batches_per_epoch == 3  # 13 // (2 * 2), remainder dropped
    seen = [ranks[r].next_batch() for _ in range(3) for r in range(2)]
    flat = [x for batch in seen for x in batch]
    assert len(flat) == len(set(flat)) == 12


def test_mismatched_state_is_refused():
    a = stream()
    with pytest.raises(CheckpointError, match="batch_size=3 but this run has batch_size=4"):
        stream(bs=4).load_state_dict(a.state_dict())


def test_dataset_smaller_than_a_global_batch_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one global batch"):
        ResumableBatches(list(range(5)), 4).set_shard(1, 2)


def test_an_in_order_stream_that_grew_resumes_where_it_stopped():
    """A longer fresh-document run (train.max_steps raised) keeps the prefix it already read."""
    short = ResumableBatches(list(range(12)), 3, shuffle=False)
    short.set_shard(0, 1)
    seen = [short.next_batch() for _ in range(2)]
    longer = ResumableBatches(list(range(30)), 3, shuffle=False)
    longer.set_shard(0, 1)
    longer.load_state_dict(short.state_dict())
    assert seen == [[0, 1, 2], [3, 4, 5]] and longer.next_batch() == [6, 7, 8]
    shuffled = ResumableBatches(list(range(30)), 3, seed=7)
    shuffled.set_shard(0, 1)
    with pytest.raises(CheckpointError, match="items=12"):  # a reshuffled order would not keep the prefix
        shuffled.load_state_dict({**short.state_dict(), "seed": 7})
    shrunk = ResumableBatches(list(range(6)), 3, shuffle=False)
    shrunk.set_shard(0, 1)
    with pytest.raises(CheckpointError, match="items=12"):
        shrunk.load_state_dict(short.state_dict())


def test_a_stream_read_to_its_end_goes_on_into_the_grown_part():
    short = ResumableBatches(list(range(6)), 3, shuffle=False)
    short.set_shard(0, 1)
    short.next_batch(), short.next_batch()  # the whole first (and only planned) epoch
    longer = ResumableBatches(list(range(12)), 3, shuffle=False)
    longer.set_shard(0, 1)
    longer.load_state_dict(short.state_dict())
    assert longer.next_batch() == [6, 7, 8]
