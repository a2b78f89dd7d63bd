"""Compression evaluation mechanics on the tiny backbone (numbers meaningless; columns and plumbing checked)."""

import math

import pytest

from clara.errors import CheckpointError, DataError
from clara.eval.compression import SETTINGS, evaluate_compression, run_compression_eval, wrong_indices


@pytest.fixture(scope="module")
def world_and_adapters(tmp_path_factory):
    from clara.model.backbone import build_tiny_backbone
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel
    from clara.world import generate_world, write_world

    root = tmp_path_factory.mktemp("compression")
    backbone = build_tiny_backbone(root / "tiny", seed=0)
    world = write_world(generate_world(seed=0, entities=30), root / "world")
    cfg = ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8, lora=LoraConfig(r=4, alpha=8))
    model = ClaraModel.from_config(cfg)
    adapters = model.save_adapters(root / "run" / "adapters")
    return root, world, model, adapters


def test_wrong_indices_always_pick_another_document():
    ids = ["a", "a", "b", "c", "c", "c"]
    wrong = wrong_indices(ids)
    assert all(ids[w] != ids[i] for i, w in enumerate(wrong))
    with pytest.raises(DataError):
        wrong_indices(["a", "a"])


def test_evaluate_compression_reports_every_setting(world_and_adapters):
    from clara.eval.reading import load_world_questions

    _, world, model, _ = world_and_adapters
    questions, documents = load_world_questions(str(world), ["test_unseen", "test"], ["single_hop"], 6)
    res = evaluate_compression(model, questions, documents, batch_size=3, max_new_tokens=3)
    assert list(res["settings"]) == list(SETTINGS)
    for s in res["settings"].values():
        assert s["n"] == res["n"] == 6 and {"em", "f1", "cover_em"} <= s.keys()
    assert -1.0 <= res["mem_cos"] <= 1.0 and res["documents"] >= 2
    assert math.isfinite(res["nll_right"]) and math.isfinite(res["nll_wrong"])
    for rec in res["records"]:
        assert rec["wrong_doc_id"] != rec["doc_id"]
        assert all(s in rec for s in SETTINGS)
    by_rel = res["em_by_relation"]
    assert sum(r["n"] for r in by_rel.values()) == 6 and set(by_rel) <= {q["relation"] for q in questions}
    for setting in ("memory", "wrong_memory"):  # the relations' EM, weighted by n, is the overall EM
        total = sum(r[setting] * r["n"] for r in by_rel.values()) / 6
        assert total == pytest.approx(res["settings"][setting]["em"])


def test_em_by_relation_hand_values():
    from clara.eval.compression import em_by_relation

    qs = [{"relation": "birth_city"}, {"relation": "birth_city"}, {"relation": "employer"}]
    recs = [{"answers": ["Tovin"], "memory": {"prediction": "Tovin"}},
            {"answers": ["Maath"], "memory": {"prediction": "Vathruskonia"}},
            {"answers": ["Feis Systems"], "memory": {"prediction": "feis systems"}}]
    assert em_by_relation(qs, recs, ["memory"]) == {"birth_city": {"n": 2, "memory": 0.5},
                                                    "employer": {"n": 1, "memory": 1.0}}


def test_cli_run_with_cr_filter(world_and_adapters, tmp_path):
    root, world, _, adapters = world_and_adapters
    res = run_compression_eval([str(root / "run")], str(world), crs=[8], limit=4,
                               settings=["memory", "wrong_memory"], batch_size=4, max_new_tokens=2)  # fmt: skip
    (run,) = res["runs"]
    assert run["cr"] == 8 and run["model"] == str(adapters) and set(run["settings"]) == {"memory", "wrong_memory"}
    with pytest.raises(CheckpointError, match="--cr 16"):
        run_compression_eval([str(adapters)], str(world), crs=[8, 16], limit=4, settings=["memory"])
    with pytest.raises(CheckpointError, match="no clara_model.json"):
        run_compression_eval([str(tmp_path)], str(world), limit=4)


def test_answer_choices_take_distractors_from_the_same_relation():
    from clara.eval.compression import answer_choices

    qs = [{"answers": ["Oslo"], "relation": "birth_city"}, {"answers": ["Rome", "Roma"], "relation": "birth_city"},
          {"answers": ["Lima"], "relation": "birth_city"}, {"answers": ["1901"], "relation": "birth_year"},
          {"answers": ["1950"], "relation": "birth_year"}]  # fmt: skip
    choices = answer_choices(qs, n_choices=3)
    assert choices == answer_choices(qs, n_choices=3)  # seeded
    assert [c[0] for c in choices] == ["Oslo", "Rome", "Lima", "1901", "1950"]
    assert sorted(choices[0][1:]) == ["Lima", "Rome"] and sorted(choices[1][1:]) == ["Lima", "Oslo"]
    assert choices[3] == ["1901", "1950"]  # only one other birth year exists


def test_choice_accuracy_ranks_by_summed_answer_loss():
    import torch

    from clara.eval.compression import choice_accuracy

    class Scorer:  # loss 0 for the answer marked as the one the memory holds, else the answer's length
        device = torch.device("cpu")

        def __init__(self, held):
            self.held = held

        def generator_loss(self, questions, mem, targets, reduction):
            assert reduction == "sum" and mem.shape[1] == 1
            return torch.tensor([0.0 if t.endswith(self.held) else float(len(t)) for t in targets])

    choices = [["Oslo", "Rome", "Lima"], ["1901", "1950"], ["only"]]
    mem = torch.zeros(3, 2, 4)
    assert choice_accuracy(Scorer("Oslo"), ["q1", "q2", "q3"], choices, mem, batch_size=2) == 0.5
    assert choice_accuracy(Scorer("1950"), ["q1", "q2", "q3"], choices, mem, batch_size=4) == 0.0
    assert math.isnan(choice_accuracy(Scorer("x"), ["q3"], [["only"]], mem[:1]))


def test_generator_loss_sum_is_the_mean_times_the_answer_tokens(world_and_adapters):
    import torch

    _, _, model, _ = world_and_adapters
    mem = torch.randn(2, 1, model.num_mem, model.hidden_size)
    answers = ["Oslo", "a much longer answer than that"]
    with torch.no_grad():
        mean = model.generator_loss(["q?", "q?"], mem, answers, reduction="none")
        total = model.generator_loss(["q?", "q?"], mem, answers, reduction="sum")
    counts = torch.tensor([len(model._answer_ids(a, 128)) for a in answers], dtype=torch.float)
    assert torch.allclose(total, mean * counts, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        model.generator_loss(["q?"], mem[:1], ["a"], reduction="max")
