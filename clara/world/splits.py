"""Train/dev/test by question, plus test_unseen over entities never asked about in training; and how
a stage reads one split back (joint records, from a world directory or the config's data files).
"""

from __future__ import annotations

import random
from pathlib import Path

from clara.config import ClaraConfig
from clara.errors import ConfigError, DataError

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


def world_questions(world: str | Path, split: str) -> Path:
    return Path(world) / "questions" / f"{split}.jsonl"


def world_split(world: str | Path, split: str) -> list:
    """Joint records of one split of a `clara world` directory (candidates resolved from its corpus)."""
    from clara.data.jsonl import read_records

    path = world_questions(world, split)
    if not path.is_file():
        raise DataError(f"{path}: missing; create the world with `clara world --out {world}`")
    return read_records(path, "joint", corpus=Path(world) / "documents.jsonl")


def load_split(cfg: ClaraConfig, split: str, train: bool) -> list:
    """Joint records of one split: ``data.train_file``/``data.eval_file`` if set, else the world's split.

    Training also reads the same split of every ``joint.train_worlds`` directory."""
    from clara.data.jsonl import read_records

    file = cfg.data.train_file if train else cfg.data.eval_file
    if file:
        records, source = read_records(file, "joint", skip_bad=cfg.data.skip_bad_records), file
    elif cfg.joint.world:
        records, source = world_split(cfg.joint.world, split), world_questions(cfg.joint.world, split)
    else:
        raise ConfigError("config key 'data.train_file': empty and joint.world is empty; give one of them")
    sources = [(source, records)]
    if train:
        sources += [(world_questions(w, split), world_split(w, split)) for w in cfg.joint.train_worlds]
    n = cfg.joint.candidates
    for source, part in sources:
        for r in part:
            if len(r.candidates) != n:
                raise DataError(f"{source}: question {r.id}: docs: {len(r.candidates)} candidates, "
                                f"but joint.candidates={n}; set joint.candidates to match the data")
    return [r for _, part in sources for r in part]
