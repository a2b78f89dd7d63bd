"""`clara eval retrieval`: Recall@k per question type and EM/F1 (normal, oracle, no gold) against baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from clara.cli.args import (
    add_out_file_arguments, add_prompt_argument, add_threads_argument, claim_out_file, csv_list, int_list, set_threads,
)
from clara.model.prompts import resolve_prompt


RETRIEVERS = ("query", "bm25", "minilm")


def register_retrieval(sub) -> None:
    p = sub.add_parser(
        "retrieval",
        help="Recall@k per question type (query reasoner, BM25, MiniLM) and EM/F1 in normal/oracle/no-gold settings",
        description="Ranks each question's candidates with the trained query reasoner (--model) and/or the "
        "BM25 and MiniLM baselines, and reports Recall@k against pos_index per question type. With --answers, "
        "the generator answers from the memory of the top-k (normal) and with the gold guaranteed among the "
        "k (oracle) or left out (no_gold: wrong memory), beside closed book and raw-text RAG (top-k documents as text), all on the same candidates.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--world", help="world directory (from `clara world --out DIR`); questions/<split>.jsonl")
    src.add_argument("--data", help="JSONL of questions with candidates (project, reference or FlashRAG format)")
    p.add_argument("--corpus", default=None, help="documents.jsonl resolving doc_ids in --data (default: beside it)")
    p.add_argument("--candidates", default=None, help="JSONL of {id, doc_ids, pos_index} for FlashRAG records")
    p.add_argument("--model", default=None, help="adapters directory (out_dir/adapters of `clara joint`); "
                   "needed for the 'query' retriever and --answers")
    p.add_argument("--backbone", default=None, help="backbone path, if not the one recorded with the adapters")
    p.add_argument("--split", default="test", type=csv_list, help="world split(s), comma-separated")
    p.add_argument("--types", default="", type=csv_list, help="question types to keep, comma-separated (empty = all)")
    p.add_argument("--limit", type=int, default=0, help="at most this many questions (0 = all)")
    p.add_argument("--retrievers", default=None, type=csv_list,
                   help=f"comma-separated from {','.join(RETRIEVERS)} (default: all that apply)")
    p.add_argument("--ks", default="1,2,3,5", type=int_list, help="k values of Recall@k")
    p.add_argument("--answers", action="store_true", help="also EM/F1/Cover-EM (needs --model)")
    p.add_argument("--k", type=int, default=5, help="documents the generator reads with --answers")
    add_prompt_argument(p, "--answers")
    p.add_argument("--scoring", default="flattened", choices=["flattened", "pooled"], help="query scoring")
    p.add_argument("--cache-dir", default="out/memory-cache", help="candidate-memory cache (shared with `clara joint`)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="greedy tokens per answer")
    add_threads_argument(p)
    add_out_file_arguments(p, "write all results to this JSON file, and the Recall@k comparison (R@1 and R@2 per "
                           "question type, one bar per retriever) beside it as a PNG of the same name")
    p.set_defaults(func=run_retrieval)


def run_retrieval(args: argparse.Namespace) -> int:
    from clara.errors import ConfigError
    from clara.eval.retrieval import format_recall_tables, load_eval_records
    from clara.fileio import FILE, atomic_write_json, claim_output

    set_threads(args.threads)
    retrievers = args.retrievers or (list(RETRIEVERS) if args.model else ["bm25", "minilm"])
    unknown = sorted(set(retrievers) - set(RETRIEVERS))
    if unknown:
        raise ConfigError(f"--retrievers: unknown {unknown}; choose from {','.join(RETRIEVERS)}")
    if args.out and args.out.endswith(".png"):
        raise ConfigError(f"--out {args.out}: give the JSON file; its plot is written beside it as a .png")
    claim_out_file(args)
    if args.out:
        claim_output(Path(args.out).with_suffix(".png"), FILE, overwrite=args.overwrite)
    if ("query" in retrievers or args.answers) and not args.model:
        raise ConfigError("--model is required for the 'query' retriever and for --answers")
    records = load_eval_records(world=args.world, splits=args.split, data=args.data, corpus=args.corpus,
                                candidates=args.candidates, types=args.types, limit=args.limit or None)
    model = cache = None
    if args.model:
        from clara.model.memory_cache import MemoryCache
        from clara.model.loading import load_trained_model

        model = load_trained_model(args.model, args.backbone)
        cache = MemoryCache.for_model(model, args.cache_dir)
    rankings = compute_rankings(retrievers, records, model, cache, args.scoring)
    tables = {name: recall_by_type_of(name, rankings, records, args.ks) for name in rankings}
    print(f"retrieval eval: {len(records)} questions from {args.world or args.data}")
    print(format_recall_tables(tables, args.ks))
    results = {"n": len(records), "recall": tables}
    if args.answers:
        results["answers"] = answers_table(model, records, cache, rankings, args)
    if args.out:
        from clara.eval.plots import plot_retrieval

        atomic_write_json(args.out, results)
        png = plot_retrieval(results, Path(args.out).with_suffix(".png"), ks=[k for k in (1, 2) if k in args.ks] or None,
                             title=f"Recall@k on {len(records)} questions: {', '.join(tables)}")  # fmt: skip
        print(f"results written to {args.out}, the comparison plotted in {png}")
    return 0


def compute_rankings(retrievers, records, model, cache, scoring) -> dict[str, list[list[int]]]:
    from clara.eval.baselines import bm25_rankings, minilm_rankings
    from clara.model.scoring import rank_with_query_model

    out = {}
    for name in retrievers:
        if name == "query":
            out[name] = rank_with_query_model(model, records, cache, scoring)
        elif name == "bm25":
            out[name] = bm25_rankings(records)
        else:
            out[name] = minilm_rankings(records)
    return out


def recall_by_type_of(name, rankings, records, ks):
    from clara.model.scoring import recall_by_type

    return recall_by_type(rankings[name], records, ks)


def answers_table(model, records, cache, rankings, args) -> dict:
    """EM/F1/Cover-EM: memory of the top-k (normal, oracle, no_gold) per retriever, closed book, raw-text RAG."""
    from clara.eval.baselines import closed_book_answers, raw_text_rag_answers
    from clara.answers import answer_scores
    from clara.eval.retrieval import answer_eval

    golds = [list(r.answers) for r in records]
    prompt = resolve_prompt(args.prompt, model)
    rows = {"closed_book": answer_scores(closed_book_answers(model, records, max_new_tokens=args.max_new_tokens), golds)}
    for name, ranking in rankings.items():
        for setting, scores in answer_eval(model, records, cache, ranking, k=args.k, max_new_tokens=args.max_new_tokens,
                                           prompt=prompt).items():
            rows[f"memory/{name}/{setting}"] = {k: v for k, v in scores.items() if k != "predictions"}
        preds = raw_text_rag_answers(model, records, ranking, k=args.k, max_new_tokens=args.max_new_tokens)
        rows[f"raw_text_rag/{name}"] = answer_scores(preds, golds)
    print("| system | n | EM | F1 | Cover-EM |\n|---|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['n']} | {s['em']:.3f} | {s['f1']:.3f} | {s['cover_em']:.3f} |")
    return rows
