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
- ``weights``: one generator forward of 1, 100 and 500 positions with bf16 autocast over fp32 weights
  (inference before the one-time cast), with the linear weights cast to bf16 once (LoRA factors fp32, and
  again with the factors under autocast), and in fp32.
- ``breakdown``: where time to first token goes, phase by phase (query encoding, bank search, gather,
  prompt build, generator prefill, and the first decode step), for CLaRa and for raw-text RAG on the same
  bank and retrieval; with retrieval and without. ``--model RELEASE --bank DIR --questions FILE`` times a
  trained release on a real bank, as a user serves it.

Adapters are freshly initialised: every figure is a speed or size, never a quality claim.

    python -m clara.eval.bench_serving --backbone smollm2 --parts prefill,concurrency,build
    python -m clara.eval.bench_serving --backbone tiny --parts prefill,build --crs 4,8
    python -m clara.eval.bench_serving --parts breakdown --model assets/scp-smollm2-wiki --bank BANK \\
        --questions eval/data/wiki_heldout_questions.jsonl --k 5 --reps 3
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

    from clara.model.kv_memory import require_states_readout

    require_states_readout(model, "bench_serving (it times memory spliced into the prompt)")

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


PHASES = ("encode", "search", "gather", "build", "prefill", "first_decode")
RETRIEVAL = ("encode", "search")  # the phases "retrieval excluded" leaves out


def answer_phases(model, bank, question: str, k: int, prompt: str, raw: bool) -> tuple[dict[str, float], int]:
    """Seconds of each phase of one answer's first token, and the prompt's positions:

    query encoding (the query reasoner's forward), bank search, gather (the k memories from the memmap, or
    for raw-text RAG the k passages' text), build (the prompt's token ids and embeddings), generator
    prefill (its logits give the first token), and the first decode step (the second token's forward).
    CLaRa reads with the generator adapter; raw-text RAG with the bare backbone, as a user runs it."""
    import torch

    from clara.model.generation import decode_step, prefill
    from clara.model.prompts import ask
    from clara.model.scoring import in_retrieval_space

    t, clock = {}, time.perf_counter
    with torch.no_grad():
        t0 = clock()
        q = in_retrieval_space(model, model.encode_query([question]))  # (1, m, H)
        t1 = clock()
        _, rows = bank.search(q, k)  # (1, k)
        t2 = clock()
        rows = rows[:, rows[0] >= 0]
        if raw:
            mem, docs = None, ["\n\n".join(bank.document(int(r))["text"] for r in rows[0])]
        else:
            mem, docs = bank.memory(rows), None  # (1, k, m, H)
        t3 = clock()
        inputs, prefixes = ask([question], prompt)
        embeds, mask = model.build_generator_inputs(inputs, mem, prefixes, documents=docs)
        t4 = clock()
        with model.using(None if raw else "generator"):
            logits, state = prefill(model.lm, embeds, mask)
            token = logits.argmax(-1)  # the first token
            t5 = clock()
            decode_step(model.lm, token, state)
            t6 = clock()
    for name, (a, b) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5), (t5, t6))):
        t[name] = b - a
    return t, int(mask.shape[1])


