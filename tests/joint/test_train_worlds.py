"""joint.train_worlds: more worlds' training questions join stage 2's training set, evaluation stays put."""

import dataclasses
import json

import pytest

from clara.config import ClaraConfig, from_dict
from clara.errors import DataError
from clara.world.splits import load_split, world_split
from tests.joint.conftest import joint_dict


@pytest.fixture
def second_world(tmp_path_factory):
    from clara.world import generate_world, write_world

    return write_world(generate_world(seed=5, entities=40, candidates=8), tmp_path_factory.mktemp("worlds") / "w5")


def with_worlds(cfg: ClaraConfig, *worlds) -> ClaraConfig:
    return dataclasses.replace(cfg, joint=dataclasses.replace(cfg.joint, train_worlds=tuple(map(str, worlds))))


def test_train_worlds_add_their_training_questions_and_not_their_eval_ones(joint_cfg, second_world):
    cfg = joint_cfg()
    own, dev = load_split(cfg, "train", train=True), load_split(cfg, "dev", train=False)
    other = world_split(second_world, "train")
    both = with_worlds(cfg, second_world)
    merged = load_split(both, "train", train=True)
    assert [r.question for r in merged] == [r.question for r in own + other]
    # the other world's candidates are its own documents (read from its corpus), not the first world's
    texts = {json.loads(line)["text"] for line in (second_world / "documents.jsonl").read_text().splitlines()}
    assert all(d.text in texts for r in merged[len(own):] for d in r.candidates)
    assert [r.question for r in load_split(both, "dev", train=False)] == [r.question for r in dev]


def test_a_train_world_with_the_wrong_candidate_count_is_named(joint_cfg, tmp_path):
    from clara.world import generate_world, write_world

    wide = write_world(generate_world(seed=6, entities=40, candidates=10), tmp_path / "wide")
    with pytest.raises(DataError, match=r"wide/questions/train\.jsonl: question .*10 candidates.*joint\.candidates=8"):
        load_split(with_worlds(joint_cfg(), wide), "train", train=True)
    with pytest.raises(DataError, match=r"missing/questions/train\.jsonl: missing"):
        load_split(with_worlds(joint_cfg(), tmp_path / "missing"), "train", train=True)


def test_train_worlds_parse_from_an_override(tiny_backbone, world_dir, tmp_path):
    from clara.config import apply_overrides

    data = apply_overrides(joint_dict(tiny_backbone, world_dir, tmp_path / "r", tmp_path / "c"),
                           [f"joint.train_worlds=[{tmp_path}/a,{tmp_path}/b]"])
    cfg = from_dict(ClaraConfig, data)
    assert cfg.joint.train_worlds == (f"{tmp_path}/a", f"{tmp_path}/b")
