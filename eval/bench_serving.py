"""Serving benchmark (DESIGN §9): compressed memory vs raw-text RAG, batching, bank build.

Parts (``--parts``, comma separated):

- ``prefill``: time to first token (generate with 1 new token) and end-to-end answer latency
  (``--new-tokens``) for one question with k passages of ``--passage-tokens`` tokens, given
  as compressed memory (k·m slots, m = passage_tokens / CR) vs as raw text in the prompt, on
  the same backbone and generator adapter. Repetitions interleave the two; medians reported,
  ratio raw / compressed from the same run (target >= 5x lower prefill for compressed).
- ``concurrency``: /v1/answer throughput of a live server with ``--clients`` concurrent
  clients vs one client sending the same requests sequentially (target >= 2x).
- ``build``: bank build throughput (documents/s) and bytes per document at each CR in
  ``--crs`` (memory.bin plus index file).

Adapters are freshly initialised: every figure is a speed or size, never a quality claim.

    python -m clara.eval.bench_serving --backbone smollm2 --parts prefill,concurrency,build
    python -m clara.eval.bench_serving --backbone tiny --parts prefill,build --crs 4,8
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

FILLER = ("The museum of Mira was founded in 1802 by Kalo Venra, who studied physics at the school of Torven "
          "before moving to the river valley, where the old stone bridge over the Selad still stands today. ")


def make_model(backbone: str, smollm2_dir: str, work: Path, chunk_len: int, cr: int):
    from clara.model.backbone import build_tiny_backbone, convert_gguf_backbone
    from clara.config import BackboneKind, ModelConfig
    from clara.model.clara_model import ClaraModel

    if backbone == "tiny":
        path, kind = build_tiny_backbone(work / "tiny"), BackboneKind.TINY
    else:
        path, kind = convert_gguf_backbone(out_dir=smollm2_dir), BackboneKind.HF
    model = ClaraModel.from_config(ModelConfig(backbone=str(path), kind=kind, chunk_len=chunk_len, compression_rate=cr))
    return model.eval()


def passages(model, n: int, tokens: int, seed: int = 0) -> list[str]:
    """n distinct passages of exactly ``tokens`` tokens (by this tokenizer)."""
    out = []
    for i in range(n):
        text = f"Passage {seed + i}. " + FILLER * (tokens // 20 + 2)
        ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
        out.append(model.tokenizer.decode(ids))
    return out


def bench_prefill(model, k: int, passage_tokens: int, new_tokens: int, reps: int) -> dict:
    import torch

    docs = passages(model, k, passage_tokens)
    question = "Who founded the museum of Mira?"
    with torch.no_grad():
        mem = model.compress(docs).unsqueeze(0)  # (1, k, m, H)
    raw_question = "Background:\n" + "\n".join(docs) + f"\n\nQuestion: {question}"
    raw_len = len(model.prompt_ids(raw_question, 0))
    mem_len = len(model.prompt_ids(question, k))

    def compressed(n):
        return model.generate([question], mem, max_new_tokens=n)

    def raw(n):
        return model.generate([raw_question], None, max_new_tokens=n)

    times = {"compressed_ttft": [], "raw_ttft": [], "compressed_e2e": [], "raw_e2e": []}
    compressed(1), raw(1)  # warm-up
    for r in range(reps):
        order = [("compressed", compressed), ("raw", raw)][:: 1 if r % 2 == 0 else -1]
        for name, fn in order:
            for label, n in (("ttft", 1), ("e2e", new_tokens)):
                t0 = time.perf_counter()
                fn(n)
                times[f"{name}_{label}"].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) * 1000 for key, v in times.items()}
    return {
        "k": k, "passage_tokens": passage_tokens, "num_mem": model.num_mem, "new_tokens": new_tokens, "reps": reps,
        "prompt_positions": {"compressed": mem_len, "raw": raw_len},
        "median_ms": {key: round(v, 1) for key, v in med.items()},
        "ttft_ratio_raw_over_compressed": round(med["raw_ttft"] / med["compressed_ttft"], 2),
        "e2e_ratio_raw_over_compressed": round(med["raw_e2e"] / med["compressed_e2e"], 2),
    }


def _corpus(model, work: Path, n: int, tokens: int, name: str) -> Path:
    path = work / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(passages(model, n, tokens)):
            # no title: the passage alone fills chunk_len, one bank row per document (a title would split it)
            f.write(json.dumps({"id": f"{name}{i}", "title": "", "text": text}) + "\n")
    return path


def bench_build(args, work: Path) -> list[dict]:
    from clara.serving.bank_build import build_bank

    rows = []
    for cr in args.crs:
        model = make_model(args.backbone, args.smollm2_dir, work, args.passage_tokens, cr)
        corpus = _corpus(model, work, args.build_docs, args.passage_tokens, f"cr{cr}_")
        t0 = time.perf_counter()
        info = build_bank(corpus, model, work / f"bank-cr{cr}", batch_size=args.batch_size, progress=False)
        wall = time.perf_counter() - t0
        files = {p.name: p.stat().st_size for p in (work / f"bank-cr{cr}").iterdir()}
        rows.append({"cr": cr, "num_mem": info.num_mem, "docs": info.count, "wall_s": round(wall, 2),
                     "docs_per_s": round(info.count / wall, 2),
                     "memory_bytes_per_doc": files["memory.bin"] // info.count,
                     "index_bytes_per_doc": files.get("retrieval.faiss", 0) // info.count})
        log.info("build CR %d: %s", cr, rows[-1])
    return rows


def bench_concurrency(model, args, work: Path) -> dict:
    import asyncio

    import httpx

    from clara.serving.bank import MemoryBank
    from clara.serving.bank_build import build_bank
    from clara.serving.server import ServerThread, create_app
    from clara.serving.schema import ServerSettings

    corpus = _corpus(model, work, max(args.k, 32), args.passage_tokens, "conc")
    build_bank(corpus, model, work / "bank-conc", batch_size=args.batch_size, progress=False)
    app = create_app(ServerSettings(max_batch=args.clients, max_wait_ms=10.0), model=model,
                     bank=MemoryBank.open(work / "bank-conc"))
    body = lambda i: {"question": f"Who founded museum {i}?", "k": args.k, "max_new_tokens": args.new_tokens}

    async def fire(url: str, clients: int, n: int) -> float:
        todo = list(range(n))
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            async def client():
                while todo:
                    r = await http.post("/v1/answer", json=body(todo.pop()))
                    r.raise_for_status()
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            return time.perf_counter() - t0

    with ServerThread(app) as s:
        asyncio.run(fire(s.url, 1, 2))  # warm-up
        seq = asyncio.run(fire(s.url, 1, args.requests))
        conc = asyncio.run(fire(s.url, args.clients, args.requests))
    return {"requests": args.requests, "clients": args.clients, "k": args.k, "new_tokens": args.new_tokens,
            "sequential_rps": round(args.requests / seq, 3), "concurrent_rps": round(args.requests / conc, 3),
            "speedup": round(seq / conc, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", choices=["tiny", "smollm2"], default="smollm2", help="backbone (default %(default)s)")
    p.add_argument("--smollm2-dir", default="out/backbones/smollm2-135m-instruct", help="converted SmolLM2 directory (made if missing)")
    p.add_argument("--parts", default="prefill,concurrency,build", help="which parts to run (default %(default)s)")
    p.add_argument("--k", type=int, default=5, help="passages per question (default %(default)s)")
    p.add_argument("--passage-tokens", type=int, default=256, help="tokens per passage = chunk_len (default %(default)s)")
    p.add_argument("--cr", type=int, default=16, help="compression rate for prefill/concurrency (default %(default)s)")
    p.add_argument("--crs", default="4,16,32,64", help="compression rates for the build part (default %(default)s)")
    p.add_argument("--new-tokens", type=int, default=16, help="answer tokens for end-to-end latency (default %(default)s)")
    p.add_argument("--reps", type=int, default=3, help="repetitions per prefill measurement (default %(default)s)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default %(default)s)")
    p.add_argument("--requests", type=int, default=32, help="requests per concurrency run (default %(default)s)")
    p.add_argument("--build-docs", type=int, default=32, help="documents per bank build (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="compression batch size (default %(default)s)")
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    args.crs = [int(c) for c in args.crs.split(",")]
    parts = set(args.parts.split(","))
    from clara.cli.console import configure_logging

    configure_logging()
    import torch

    report = {"backbone": args.backbone, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="clara-bench-serving-") as tmp:
        work = Path(tmp)
        if parts & {"prefill", "concurrency"}:
            model = make_model(args.backbone, args.smollm2_dir, work, args.passage_tokens, args.cr)
            if "prefill" in parts:
                report["prefill"] = bench_prefill(model, args.k, args.passage_tokens, args.new_tokens, args.reps)
                log.info("prefill: %s", report["prefill"])
            if "concurrency" in parts:
                report["concurrency"] = bench_concurrency(model, args, work)
                log.info("concurrency: %s", report["concurrency"])
        if "build" in parts:
            report["build"] = bench_build(args, work)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