def bench_breakdown(model, bank, questions: list[str], k: int, reps: int, prompt: str) -> dict:
    """Each phase of time to first token for CLaRa (memory) and raw-text RAG (text) on the same bank and
    retrieval; repetitions alternate the order of the two; medians over every (repetition, question)."""
    from clara.model.kv_memory import require_states_readout

    require_states_readout(model, "bench_serving (it times memory spliced into the prompt)")
    runs = {"clara": [], "raw_text_rag": []}
    positions = {}
    answer_phases(model, bank, questions[0], k, prompt, False), answer_phases(model, bank, questions[0], k, prompt, True)
    for r in range(reps):
        for i, question in enumerate(questions):
            order = [("clara", False), ("raw_text_rag", True)][:: 1 if (r + i) % 2 == 0 else -1]
            for name, raw in order:
                t, n = answer_phases(model, bank, question, k, prompt, raw)
                runs[name].append(t)
                positions.setdefault(name, []).append(n)
    out: dict = {"k": k, "questions": len(questions), "reps": reps, "num_mem": model.num_mem, "prompt": prompt}
    for name, trials in runs.items():
        med = {p: statistics.median(t[p] for t in trials) * 1000 for p in PHASES}
        ttft = statistics.median(sum(t[p] for p in PHASES if p != "first_decode") for t in trials) * 1000
        gen = statistics.median(sum(t[p] for p in PHASES if p not in RETRIEVAL + ("first_decode",)) for t in trials) * 1000
        out[name] = {"median_ms": {p: round(v, 2) for p, v in med.items()}, "ttft_ms": round(ttft, 2),
                     "ttft_without_retrieval_ms": round(gen, 2),
                     "prompt_positions": round(statistics.median(positions[name]), 1)}
    c, w = out["clara"], out["raw_text_rag"]
    out["ttft_ratio"] = round(w["ttft_ms"] / c["ttft_ms"], 2)
    out["ttft_ratio_without_retrieval"] = round(w["ttft_without_retrieval_ms"] / c["ttft_without_retrieval_ms"], 2)
    out["prefill_ratio"] = round(w["median_ms"]["prefill"] / c["median_ms"]["prefill"], 2)
    out["positions_ratio"] = round(w["prompt_positions"] / c["prompt_positions"], 2)
    return out


def bench_bf16_weights(model, reps: int, positions: tuple[int, ...] = (1, 100, 500)) -> dict:
    """One generator forward (a prompt of n positions, no cache) in four settings, interleaved: bf16
    autocast over the fp32 weights (how inference ran before the cast), the linear weights cast to bf16
    once with the LoRA factors in fp32 (``set_inference_precision``), the same with the factors under
    autocast, and plain fp32. Medians in ms; ratios of the others over the cast."""
    import torch

    from clara.config import Precision
    from clara.model.generation import prefill
    from clara.model.inference_weights import bf16_factor_forwards

    embeds, mask = model.build_generator_inputs(["Who founded the museum of Mira?"], None)

    def autocast():
        model.set_inference_precision(Precision.FP32)
        model.inference_precision = Precision.BF16  # autocast only: the weights stay fp32

    def cast():  # from the fp32 weights each time, so that the factors' fp32 forwards are set again
        model.set_inference_precision(Precision.FP32)
        model.set_inference_precision(Precision.BF16, keep_fp32=True)

    def factors_in_autocast():  # the cast, but the LoRA factors run under autocast (bf16), as before a59d55b
        cast()
        bf16_factor_forwards(model.lm)

    settings = {"autocast_fp32_weights": autocast, "bf16_weights": cast, "bf16_weights_bf16_factors": factors_in_autocast,
                "fp32": lambda: model.set_inference_precision(Precision.FP32)}
    times: dict[tuple[str, int], list[float]] = {}
    for r in range(reps + 1):  # the first round warms up
        names = list(settings)[r % len(settings):] + list(settings)[:r % len(settings)]
        for name in names:
            settings[name]()
            for n in positions:
                e, m = embeds[:, :1].repeat(1, n, 1), mask[:, :1].repeat(1, n)
                with torch.no_grad(), model.using("generator"):
                    t0 = time.perf_counter()
                    prefill(model.lm, e, m)
                    if r:
                        times.setdefault((name, n), []).append(time.perf_counter() - t0)
    model.set_inference_precision(Precision.FP32)
    med = {f"{name}@{n}": round(statistics.median(v) * 1000, 2) for (name, n), v in times.items()}
    ratio = {f"{base}_over_bf16_weights@{n}": round(med[f"{base}@{n}"] / med[f"bf16_weights@{n}"], 2)
             for base in ("autocast_fp32_weights", "bf16_weights_bf16_factors") for n in positions}
    return {"reps": reps, "median_ms": med, **ratio}


