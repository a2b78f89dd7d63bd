"""Reading evaluation mechanics on the tiny backbone (quality on SmolLM2 is a slow test)."""

import json
import re
import subprocess
import sys

import pytest
import torch

from clara.model.backbone import build_tiny_backbone, load_backbone
from clara.config import BackboneKind
from clara.eval.reading import evaluate_reading, generate_replies, select_questions
from clara.model.prompts import ANSWER_INSTRUCTION, build_messages, extract_answer

DOCS = [
    {"id": "d1", "title": "Velmar Osk", "text": "Velmar Osk was born in Trenbury. The answer is Trenbury."},
    {"id": "d2", "title": "Halden Works", "text": "Halden Works was founded in 1877. The answer is 1877."},
    {"id": "d3", "title": "Irna Vell", "text": "Irna Vell works for Quorra Guild. The answer is Quorra Guild."},
]
QUESTIONS = [
    {"id": "q1", "question": "Where was Velmar Osk born?", "answers": ["Trenbury"], "type": "single_hop", "gold_ids": ["d1"]},
    {"id": "q2", "question": "When was Halden Works founded?", "answers": ["1877"], "type": "single_hop", "gold_ids": ["d2"]},
    {"id": "q3", "question": "Who employs Irna Vell?", "answers": ["Quorra Guild"], "type": "single_hop", "gold_ids": ["d3"]},
    {"id": "q4", "question": "Who employs both?", "answers": ["x"], "type": "comparison", "gold_ids": ["d1", "d3"]},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_backbone(tmp_path_factory.mktemp("bb") / "tiny", hidden=64, layers=2, heads=4, vocab_size=600)
    return path, *load_backbone(path, BackboneKind.TINY)


class ReadsTheAnswerLine:
    """A stand-in model that answers open-book prompts perfectly: it copies the document's
    'The answer is X.' and then emits EOS and junk, as a real model's batch would."""

    def __init__(self, tok):
        self.tok = tok

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        rows = []
        for ids, mask in zip(input_ids, attention_mask):
            prompt = self.tok.decode(ids[mask.bool()])
            m = re.search(r"The answer is (.+?)\.", prompt)
            reply = (m.group(1) if m else "I do not know") + "\nmore text"
            new = self.tok(reply, add_special_tokens=False).input_ids + [self.tok.eos_token_id] + [7] * 3
            rows.append(torch.tensor(ids.tolist() + new[:max_new_tokens]))
        width = max(len(r) for r in rows)
        return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=self.tok.pad_token_id) for r in rows])


def test_messages_open_and_closed_book():
    open_book = build_messages("Q?", "Some document.")
    closed = build_messages("Q?", None)
    assert "Some document." in open_book[-1]["content"] and "Some document." not in closed[-1]["content"]
    assert open_book[-1]["content"].endswith(ANSWER_INSTRUCTION)
    few = build_messages("Q?", "Doc.", style="fewshot")
    assert [m["role"] for m in few] == ["system", "user", "assistant", "user"]
    assert "Doc." not in few[1]["content"]  # the demonstration is about invented facts
    assert "Document:" not in build_messages("Q?", None, style="fewshot")[1]["content"]
    with pytest.raises(ValueError):
        build_messages("Q?", None, style="nope")


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("Paris", "Paris"),
        ("Paris.\nIt is the capital.", "Paris"),
        ('The answer is "1877"', '"1877"'),
        ("Answer: Quorra Guild.", "Quorra Guild"),
        ("\n\n  Trenbury  ", "Trenbury"),
        ("", ""),
    ],
)
def test_extract_answer(reply, answer):
    assert extract_answer(reply) == answer


def test_select_questions_filters_type_and_limit():
    assert [q["id"] for q in select_questions(QUESTIONS)] == ["q1", "q2", "q3"]
    assert [q["id"] for q in select_questions(QUESTIONS, limit=2)] == ["q1", "q2"]
    assert len(select_questions(QUESTIONS, types=None)) == 4


def test_batched_generation_equals_one_at_a_time(tiny):
    _, model, tok = tiny
    convs = [build_messages(q["question"], d["text"] if i % 2 else None) for i, (q, d) in enumerate(zip(QUESTIONS, DOCS))]
    one, stats1 = generate_replies(model, tok, convs, batch_size=1, max_new_tokens=6)
    batched, stats3 = generate_replies(model, tok, convs, batch_size=3, max_new_tokens=6)
    assert one == batched  # left padding and the attention mask leave greedy answers unchanged
    assert stats1["prompt_tokens"] == stats3["prompt_tokens"] > 0
    assert 0 < stats1["new_tokens"] <= 6 * len(convs)


def test_evaluate_reading_scores_open_book_against_closed_book(tiny):
    _, _, tok = tiny
    result = evaluate_reading(ReadsTheAnswerLine(tok), tok, QUESTIONS[:3], DOCS, batch_size=2, max_new_tokens=32)
    ob, cb = result["settings"]["open_book"], result["settings"]["closed_book"]
    assert (ob["em"], ob["f1"], ob["cover_em"]) == (1.0, 1.0, 1.0)
    assert (cb["em"], cb["cover_em"]) == (0.0, 0.0)
    rec = result["records"][2]
    assert rec["open_book"]["prediction"] == "Quorra Guild"
    assert rec["open_book"]["reply"] == "Quorra Guild\nmore text"  # cut at EOS, junk after it dropped
    assert rec["closed_book"]["prediction"] == "I do not know"
    assert ob["new_tokens"] > 0 and ob["seconds"] > 0


def test_evaluate_reading_real_tiny_model_runs(tiny):
    _, model, tok = tiny
    result = evaluate_reading(model, tok, QUESTIONS[:2], DOCS, settings=("open_book",), max_new_tokens=4)
    assert set(result["settings"]) == {"open_book"}
    assert 0.0 <= result["settings"]["open_book"]["f1"] <= 1.0
    assert all("open_book" in r and "closed_book" not in r for r in result["records"])


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from clara.world import generate_world, write_world

    return write_world(generate_world(0, 30), tmp_path_factory.mktemp("w") / "world")


def test_cli_reading_writes_results(tiny, small_world, tmp_path):
    path, _, _ = tiny
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "clara.cli", "eval", "reading", "--backbone", str(path), "--kind", "tiny",
           "--world", str(small_world), "--split", "train,test", "--limit", "3", "--max-new-tokens", "3",
           "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert "| open_book | 3 |" in r.stdout and "| closed_book | 3 |" in r.stdout
    res = json.loads(out.read_text())
    assert res["n"] == 3 and res["splits"] == ["train", "test"] and len(res["records"]) == 3
    assert res["backbone_hash"] and set(res["settings"]) == {"open_book", "closed_book"}


def test_cli_reading_unknown_split_is_one_line_error(tiny, small_world):
    path, _, _ = tiny
    cmd = [sys.executable, "-m", "clara.cli", "eval", "reading", "--backbone", str(path), "--kind", "tiny",
           "--world", str(small_world), "--split", "nosuch"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "nosuch" in r.stderr
