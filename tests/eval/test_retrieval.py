"""Recall@k per question type, the oracle selection, and reading world questions as eval records."""

import pytest

from clara.eval.retrieval import load_eval_records, no_gold_selection, oracle_selection
from clara.model.scoring import ALL, recall_by_type
from clara.data.records import Document, EvalRecord


def rec(pos, qtype, n=5):
    return EvalRecord(question="q", answers=("a",), candidates=tuple(Document(text=str(i)) for i in range(n)),
                      pos_index=tuple(pos), type=qtype)


def test_recall_by_type_averages_per_type_and_overall():
    records = [rec([0], "single_hop"), rec([3], "single_hop"), rec([1, 4], "two_hop_linked")]
    rankings = [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [1, 0, 2, 3, 4]]
    table = recall_by_type(rankings, records, ks=(1, 2, 5))
    assert table["single_hop"] == {"n": 2, "R@1": 0.5, "R@2": 0.5, "R@5": 1.0}
    assert table["two_hop_linked"] == {"n": 1, "R@1": 0.5, "R@2": 0.5, "R@5": 1.0}
    assert table[ALL]["R@1"] == pytest.approx(1.5 / 3) and list(table)[-1] == ALL


def test_oracle_selection_guarantees_gold_and_keeps_the_best_picks():
    assert oracle_selection([4, 3, 2, 1, 0], [0], 3) == [4, 3, 0]
    assert oracle_selection([4, 3, 2, 1, 0], [3], 3) == [4, 3, 2]  # already there: unchanged
    assert sorted(oracle_selection([4, 3, 2, 1, 0], [0, 1], 2)) == [0, 1]


def test_no_gold_selection_keeps_the_best_non_gold_picks():
    assert no_gold_selection([4, 3, 2, 1, 0], [3], 3) == [4, 2, 1]
    assert no_gold_selection([4, 3, 2, 1, 0], [4, 0], 5) == [3, 2, 1]


def test_world_questions_become_records_with_resolved_candidates(tmp_path):
    from clara.world import generate_world, write_world

    world = write_world(generate_world(seed=0, entities=30, candidates=6), tmp_path / "w")
    records = load_eval_records(world=str(world), splits=["train"], types=["single_hop"], limit=5)
    assert len(records) == 5 and all(r.type == "single_hop" and len(r.candidates) == 6 for r in records)
    assert all(r.candidates[r.pos_index[0]].id == r.gold_ids[0] for r in records)
    from clara.errors import DataError

    with pytest.raises(DataError, match="no such split"):
        load_eval_records(world=str(world), splits=["nope"])


def test_answer_eval_reads_the_selected_memory_per_setting():
    import torch

    from clara.eval.retrieval import answer_eval

    class Cache:  # candidate i's memory is filled with the value i
        def candidates(self, records, device):
            return torch.arange(len(records[0].candidates), dtype=torch.float).view(1, -1, 1, 1).expand(1, -1, 2, 3)

    class Reader:  # answers "a" exactly when the gold candidate's memory is among the blocks it reads
        device = torch.device("cpu")
        seen: list = []

        asked: list = []

        def generate(self, questions, blocks, max_new_tokens, reply_prefixes=None, stop=()):
            picks = [sorted(int(v) for v in b[:, 0, 0]) for b in blocks]
            self.seen += picks
            self.asked.append((questions[0], reply_prefixes, stop))
            return ["a" if 3 in p else "z" for p in picks]

    reader = Reader()
    out = answer_eval(reader, [rec([3], "single_hop")], Cache(), [[0, 1, 2, 3, 4]], k=2)
    assert reader.seen == [[0, 1], [0, 3], [0, 1]]  # normal, oracle (gold replaces the 2nd pick), no_gold
    assert (out["normal"]["em"], out["oracle"]["em"], out["no_gold"]["em"]) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="unknown setting"):
        answer_eval(reader, [rec([3], "single_hop")], Cache(), [[0, 1, 2, 3, 4]], settings=["best"])
    from clara.model.prompts import QA_INSTRUCTION

    q = rec([3], "single_hop").question
    assert reader.asked[0] == (q, None, ())  # direct: the question as it is
    reader.asked.clear()
    answer_eval(reader, [rec([3], "single_hop")], Cache(), [[0, 1, 2, 3, 4]], k=2, settings=["normal"], prompt="scp")
    assert reader.asked == [(QA_INSTRUCTION, [f"Question: {q}\nAnswer:"], ("\n",))]


def test_retrieval_cli_writes_the_results_and_their_comparison_plot(tmp_path, capsys):
    import json

    from clara.cli.main import main as clara_main
    from clara.world import generate_world, write_world

    world = write_world(generate_world(seed=0, entities=30, candidates=6), tmp_path / "w")
    out = tmp_path / "ret.json"
    assert clara_main(["eval", "retrieval", "--world", str(world), "--retrievers", "bm25", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results["recall"]) == {"bm25"} and results["recall"]["bm25"][ALL]["n"] == results["n"] > 0
    png = tmp_path / "ret.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert f"the comparison plotted in {png}" in capsys.readouterr().out
    before = png.read_bytes()  # an --out ending in .png is refused: its plot would overwrite it
    assert clara_main(["eval", "retrieval", "--world", str(world), "--retrievers", "bm25", "--out", str(png)]) != 0
    assert "give the JSON file" in capsys.readouterr().err and png.read_bytes() == before
