"""`clara eval ...`: evaluation commands. `clara eval reading` asks: can the backbone read?"""

from __future__ import annotations

import argparse


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


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
    p.add_argument("--split", default="test", type=_csv, help="split(s), comma-separated, e.g. test,test_unseen")
    p.add_argument("--types", default="single_hop", type=_csv, help="question types, comma-separated")
    p.add_argument("--limit", type=int, default=100, help="at most this many questions (0 = all)")
    p.add_argument("--settings", default="open_book,closed_book", type=_csv, help="open_book and/or closed_book")
    p.add_argument("--style", default="fewshot", choices=["plain", "terse", "system", "fewshot"],
                   help="prompt: the short-answer instruction only; a reworded instruction; + a short-answer "
                   "system prompt; + system prompt and one invented demonstration turn")
    p.add_argument("--batch-size", type=int, default=8, help="questions per generate() call (left padded)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens per answer")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--out", default=None, help="write full results (scores + every reply) to this JSON file")
    p.set_defaults(func=run_reading)


def run_reading(args: argparse.Namespace) -> int:
    from clara.eval.reading import format_table, run_reading_eval
    from clara.fileio import atomic_write_json

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
