"""Benchmark: decoding from ``inputs_embeds`` with our KV-cache loop vs HF ``generate(input_ids)``.

Same model (generator adapter active), same prompt length, same number of new tokens
(greedy, no early stop). Repetitions of the two methods are interleaved, alternating which
goes first, so load from other processes hits both alike; the figure is the ratio of the
median tokens/s. Target: ratio >= 0.9.

    python -m clara.eval.bench_generation --backbone tiny
    python -m clara.eval.bench_generation --backbone smollm2 --smollm2-dir out/backbones/smollm2-135m-instruct
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

from clara.cli.args import add_threads_argument, set_threads

log = logging.getLogger(__name__)

PROMPT_TEXT = (
    "The museum of Mira was founded in 1802 by Kalo Venra, who had studied physics at the school "
    "of Torven before moving to the river valley, where the old bridge still stands today. "
)


def _model(name: str, smollm2_dir: str, work: Path):
    from clara.model.backbone import build_tiny_backbone, convert_gguf_backbone
    from clara.config import BackboneKind, ModelConfig
    from clara.model.clara_model import ClaraModel

    if name == "tiny":
        cfg = ModelConfig(backbone=str(build_tiny_backbone(work / "tiny")), kind=BackboneKind.TINY)
    else:
        cfg = ModelConfig(backbone=str(convert_gguf_backbone(out_dir=smollm2_dir)), kind=BackboneKind.HF)
    model = ClaraModel.from_config(cfg)
    model.eval()
    return model


def _prompt(model, prompt_len: int, batch: int):
    import torch

    ids = model.tokenizer(PROMPT_TEXT * 50, add_special_tokens=False)["input_ids"][:prompt_len]
    if len(ids) < prompt_len:
        raise SystemExit(f"prompt text gives only {len(ids)} tokens; lower --prompt-len")
    input_ids = torch.tensor([ids] * batch)  # (B, P)
    return input_ids, torch.ones_like(input_ids)


def bench_one(name: str, args, work: Path) -> dict:
    import torch

    from clara.model.generation import SamplingParams, generate_from_embeds

    model = _model(name, args.smollm2_dir, work)
    ids, mask = _prompt(model, args.prompt_len, args.batch)
    params = SamplingParams(max_new_tokens=args.new_tokens)  # no eos: exactly new_tokens tokens
    lm = model.lm

    def ours():
        return generate_from_embeds(lm, lm.get_input_embeddings()(ids), mask, params)

    def hf():
        out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens, do_sample=False,
                          eos_token_id=None, pad_token_id=model.pad_id)
        return out[:, ids.shape[1]:].tolist()

    times = {"embeds_kv": [], "hf_generate": []}
    cpu = {"embeds_kv": [], "hf_generate": []}  # process CPU time: less sensitive to other processes
    with torch.no_grad(), model.using("generator"):
        same = ours() == hf()  # also the warm-up of both
        for rep in range(args.reps):
            order = [("embeds_kv", ours), ("hf_generate", hf)]
            for key, fn in order if rep % 2 == 0 else order[::-1]:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    new = args.batch * args.new_tokens
    tps = {k: [new / t for t in v] for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in tps.items()}
    cpu_med = {k: statistics.median(new / t for t in v) for k, v in cpu.items()}
    return {
        "backbone": name,
        "params": sum(p.numel() for p in lm.parameters()),
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch": args.batch, "reps": args.reps,
        "torch_threads": torch.get_num_threads(),
        "same_tokens": same,
        "tokens_per_s_median": {k: round(v, 1) for k, v in med.items()},
        "tokens_per_s_all": {k: [round(x, 1) for x in v] for k, v in tps.items()},
        "ratio_embeds_kv_over_hf": round(med["embeds_kv"] / med["hf_generate"], 3),
        "cpu_tokens_per_s_median": {k: round(v, 1) for k, v in cpu_med.items()},
        "cpu_ratio_embeds_kv_over_hf": round(cpu_med["embeds_kv"] / cpu_med["hf_generate"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", choices=["tiny", "smollm2", "both"], default="both",
                        help="tiny: random-init test backbone built in a temp dir; smollm2: SmolLM2-135M-Instruct")
    parser.add_argument("--smollm2-dir", default="out/backbones/smollm2-135m-instruct",
                        help="converted SmolLM2 directory (converted from the PyPI GGUF if missing)")
    parser.add_argument("--prompt-len", type=int, default=128, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row")
    parser.add_argument("--batch", type=int, default=1, help="rows generated together")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each method (interleaved)")
    add_threads_argument(parser, help="torch intra-op threads (0: torch default)")
    parser.add_argument("--out", default="", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    from clara.cli.console import configure_logging

    configure_logging()
    set_threads(args.threads)
    names = ["tiny", "smollm2"] if args.backbone == "both" else [args.backbone]
    results = []
    with tempfile.TemporaryDirectory() as work:
        for name in names:
            r = bench_one(name, args, Path(work))
            results.append(r)
            print(json.dumps(r))
            print(f"{name}: embeds+KV {r['tokens_per_s_median']['embeds_kv']} tok/s, "
                  f"HF generate {r['tokens_per_s_median']['hf_generate']} tok/s, "
                  f"ratio {r['ratio_embeds_kv_over_hf']} (CPU-time ratio {r['cpu_ratio_embeds_kv_over_hf']}; "
                  f"same tokens: {r['same_tokens']})")
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
