"""Splits are disjoint by question; test_unseen is about entities never asked about in training."""

import random

from clara.world import SPLITS
from clara.world.splits import split_questions


def test_splits_are_disjoint(world300):
    ids = [q["id"] for s in SPLITS for q in world300.questions[s]]
    assert len(ids) == len(set(ids))
    texts = {s: {q["question"] for q in world300.questions[s]} for s in SPLITS}
    assert not texts["train"] & texts["test"]


def test_test_unseen_entities_never_in_training(world300):
    seen = {e for s in ("train", "dev", "test") for q in world300.questions[s] for e in q["entity_ids"]}
    unseen_questions = world300.questions["test_unseen"]
    assert len(unseen_questions) >= 50
    for q in unseen_questions:
        assert set(q["entity_ids"]) - seen, q
    train_docs = {d for q in world300.questions["train"] for d in q["gold_ids"]}
    held = {e for q in unseen_questions for e in q["entity_ids"]} - seen
    held_docs = {d["id"] for d in world300.documents if d["entity_id"] in held}
    assert held_docs and not held_docs & train_docs


def test_split_questions_fractions():
    questions = [{"id": i, "entity_ids": [f"e{i % 50}"]} for i in range(500)]
    splits = split_questions(questions, [f"e{i}" for i in range(50)], random.Random(0))
    assert len(splits["test_unseen"]) == 50  # 5 of 50 entities held out, 10 questions each
    assert len(splits["dev"]) == len(splits["test"]) == 45
    assert sum(map(len, splits.values())) == 500
