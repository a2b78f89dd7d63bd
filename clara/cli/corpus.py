"""`clara corpus ingest`: documents from JSONL, text folders or MediaWiki dumps → passages JSONL."""

from __future__ import annotations

import argparse

from clara.cli.args import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "corpus",
        help="build a passage corpus from JSONL, plain-text folders or MediaWiki XML dumps",
        description="Corpus tools. `clara corpus ingest SRC --out FILE --tokenizer DIR` reads documents and "
        "writes passages of at most --chunk-len backbone tokens as JSON lines {id, title, text}.",
    )
    sub = p.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
    ing = sub.add_parser(
        "ingest",
        help="chunk documents into passages of at most --chunk-len tokens",
        description="Read SRC — a JSONL file of {id,title,text} or {id,contents} documents, a folder of "
        ".txt/.md files (one document per file, title from the file name), or a MediaWiki XML dump "
        "(.xml, .xml.bz2, .xml.gz; redirects and non-article pages skipped, markup stripped) — and cut "
        "each document into passages of at most --chunk-len tokens of the backbone's tokenizer (counted "
        "on 'title\\ntext'), preferably at sentence ends. Passage ids are '{source_id}#{n}' and stable "
        "across runs. The output is written atomically, with OUT.summary.json beside it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ing.add_argument("src", help="JSONL file, folder of text files, or MediaWiki dump (.xml/.xml.bz2/.xml.gz)")
    ing.add_argument("--out", required=True, help="output passages JSONL (replaced atomically)")
    ing.add_argument("--tokenizer", required=True,
                     help="backbone folder whose tokenizer counts tokens (e.g. from `clara backbone convert --out DIR`)")
    ing.add_argument("--chunk-len", type=positive_int, default=256,
                     help="most tokens per passage; match model.chunk_len of the model that will compress them")
    ing.add_argument("--format", default="auto", choices=("auto", "jsonl", "text", "mediawiki"),
                     help="input format; auto: folder → text, XML → mediawiki, JSON → jsonl")
    ing.add_argument("--limit", type=positive_int, default=None, help="stop after this many source documents (to try a big dump)")
    ing.set_defaults(func=run_ingest)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_ingest(args) -> int:
    from clara.data.corpus import ingest

    summary = ingest(args.src, args.out, tokenizer=args.tokenizer, chunk_len=args.chunk_len, fmt=args.format,
                     limit=args.limit)  # fmt: skip
    print(f"{summary.format} {args.src} -> {args.out}: {summary.line()}")
    return 0