def format_breakdown(b: dict) -> str:
    """The breakdown as a markdown table (ms, medians)."""
    lines = ["| phase | CLaRa (memory) | raw-text RAG | ratio |", "|---|---|---|---|"]
    for p in PHASES:
        c, w = b["clara"]["median_ms"][p], b["raw_text_rag"]["median_ms"][p]
        lines.append(f"| {p} | {c:.2f} | {w:.2f} | {w / c:.2f}× |" if c else f"| {p} | {c:.2f} | {w:.2f} | – |")
    for key, label in (("ttft_ms", "time to first token"), ("ttft_without_retrieval_ms", "… retrieval excluded"),
                       ("prompt_positions", "prompt positions")):
        c, w = b["clara"][key], b["raw_text_rag"][key]
        lines.append(f"| **{label}** | {c:.2f} | {w:.2f} | {w / c:.2f}× |")
    return "\n".join(lines)


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


def trained_model(args, **kw):
    """--model loaded (its backbone from --model-backbone where given; errors name that flag)."""
    from clara.model.loading import load_trained_model

    return load_trained_model(args.model, args.model_backbone, backbone_key="--model-backbone", **kw)


def run_breakdown(args, work: Path) -> dict:
    from clara.model.prompts import resolve_prompt
    from clara.serving.bank import MemoryBank
    from clara.serving.bank_build import build_bank

    if args.model:
        model = trained_model(args)
    else:
        model = make_model(args.backbone, args.smollm2_dir, work, args.passage_tokens, args.cr)
    if args.bank:
        bank = MemoryBank.open(args.bank)
    else:
        corpus = _corpus(model, work, max(args.k, args.build_docs), args.passage_tokens, "breakdown")
        build_bank(corpus, model, work / "bank-breakdown", batch_size=args.batch_size, progress=False)
        bank = MemoryBank.open(work / "bank-breakdown")
    questions = ["Who founded the museum of Mira?"]
    if args.questions:
        from clara.eval.bank_answers import load_pairs

        questions = [p["question"] for p in load_pairs(args.questions, args.limit_questions)]
    return bench_breakdown(model, bank, questions, args.k, args.reps, resolve_prompt(None, model))


def main(argv: list[str] | None = None) -> int:
    from clara.cli.args import add_threads_argument, set_threads

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
    p.add_argument("--model", default=None, help="breakdown, weights: a trained model (release or adapters directory) "
                   "instead of fresh adapters on --backbone")
    p.add_argument("--model-backbone", default=None, metavar="DIR",
                   help="the backbone directory of --model, if not the one it records")
    p.add_argument("--bank", default=None, help="breakdown: a bank built by `clara index build` with --model "
                   "(default: a bank of --build-docs filler passages built here)")
    p.add_argument("--questions", default=None, help="breakdown: QA records (pretraining format with doc_id, "
                   "as eval/data/wiki_heldout_questions.jsonl; default: one filler question)")
    p.add_argument("--limit-questions", type=int, default=10, help="breakdown: first N questions (0 = all)")
    add_threads_argument(p)
    p.add_argument("--out", default=None, help="also write the JSON report here")
    args = p.parse_args(argv)
    args.crs = [int(c) for c in args.crs.split(",")]
    parts = set(args.parts.split(","))
    from clara.cli.console import configure_logging

    configure_logging()
    import torch

    set_threads(args.threads)
    report = {"backbone": args.model or args.backbone, "device": "cuda" if torch.cuda.is_available() else "cpu",
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
        if "weights" in parts:
            model = (trained_model(args, precision="fp32") if args.model else
                     make_model(args.backbone, args.smollm2_dir, work, args.passage_tokens, args.cr))
            report["weights"] = bench_bf16_weights(model, args.reps)
        if "breakdown" in parts:
            report["breakdown"] = run_breakdown(args, work)
            print(format_breakdown(report["breakdown"]), file=sys.stderr)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
