"""The demo's real-text round (issue 27): real Wikipedia passages, never trained on, answered from memory.

A bank of the held-out passages of ``eval/data/wiki_heldout_questions.jsonl`` (12 articles stage 1
never saw) is built with the real-text release on the stock SmolLM2. Then a few of the hand-written
questions are answered from the gold passage's memory beside the raw passage, a wrong passage's
memory and closed book (``clara eval compression --data``), and through a real server's
``/v1/answer`` on that bank beside raw-text RAG over the same retrieved passages
(:mod:`clara.eval.bank_answers`). The report names the model that answered.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RELEASE = ROOT / "assets" / "scp-smollm2-wiki"
QUESTIONS = ROOT / "eval" / "data" / "wiki_heldout_questions.jsonl"


def add_arguments(p) -> None:
    p.add_argument("--realtext-release", default=str(DEFAULT_RELEASE),
                   help="real-text release adapters (trained on the stock SmolLM2); skipped with a note when absent "
                   "or trained on another backbone")  # fmt: skip
    p.add_argument("--realtext-questions", type=int, default=10,
                   help="held-out Wikipedia questions to answer (of 43); 0 skips the real-text round")


def passages_file(questions: Path, out: Path) -> Path:
    """The gold passages of the question file as a corpus JSONL ({id, title, text}), for a bank."""
    from clara.data.jsonl import iter_json_lines, write_jsonl

    rows = {}
    for _, rec in iter_json_lines(questions):
        title, _, text = rec["doc"].partition("\n")
        rows[rec["doc_id"]] = {"id": rec["doc_id"], "title": title, "text": text}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, rows.values())
    return out


def spread(questions: list[dict], n: int) -> list[int]:
    """Indices of ``n`` questions: the first of each gold passage in file order, then the rest."""
    seen: set[str] = set()
    first = [i for i, q in enumerate(questions) if not (q["gold_ids"][0] in seen or seen.add(q["gold_ids"][0]))]
    rest = [i for i in range(len(questions)) if i not in set(first)]
    return (first + rest)[:n]


def run_realtext(args, backbone: Path, out: Path, timings: dict) -> dict[str, Any]:
    from clara.demo.stage1 import usable_release
    from clara.eval.bank_answers import evaluate_bank_answers, load_pairs
    from clara.eval.compression import evaluate_compression, load_data_questions
    from clara.model.loading import load_trained_model
    from clara.serving.bank import MemoryBank
    from clara.serving.bank_build import build_bank

    release, why = usable_release(Path(args.realtext_release), backbone)
    if release is None:
        print(f"real text: skipped ({why})")
        return {"skipped": why}
    start = time.perf_counter()
    model = load_trained_model(release, backbone)
    n = args.realtext_questions
    questions, documents, _ = load_data_questions([str(QUESTIONS)], None)
    pairs = load_pairs(QUESTIONS)
    pick = spread(questions, n)  # one question per passage first, so the wrong memory is another passage
    memory = evaluate_compression(model, [questions[i] for i in pick], documents, batch_size=8)
    corpus = passages_file(QUESTIONS, out / "realtext" / "passages.jsonl")
    build_bank(corpus, model, out / "realtext" / "bank", progress=False)
    served = evaluate_bank_answers(model, MemoryBank.open(out / "realtext" / "bank"), [pairs[i] for i in pick], k=3)
    timings["real text"] = time.perf_counter() - start
    print(f"real text: {n} held-out Wikipedia questions answered from memory with {release}")
    return {"model": str(release), "backbone": str(backbone), "backbone_hash": model.backbone_hash,
            "compression": memory, "bank": served}  # fmt: skip


def realtext_report(res: dict[str, Any]) -> list[str]:
    from clara.eval.bank_answers import format_table

    lines = ["", "## Real text: held-out Wikipedia articles", ""]
    if "skipped" in res:
        return lines + [f"Skipped: {res['skipped']}."]
    comp = res["compression"]
    lines += [f"- model: `{res['model']}` on the stock backbone `{res['backbone']}` (hash {res['backbone_hash']}); "
              f"none of these 12 articles was trained on", "",
              f"{comp['n']} hand-written questions (`eval/data/wiki_heldout_questions.jsonl`), each asked of its gold "
              f"passage ({comp['num_mem']} memory vectors per {comp['chunk_len']}-token passage):", "",
              "| setting | EM | F1 | Cover-EM |", "|---|---|---|---|"]  # fmt: skip
    for name, s in comp["settings"].items():
        lines.append(f"| {name} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} |")
    lines += ["", "Through a server (`/v1/answer`) on a bank of the 22 held-out passages:", "", format_table(res["bank"]),
              "", "Examples (memory | raw text):", ""]  # fmt: skip
    for r in comp["records"][:5]:
        lines.append(f"- {r['question']} gold `{r['answers'][0]}` | `{r['memory']['prediction']}` | "
                     f"`{r['raw_text']['prediction']}`")  # fmt: skip
    return lines
