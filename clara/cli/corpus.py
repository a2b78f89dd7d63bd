"""`clara corpus ingest`: documents from JSONL, text folders or MediaWiki dumps → passages JSONL."""

from __future__ import annotations

import argparse

from clara.cli.args import add_overwrite_argument, csv_list, positive_int


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
    ing.add_argument("--out", required=True, help="output passages JSONL (written atomically)")
    add_overwrite_argument(ing, "a file")
    ing.add_argument("--tokenizer", required=True,
                     help="backbone folder whose tokenizer counts tokens (e.g. from `clara backbone convert --out DIR`)")
    ing.add_argument("--chunk-len", type=positive_int, default=256,
                     help="most tokens per passage; match model.chunk_len of the model that will compress them")
    ing.add_argument("--format", default="auto", choices=("auto", "jsonl", "text", "mediawiki"),
                     help="input format; auto: folder → text, XML → mediawiki, JSON → jsonl")
    ing.add_argument("--limit", type=positive_int, default=None, help="stop after this many source documents (to try a big dump)")
    ing.set_defaults(func=run_ingest)
    sp = sub.add_parser(
        "split",
        help="hold out whole articles: every passage of a held-out source goes to the evaluation file",
        description="Split a passages JSONL (from `clara corpus ingest`, ids SRC#n) by source document, so that no "
        "held-out article is ever trained on: the articles named by --heldout-titles, plus a stable --heldout-fraction "
        "of the others (a hash of --seed and the source id). Both outputs are written atomically.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sp.add_argument("src", help="passages JSONL")
    sp.add_argument("--train", required=True, help="output: passages of the training articles")
    sp.add_argument("--heldout", required=True, help="output: passages of the held-out articles")
    sp.add_argument("--heldout-titles", type=csv_list, default=[], metavar="T1,T2",
                    help="titles to hold out, comma-separated, matched exactly")
    sp.add_argument("--heldout-fraction", type=float, default=0.0, help="fraction of the other articles to hold out")
    sp.add_argument("--seed", type=int, default=0, help="seed of the fractional draw")
    add_overwrite_argument(sp, "files", "--train and --heldout")
    sp.set_defaults(func=run_split)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_ingest(args) -> int:
    from clara.data.corpus import ingest
    from clara.fileio import FILE, claim_output

    claim_output(args.out, FILE, overwrite=args.overwrite)
    summary = ingest(args.src, args.out, tokenizer=args.tokenizer, chunk_len=args.chunk_len, fmt=args.format,
                     limit=args.limit)  # fmt: skip
    print(f"{summary.format} {args.src} -> {args.out}: {summary.line()}")
    return 0


def run_split(args) -> int:
    from clara.data.corpus import split_by_source
    from clara.fileio import FILE, claim_output

    for path in (args.train, args.heldout):
        claim_output(path, FILE, overwrite=args.overwrite)
    s = split_by_source(args.src, args.train, args.heldout, titles=args.heldout_titles,
                        fraction=args.heldout_fraction, seed=args.seed)  # fmt: skip
    print(f"{args.src}: {s['train_sources']} articles ({s['train_passages']} passages) -> {args.train}; "
          f"{s['heldout_sources']} held out ({s['heldout_passages']} passages) -> {args.heldout}: "
          + ", ".join(s["heldout_titles"]))
    return 0
