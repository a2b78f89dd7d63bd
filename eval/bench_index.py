"""Benchmark: `clara index build` documents/s against a bare compressor forward over the same batches.

Four ways to compress the first ``--docs`` documents of a corpus, interleaved over ``--reps``
repetitions so all see the same machine load; medians and their ratios come from one run:

- ``build``: :func:`clara.serving.bank_build.build_bank` as ``clara index build`` runs it (rows,
  shortest-first batches, shards, metadata, faiss index), its forwards in the resolved ``--precision``;
- ``bare``: ``model.compress`` alone over exactly the batches ``build`` compresses, in the same
  precision: what index build could reach (``ratio_build_over_bare``, target at least 0.8);
- ``old``: the path before this change: fp32, batches in corpus order, at torch's default thread count
  (it had no ``--threads``; ``main`` passes the count from before ``--threads`` applies): ``speedup_build_over_old``;
- ``build_fp32``: ``build`` in fp32, run only where the resolved precision is bf16 (``ratio_bf16_over_fp32``).

The bank of ``build`` is checked against the bare forward's memory (``max_rel_diff``), so the two
compressed the same rows.

    python -m clara.eval.bench_index --model assets/scp-smollm2-cr16-rows --backbone DIR --corpus wiki128.jsonl --docs 64

Without ``--model``, a fresh compressor on ``--backbone`` (same LoRA shapes, same speed as trained ones).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from clara.config import Precision

log = logging.getLogger(__name__)


def _first_lines(corpus: Path, n: int, out: Path) -> Path:
    with open(corpus, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            dst.write(line)
    return out


def _build_batches(rows, shard_docs: int, batch_size: int) -> list[np.ndarray]:
    """The row indices of each compressor call of build_bank: shortest first within each shard."""
    from clara.model.memory_store import length_sorted_batches

    batches = []
    for start in range(0, len(rows.docs), shard_docs):
        lengths = rows.lengths[start:start + shard_docs]
        batches += [start + b for b in length_sorted_batches(lengths, batch_size)]
    return batches


def bench(model, corpus: str | Path, *, docs: int, batch_size: int, reps: int, precision: str = "auto",
          old_threads: int | None = None) -> dict:
    from clara.devices import native_bf16, resolve_precision
    from clara.serving.bank import MemoryBank
    from clara.serving.bank_build import DEFAULT_SHARD_DOCS, bank_rows, build_bank, load_documents

    chosen = resolve_precision(precision, model.device, "index build")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        work = Path(tmp)
        subset = _first_lines(Path(corpus), docs, work / "corpus.jsonl")
        rows = bank_rows(load_documents(subset), model, subset)
        texts = [d.as_text() for d in rows.docs]
        batches = _build_batches(rows, DEFAULT_SHARD_DOCS, batch_size)
        bare_memory = {}

        def build(p: Precision, sort: bool, name: str):
            model.set_inference_precision(p, keep_fp32=True)
            build_bank(subset, model, work / name, batch_size=batch_size, progress=False, sort_by_length=sort)

        def old():
            threads = torch.get_num_threads()
            torch.set_num_threads(old_threads or threads)
            try:
                build(Precision.FP32, False, "old")
            finally:
                torch.set_num_threads(threads)

        def bare(p: Precision):
            model.set_inference_precision(p, keep_fp32=True)
            with torch.no_grad():
                for b in batches:
                    bare_memory.update(zip(b.tolist(), model.compress([texts[i] for i in b])))  # each (m, H)

        variants = {"build": lambda: build(chosen, True, "build"), "bare": lambda: bare(chosen),
                    "old": old}
        if chosen is Precision.BF16:
            variants["build_fp32"] = lambda: build(Precision.FP32, True, "build_fp32")
        for p in {chosen, Precision.FP32}:  # warm-up: one batch in each precision
            model.set_inference_precision(p, keep_fp32=True)
            with torch.no_grad():
                model.compress([texts[i] for i in batches[0]])
        times: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for r in range(reps):
            for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
                t = time.perf_counter()
                variants[name]()
                times[name].append(time.perf_counter() - t)
        bank = MemoryBank.open(work / "build")
        stored = bank.memory(np.arange(len(bank))[:, None])[:, 0].float()  # (rows, m, H)
        bare_all = torch.stack([bare_memory[i] for i in range(len(texts))]).float()  # (rows, m, H)
        max_rel_diff = float(((stored - bare_all).norm(dim=-1) / bare_all.norm(dim=-1).clamp_min(1e-12)).max())
    n = rows.counts()["documents"]
    med = {k: statistics.median(v) for k, v in times.items()}
    per_s = {k: n / v for k, v in med.items()}
    return {
        "documents": n, "rows": len(texts), "batch_size": batch_size, "batches": len(batches), "reps": reps,
        "threads": torch.get_num_threads(), "old_threads": old_threads or torch.get_num_threads(), "precision": chosen.value, "native_bf16": native_bf16(model.device),
        "docs_per_s": {k: round(v, 3) for k, v in per_s.items()},
        "ratio_build_over_bare": per_s["build"] / per_s["bare"],
        "speedup_build_over_old": per_s["build"] / per_s["old"],
        "ratio_bf16_over_fp32": per_s["build"] / per_s["build_fp32"] if "build_fp32" in per_s else None,
        "docs_per_s_best": {k: round(n / min(v), 3) for k, v in times.items()},  # the least disturbed repetition
        "max_rel_diff": max_rel_diff, "median_s": med, "times": times,
    }


def _model(args):
    if args.model:
        from clara.serving.protocols import load_model

        return load_model(args.model, args.backbone, "fp32")  # the benchmark sets each variant's precision
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel
    from clara.model.loading import detect_backbone_kind

    cfg = ModelConfig(backbone=args.backbone, kind=detect_backbone_kind(Path(args.backbone)), chunk_len=args.chunk_len,
                      compression_rate=args.cr, lora=LoraConfig(r=16, alpha=32))
    return ClaraModel.from_config(cfg).eval()


def main(argv=None) -> int:
    from clara.cli.args import add_precision_argument, add_threads_argument, positive_int, set_threads

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="documents.jsonl; its first --docs lines are compressed")
    p.add_argument("--model", default="", help="trained adapters directory (default: a fresh compressor on --backbone)")
    p.add_argument("--backbone", default=None, help="backbone directory (required without --model)")
    p.add_argument("--chunk-len", type=positive_int, default=128, help="without --model: document tokens per row")
    p.add_argument("--cr", type=positive_int, default=16, help="without --model: compression rate")
    p.add_argument("--docs", type=positive_int, default=64, help="documents to compress (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="documents per compressor forward")
    p.add_argument("--reps", type=positive_int, default=3, help="interleaved repetitions of each variant")
    add_precision_argument(p, "build and bare (old is fp32)")
    p.add_argument("--out", default="", help="also write the results as JSON to this file")
    add_threads_argument(p)
    args = p.parse_args(argv)
    if not args.model and not args.backbone:
        p.error("give --model, or --backbone for a fresh compressor")
    default_threads = torch.get_num_threads()  # what the old path, without --threads, ran with
    set_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    r = bench(_model(args), args.corpus, docs=args.docs, batch_size=args.batch_size, reps=args.reps,
              precision=args.precision, old_threads=default_threads)
    print(json.dumps({k: v for k, v in r.items() if k != "times"}, indent=1))
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
