"""``clara index build|add|verify``: compress a corpus into a memory bank (DESIGN §9).

build and add print one JSON line: the bank's figures, then ``documents`` (of the corpus), ``rows`` (added
to the bank) and ``split_documents`` (documents longer than the model's chunk_len, each stored as rows
``{id}#0``, ``{id}#1``, ... whose ``meta.jsonl`` lines name it as ``source``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clara.cli.args import (
    add_overwrite_argument, add_precision_argument, add_threads_argument, non_negative_int, positive_int, set_threads,
)

MODEL_HELP = (
    "model: an adapters directory saved by a training stage (ClaraModel.save_adapters), or "
    "hashing:m=INT,h=INT for the lexical hashing stand-in (tests, baselines)"
)


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--backbone", default=None, help="backbone directory, if not the one recorded with the adapters")
    p.add_argument("--batch-size", type=positive_int, default=16, help="documents per compressor forward (default %(default)s)")
    p.add_argument("--shard-docs", type=positive_int, default=1024,
                   help="documents per resumable shard in the work directory (default %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_threads_argument(p)
    add_precision_argument(p, "the compressor's forwards")


def register(subparsers) -> None:
    parser = subparsers.add_parser("index", help="build, grow and verify memory banks",
                                   description="Compress documents into a memory bank searched in latent space.")
    sub = parser.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = sub.add_parser("build", help="compress a corpus into a new bank",
                       description="Compress every document of a corpus into a new bank directory (a bank already at "
                       "--out is replaced only with --overwrite; anything else there is refused). "
                       "Resumable: after a crash, run the same command again.")
    b.add_argument("--corpus", required=True, type=Path, help="documents.jsonl ({id,title,text} or {id,contents})")
    b.add_argument("--out", required=True, type=Path, help="bank directory to write")
    add_overwrite_argument(b, "a memory bank")
    _add_model(b)
    b.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16",
                   help="storage type of memory states (default %(default)s; bf16 if fp16 overflows)")
    b.add_argument("--retrieval", choices=["flat", "pooled"], default="flat",
                   help="retrieval vector: flattened m*H memory (flat) or mean over m slots (pooled); default %(default)s")
    b.add_argument("--faiss", choices=["flat", "ivf", "ivfpq", "kernel"], default="flat",
                   help="index: exact inner product (flat), inverted lists (ivf), ivf + product quantisation "
                   "(ivfpq), or plain vectors searched by clara.kernels (kernel); default %(default)s")
    b.add_argument("--nlist", type=non_negative_int, default=0, help="ivf lists (default: about sqrt(documents))")
    b.add_argument("--nprobe", type=positive_int, default=8, help="ivf lists searched per query (default %(default)s)")
    b.add_argument("--pq-m", type=non_negative_int, default=0, help="ivfpq sub-quantisers (default: largest of 64..1 dividing the dim)")
    b.add_argument("--vectors", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="--faiss kernel: storage type of the retrieval vectors; fp16/bf16 halve the bytes a search "
                   "reads, and the search stays exact over the stored vectors (default %(default)s)")
    b.set_defaults(func=run_build)

    a = sub.add_parser("add", help="append documents to a bank without rebuilding it",
                       description="Compress new documents and append them; existing memory is not recomputed.")
    a.add_argument("bank", type=Path, help="bank directory")
    a.add_argument("--corpus", required=True, type=Path, help="documents.jsonl with new ids")
    _add_model(a)
    a.set_defaults(func=run_add)

    v = sub.add_parser("verify", help="check every checksum, shape and count of a bank",
                       description="Check a bank: sha256 of every file, memory size, metadata rows, index size.")
    v.add_argument("bank", type=Path, help="bank directory")
    v.set_defaults(func=run_verify)


def _summary(bank: Path, info, counts: dict | None = None) -> str:
    from clara.serving.bank import retrieval_spelling

    return json.dumps({"bank": str(bank), "count": info.count, "num_mem": info.num_mem, "hidden_size": info.hidden_size,
                       "dtype": info.dtype.value, "retrieval": retrieval_spelling(info.retrieval), "index": info.index.kind.value,
                       "vectors": info.index.vectors.value, "compressor_hash": info.compressor_hash,
                       "bytes_per_doc": info.num_mem * info.hidden_size * 2, **(counts or {})})


def run_build(args) -> int:
    from clara.fileio import BANK, claim_output
    from clara.serving.bank import IndexParams
    from clara.serving.bank_build import build_bank
    from clara.serving.protocols import load_model

    claim_output(args.out, BANK, overwrite=args.overwrite)
    set_threads(args.threads)
    index = IndexParams(args.faiss, nlist=args.nlist, nprobe=args.nprobe, pq_m=args.pq_m, vectors=args.vectors)
    model = load_model(args.model, args.backbone, args.precision)
    counts: dict = {}
    info = build_bank(args.corpus, model, args.out, batch_size=args.batch_size, dtype=args.dtype, retrieval=args.retrieval,
                      index=index, shard_docs=args.shard_docs, progress=not args.no_progress, counts=counts)
    print(_summary(args.out, info, counts))
    return 0


def run_add(args) -> int:
    from clara.serving.bank_build import add_to_bank
    from clara.serving.protocols import load_model

    set_threads(args.threads)
    model = load_model(args.model, args.backbone, args.precision)
    counts: dict = {}
    info = add_to_bank(args.bank, args.corpus, model, batch_size=args.batch_size, shard_docs=args.shard_docs,
                       progress=not args.no_progress, counts=counts)
    print(_summary(args.bank, info, counts))
    return 0


def run_verify(args) -> int:
    from clara.serving.bank import verify_bank

    info = verify_bank(args.bank)
    print(f"ok {_summary(args.bank, info)}")
    return 0
