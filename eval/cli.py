"""`clara eval ...`: evaluation commands. `clara eval reading` asks: can the backbone read?"""

from __future__ import annotations

import argparse

from clara.cli.args import (
    add_out_file_arguments, add_precision_argument, add_threads_argument, claim_out_file, csv_list, int_list, set_threads,
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("eval", help="evaluation commands")
    sub = parser.add_subparsers(dest="eval_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "reading",
        help="open-book vs closed-book EM/F1/Cover-EM of a backbone on world questions",
        description="Greedy answers through the backbone's chat template, with the gold document as text "
        "in the prompt (open book) and without it (closed book). Replies are cut to their first line "
        "before scoring; the raw reply's Cover-EM is reported too.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--backbone", required=True, help="backbone directory (from `clara backbone convert|tiny`) or .gguf file")
    p.add_argument("--kind", default="hf", choices=["hf", "gguf", "tiny"], help="backbone kind")
    p.add_argument("--world", required=True, help="world directory (from `clara world --out DIR`)")
    p.add_argument("--split", default="test", type=csv_list, help="split(s), comma-separated, e.g. test,test_unseen")
    p.add_argument("--types", default="single_hop", type=csv_list, help="question types, comma-separated")
    p.add_argument("--limit", type=int, default=100, help="at most this many questions (0 = all)")
    p.add_argument("--settings", default="open_book,closed_book", type=csv_list, help="open_book and/or closed_book")
    p.add_argument("--style", default="fewshot", choices=["plain", "terse", "system", "fewshot"],
                   help="prompt: the short-answer instruction only; a reworded instruction; + a short-answer "
                   "system prompt; + system prompt and one invented demonstration turn")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate() call (left padded)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per answer")
    add_threads_argument(p)
    add_out_file_arguments(p, "write full results (scores + every reply) to this JSON file")
    p.set_defaults(func=run_reading)
    from clara.eval.agent import register_agent
    from clara.eval.retrieval_cli import register_retrieval

    register_retrieval(sub)
    register_compression(sub)
    register_agent(sub)


def add_answer_options(p) -> None:
    """How compressed documents are asked and scored (shared by `eval compression` and `pretrain sweep`)."""
    p.add_argument("--settings", default="memory,wrong_memory,raw_text,closed_book", type=csv_list,
                   help="any of memory, wrong_memory, raw_text, closed_book (default: %(default)s)")
    p.add_argument("--prompt", default="scp", choices=["scp", "direct"],
                   help="scp: the SCP QA instruction with the reply forced to start 'Question: q\\nAnswer:'; "
                   "direct: the question as is, after `clara pretrain instruct` (default: %(default)s)")
    p.add_argument("--style", default="fewshot", choices=["plain", "terse", "system", "fewshot"],
                   help="prompt style of the raw-text and closed-book baselines, see `clara eval reading` "
                   "(default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per answer (default: %(default)s)")


def register_compression(sub) -> None:
    p = sub.add_parser(
        "compression",
        help="answer held-out world questions (or your own QA records) from compressed memory only, vs wrong "
        "memory, raw text, closed book",
        description="For held-out world entities, answer each document's single-hop questions from its compressed "
        "memory only (generator adapter), from a wrong document's memory (ablation: equal scores mean the memory "
        "is ignored), and with the bare backbone given the raw document text / nothing (closed book). Reports EM, "
        "F1, Cover-EM, the mean pairwise cosine between compressed documents (near 1 = collapse) and the "
        "teacher-forced target loss with right vs wrong memory. Several --model give a compression-rate sweep. "
        "With --data instead of --world, the questions are the QA pairs of pretraining records (each asked of its "
        "record's document; the wrong memory is another record's), scored per source as well.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", action="append", required=True,
                   help="run directory of `clara pretrain train` (or its adapters/ directory); repeat for a CR sweep")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--world", help="world directory (from `clara world --out DIR`)")
    given.add_argument("--data", action="append", metavar="FILE",
                       help="pretraining records JSONL (project or reference format, as `clara data check --kind "
                       "pretrain` reads; data_type qa, paraphrase records are skipped and counted), scored per "
                       "record 'source' field, else per file name; repeat for several files")
    p.add_argument("--cr", type=int_list, default=[], help="only these compression rates, e.g. 4,16,32,64,128,256; "
                   "each must have a checkpoint among --model (each CR needs its own trained adapters)")
    p.add_argument("--backbone", default=None, help="backbone directory, if not where the adapters were trained")
    p.add_argument("--split", default="test_unseen", type=csv_list,
                   help="with --world, split(s): test_unseen holds entities never asked about in training")
    p.add_argument("--types", default="single_hop", type=csv_list, help="with --world, question types (single-document ones)")
    p.add_argument("--limit", type=int, default=100, help="at most this many questions (0 = all)")
    add_answer_options(p)
    p.add_argument("--batch-size", type=int, default=8, help="questions per batch")
    add_precision_argument(p, "the model's forwards")
    add_threads_argument(p)
    add_out_file_arguments(p, "write full results (scores + every reply) to this JSON file")
    p.set_defaults(func=run_compression)


def run_compression(args: argparse.Namespace) -> int:
    claim_out_file(args)
    import time

    from clara.eval.compression import format_table, run_compression_eval
    from clara.fileio import atomic_write_json

    set_threads(args.threads)
    start = time.perf_counter()
    results = run_compression_eval(
        args.model, args.world, data=args.data or (), crs=args.cr, backbone=args.backbone, splits=args.split,
        types=args.types, limit=args.limit or None, settings=args.settings, prompt=args.prompt, style=args.style,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, precision=args.precision,
    )
    first = results["runs"][0]
    if args.data:
        source = f"{', '.join(results['data'])} ({results['skipped_paraphrase']} paraphrase record(s) skipped)"
    else:
        source = f"{','.join(results['splits'])} of {results['world']}"
    print(f"compression eval: {first['n']} questions on {first['documents']} documents from {source}, "
          f"backbone {first['backbone']}, prompt {args.prompt}, {time.perf_counter() - start:.0f} s")
    print(format_table(results))
    if args.out:
        atomic_write_json(args.out, results)
        print(f"results written to {args.out}")
    return 0


def run_reading(args: argparse.Namespace) -> int:
    claim_out_file(args)
    from clara.eval.reading import format_table, run_reading_eval
    from clara.fileio import atomic_write_json

    set_threads(args.threads)
    results = run_reading_eval(
        args.backbone, args.world, kind=args.kind, splits=args.split, types=args.types,
        limit=args.limit or None, settings=args.settings, style=args.style,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
    )
    print(f"reading eval: {results['n']} questions ({','.join(results['types'])}) from {','.join(results['splits'])}, "
          f"backbone {results['backbone']} (hash {results['backbone_hash']}), prompt style {results['style']}")
    print(format_table(results))
    if args.out:
        atomic_write_json(args.out, results)
        print(f"results written to {args.out}")
    return 0
