"""Train/dev/test by question, plus test_unseen over entities never asked about in training."""

from __future__ import annotations

import random

SPLITS = ("train", "dev", "test", "test_unseen")


def split_questions(
    questions: list[dict],
    entity_ids: list[str],
    rng: random.Random,
    unseen_fraction: float = 0.1,
    dev_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> dict[str, list[dict]]:
    """Hold out ``unseen_fraction`` of all entities: every question about one of them goes to
    test_unseen; the rest is shuffled and cut into train/dev/test."""
    held = set(rng.sample(sorted(entity_ids), round(unseen_fraction * len(entity_ids))))
    unseen = [q for q in questions if held & set(q["entity_ids"])]
    seen = [q for q in questions if not held & set(q["entity_ids"])]
    rng.shuffle(seen)
    n_dev, n_test = round(dev_fraction * len(seen)), round(test_fraction * len(seen))
    return {
        "train": seen[n_dev + n_test :],
        "dev": seen[:n_dev],
        "test": seen[n_dev : n_dev + n_test],
        "test_unseen": unseen,
    }
