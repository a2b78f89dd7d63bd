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


def test_scores_by_group_hand_values():
    from clara.eval.compression import scores_by_group

    recs = [{"answers": ["Tovin"], "memory": {"prediction": "Tovin"}, "nll_right": 1.0, "nll_wrong": 4.0},
            {"answers": ["Ann Bell"], "memory": {"prediction": "the bell"}, "nll_right": 2.0, "nll_wrong": 3.0},
            {"answers": ["Oslo"], "memory": {"prediction": "in Oslo"}, "nll_right": 0.5, "nll_wrong": 0.5}]
    rows = scores_by_group(["nq", "nq", "trivia"], recs, ["memory"])
    assert list(rows) == ["nq", "trivia"] and rows["nq"]["n"] == 2
    assert rows["nq"]["memory"]["em"] == 0.5 and rows["nq"]["memory"]["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert rows["trivia"]["memory"]["cover_em"] == 1.0 and rows["trivia"]["memory"]["em"] == 0.0
    assert (rows["nq"]["nll_right"], rows["nq"]["nll_wrong"], rows["trivia"]["nll_wrong"]) == (1.5, 3.5, 0.5)


def test_cli_run_with_cr_filter(world_and_adapters, tmp_path):
    root, world, _, adapters = world_and_adapters
    res = run_compression_eval([str(root / "run")], str(world), crs=[8], limit=4,
                               settings=["memory", "wrong_memory"], batch_size=4, max_new_tokens=2,
                               precision="fp32")  # fmt: skip
    (run,) = res["runs"]
    assert run["cr"] == 8 and run["model"] == str(adapters) and set(run["settings"]) == {"memory", "wrong_memory"}
    assert run["precision"] == "fp32"  # as asked, not the machine's auto choice
    res = run_compression_eval([str(adapters)], str(world), limit=2, settings=["memory"], batch_size=2,
                               max_new_tokens=1, precision="bf16")
    assert res["runs"][0]["precision"] == "bf16"
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


def _qa_file(path):
    import json

    rows = [
        {"data_type": "qa", "source": "trivia", "doc": "Mara Kellen was born in Tovin in 1975.",
         "pairs": [{"question": "Where was Mara born?", "answer": "Tovin"},
                   {"question": "When was Mara born?", "answer": "1975"}]},
        {"data_type": "qa", "question": ["Who founded Feis Systems?"], "answers": ["Ann Bell"],
         "docs": ["Feis Systems was founded by Ann Bell."]},
        {"data_type": "paraphrase", "doc": "Oslo is the capital of Norway.", "paraphrase": "Norway's capital: Oslo."},
        {"data_type": "qa", "source": "trivia", "doc": "Oslo is the capital of Norway.",
         "pairs": [{"question": "What is the capital of Norway?", "answer": "Oslo"}]},
        {"data_type": "qa", "question": ["Who started Feis Systems?"], "answers": ["Ann Bell"],
         "docs": ["Feis Systems was founded by Ann Bell."]},  # the same document as line 2
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_data_file_questions_documents_and_limit(tmp_path):
    from clara.eval.compression import load_data_questions

    path = _qa_file(tmp_path / "mine.jsonl")
    questions, documents, skipped = load_data_questions([str(path)], None)
    assert skipped == 1
    assert [q["answers"] for q in questions] == [["Tovin"], ["1975"], ["Ann Bell"], ["Oslo"], ["Ann Bell"]]
    assert [q["source"] for q in questions] == ["trivia", "trivia", "mine.jsonl", "trivia", "mine.jsonl"]
    assert [q["gold_ids"][0] for q in questions] == [f"{path}:{n}" for n in (1, 1, 2, 4, 2)]
    assert documents[f"{path}:4"]["text"] == "Oslo is the capital of Norway." and len(documents) == 3
    assert len(load_data_questions([str(path)], 3)[0]) == 3


def test_data_file_bad_input_is_one_line_naming_file_and_line(tmp_path):
    from clara.eval.compression import load_data_questions

    path = _qa_file(tmp_path / "mine.jsonl")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"answer": "Oslo"', '"answer": 3')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as e:
        load_data_questions([str(path)], None)
    assert str(e.value) == f"{path}:4: pairs[0].answer: expected a string, got 3"
    para = tmp_path / "para.jsonl"
    para.write_text(lines[2] + "\n")
    with pytest.raises(DataError, match=f"^{para}: no qa records \\(1 paraphrase record\\(s\\) skipped\\)"):
        load_data_questions([str(para)], None)


def test_data_file_is_scored_per_source_with_wrong_memory_from_another_document(world_and_adapters, tmp_path):
    from clara.eval.compression import format_table

    _, _, _, adapters = world_and_adapters
    path = _qa_file(tmp_path / "mine.jsonl")
    res = run_compression_eval([str(adapters)], data=[str(path)], limit=0, batch_size=3, max_new_tokens=2)
    assert res["data"] == [str(path)] and res["skipped_paraphrase"] == 1
    (run,) = res["runs"]
    assert run["n"] == 5 and run["documents"] == 3 and list(run["settings"]) == list(SETTINGS)
    # wrong memory: the next question's document that differs, cyclically (line 1 -> 2 -> 4 -> 2 -> 1)
    recs = run["records"]
    assert [r["doc_id"] for r in recs] == [f"{path}:{n}" for n in (1, 1, 2, 4, 2)]
    assert [r["wrong_doc_id"] for r in recs] == [f"{path}:{n}" for n in (2, 2, 4, 2, 1)]
    # the wrong memory is really another document's: the same answer is scored differently
    assert all(r["nll_right"] != r["nll_wrong"] for r in recs)
    by_source = run["by_source"]
    assert {s: row["n"] for s, row in by_source.items()} == {"mine.jsonl": 2, "trivia": 3}
    for setting in SETTINGS:  # the sources' scores, weighted by n, are the overall scores
        for metric in ("em", "f1", "cover_em"):
            total = sum(row[setting][metric] * row["n"] for row in by_source.values()) / 5
            assert total == pytest.approx(run["settings"][setting][metric])
    for key in ("nll_right", "nll_wrong"):
        assert sum(row[key] * row["n"] for row in by_source.values()) / 5 == pytest.approx(run[key])
    table = format_table(res)
    for source, n in (("mine.jsonl", 2), ("trivia", 3), ("all", 5)):
        for setting in SETTINGS:
            assert f"| 8 | {source} | {setting} | {n} |" in table
    assert "| relation |" not in table


def test_cli_data_flag(world_and_adapters, tmp_path, capsys):
    from clara.cli.main import main as clara_main

    _, world, _, adapters = world_and_adapters
    path = _qa_file(tmp_path / "mine.jsonl")
    args = ["eval", "compression", "--model", str(adapters), "--settings", "memory,wrong_memory",
            "--max-new-tokens", "2", "--limit", "3"]  # fmt: skip
    assert clara_main(args + ["--data", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"compression eval: 3 questions on 2 documents from {path} (1 paraphrase record(s) skipped)")
    assert "| 8 | trivia | memory | 2 |" in out and "| 8 | mine.jsonl | wrong_memory | 1 |" in out
    path.write_text('{"data_type": "qa", "doc": "d", "pairs": [], "source": "x"}\n')
    assert clara_main(args + ["--data", str(path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: {path}:1: pairs: must not be an empty array"
    with pytest.raises(SystemExit):  # --world and --data are one or the other
        clara_main(args + ["--data", str(path), "--world", str(world)])
