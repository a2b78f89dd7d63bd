"""Served answers against raw-text RAG on the same retrieval (issue 27): ``/v1/answer`` over a bank.

    python -m clara.eval.bank_answers --bank out/wiki-bank --model assets/scp-smollm2-wiki \\
        --data eval/data/wiki_heldout_questions.jsonl --k 3 --out out/bank-answers.json

Each QA pair of the pretraining records in ``--data`` is posted to a real server (the app of
``clara serve``, in process, on 127.0.0.1) as ``/v1/answer``. The served answer reads the top-k
passages' memory. Raw-text RAG then gets the *same* top-k passages, as text in the bare
backbone's prompt (the ``raw_text`` setting of ``clara eval compression``, k passages instead of
one). Both are scored with EM, F1 and Cover-EM; retrieval with the hit rate of the gold passage
(the record's ``doc_id``) and of its article (``SRC`` of ``SRC#n``) among the k sources.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from clara.cli.args import add_threads_argument, set_threads

log = logging.getLogger(__name__)


def load_pairs(path: str | Path, limit: int = 0) -> list[dict]:
    """The QA pairs of pretraining records, each with its record's ``doc_id`` (the gold passage)."""
    from clara.data.jsonl import ReadStats, iter_records
    from clara.data.records import DataType
    from clara.errors import DataError

    out = []
    stats = ReadStats(str(path))
    for rec in iter_records(path, "pretrain", stats=stats):
        if rec.data_type is not DataType.QA:
            continue
        if not rec.doc_id:
            raise DataError(f"{path}:{stats.line}: doc_id: missing; the gold passage's id in the bank is needed")
        out += [{"id": f"{rec.doc_id}/{k}", "question": p.question, "answers": [p.answer], "doc_id": rec.doc_id}
                for k, p in enumerate(rec.pairs)]  # fmt: skip
    return out[:limit] if limit else out


def served_answers(model, bank, questions: Sequence[str], k: int, max_new_tokens: int) -> list[dict]:
    """``/v1/answer`` for each question from a server over ``model`` and ``bank``: answer and sources."""
    import httpx

    from clara.serving.schema import ServerSettings
    from clara.serving.server import ServerThread, create_app

    app = create_app(ServerSettings(), model=model, bank=bank)
    out = []
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=600) as client:
        for q in questions:
            r = client.post("/v1/answer", json={"question": q, "k": k, "max_new_tokens": max_new_tokens})
            r.raise_for_status()
            out.append(r.json())
    return out


def article_of(row_id: str) -> str:
    """The source article of a bank row: ``SRC`` of ``SRC#n`` (or of ``SRC#n#m``, a row of a passage
    longer than the model's chunk_len, which index build splits)."""
    return row_id.split("#", 1)[0]


def is_row_of(row_id: str, passage_id: str) -> bool:
    """Whether a bank row holds the passage: its own id, or one of its split rows ``ID#m``."""
    rest = row_id[len(passage_id) + 1:]
    return row_id == passage_id or (row_id.startswith(passage_id + "#") and rest.isdigit())


def evaluate_bank_answers(model, bank, pairs: Sequence[dict], *, k: int = 3, max_new_tokens: int = 16,
                          style: str = "fewshot", batch_size: int = 8) -> dict[str, Any]:  # fmt: skip
    """Served answers and raw-text RAG on the same retrieved passages, scored; with per-question records."""
    from clara.answers import answer_scores
    from clara.eval.reading import evaluate_reading
    from clara.model.prompts import extract_answer

    served = served_answers(model, bank, [p["question"] for p in pairs], k, max_new_tokens)
    row_of = {doc_id: i for i, doc_id in enumerate(bank.ids)}
    documents, questions = {}, []
    for p, s in zip(pairs, served):
        rows = [row_of[src["id"]] for src in s["sources"]]
        documents[p["id"]] = {"id": p["id"], "title": "",
                              "text": "\n\n".join(f"{bank.titles[r]}\n{bank.texts[r]}" for r in rows)}  # fmt: skip
        questions.append({**p, "gold_ids": [p["id"]]})
    with model.using(None):  # the bare backbone, as raw_text in `clara eval compression`
        rag = evaluate_reading(model.lm, model.tokenizer, questions, documents, style=style, batch_size=batch_size,
                               max_new_tokens=max_new_tokens, settings=["open_book"])  # fmt: skip
    golds = [p["answers"] for p in pairs]
    preds = [extract_answer(s["answer"]) for s in served]
    records = []
    for p, s, r in zip(pairs, served, rag["records"]):
        ids = [src["id"] for src in s["sources"]]
        records.append({"question": p["question"], "answers": p["answers"], "gold": p["doc_id"], "sources": ids,
                        "served": s["answer"], "raw_text_rag": r["open_book"]["reply"]})  # fmt: skip
    n = len(pairs)
    return {
        "n": n, "k": k, "bank_size": len(bank.ids),
        "gold_passage_hit": sum(any(is_row_of(s, r["gold"]) for s in r["sources"]) for r in records) / n,
        "gold_article_hit": sum(article_of(r["gold"]) in {article_of(s) for s in r["sources"]} for r in records) / n,
        "served": answer_scores(preds, golds),
        "raw_text_rag": rag["settings"]["open_book"],
        "records": records,
    }  # fmt: skip


def format_table(res: dict[str, Any]) -> str:
    lines = [f"{res['n']} questions, bank of {res['bank_size']} passages, k={res['k']}: gold passage among the k "
             f"{res['gold_passage_hit']:.3f}, gold article {res['gold_article_hit']:.3f}",
             "| | EM | F1 | Cover-EM |", "|---|---|---|---|"]  # fmt: skip
    for name, key in (("CLaRa /v1/answer (memory of the k)", "served"), ("raw-text RAG (same k as text)", "raw_text_rag")):
        s = res[key]
        lines.append(f"| {name} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clara.eval.bank_answers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("--bank", required=True, help="bank directory (clara index build)")
    p.add_argument("--model", required=True, help="the bank's model: adapters directory or release")
    p.add_argument("--backbone", default=None, help="backbone directory, if not the one recorded with the adapters")
    p.add_argument("--data", required=True, help="pretraining QA records whose doc_id names the gold passage in the bank")
    p.add_argument("--k", type=int, default=3, help="passages per answer")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per answer")
    add_threads_argument(p)
    p.add_argument("--out", default=None, help="write scores and every reply to this JSON file")
    args = p.parse_args(argv)
    from clara.cli.console import configure_logging
    from clara.serving.server import load_for_serving

    configure_logging()
    set_threads(args.threads)
    model, bank = load_for_serving(args.bank, args.model, backbone=args.backbone)
    res = evaluate_bank_answers(model, bank, load_pairs(args.data, args.limit), k=args.k,
                                max_new_tokens=args.max_new_tokens)  # fmt: skip
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, res)
    print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
