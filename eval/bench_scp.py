"""Benchmark: one SCP optimizer step vs a plain LoRA fine-tune step of the generator.

The baseline trains the generator adapter on the *same target tokens* with the document as text
in its prompt (no compressor, no memory). Repetitions of the two are interleaved so both see the
same machine load; medians and their ratio come from one run.

Also the same SCP step in bf16 autocast, as ``train.precision=bf16`` trains it (CPUs with avx512_bf16 or
AMX run it natively): ``ratio_fp32_over_bf16``. And the cost of switching adapters: the same SCP step with
peft's own ``set_adapter`` (walks every module of the model) against AdapterSet's cached LoRA-layer switch,
and the two switches alone (``switch_ms``: one ``activate`` call, median over ``--switches`` calls).

    python -m clara.eval.bench_scp --backbone out/backbones/smollm2-135m-instruct --kind hf --cr 16
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch

from clara.cli.args import add_threads_argument, set_threads

log = logging.getLogger(__name__)


def _batch(n: int, seed: int = 11):
    from clara.pretrain.scp import FreshExamples
    from clara.model.prompts import QA_INSTRUCTION

    fresh = FreshExamples(seed, 4 * n)
    return [e for e in (fresh[i] for i in range(4 * n)) if e.instruction == QA_INSTRUCTION][:n]


def bench(backbone: str, kind: str, cr: int, chunk_len: int, batch_size: int, reps: int, max_target: int,
          switches: int = 200) -> dict:
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel
    from clara.pretrain.scp import scp_loss

    cfg = ModelConfig(backbone=backbone, kind=kind, chunk_len=chunk_len, compression_rate=cr, lora=LoraConfig(r=16, alpha=32))
    model = ClaraModel.from_config(cfg)
    model.set_trainable(["compressor", "generator"])
    batch = _batch(batch_size)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)

    def scp_step(bf16: bool = False):  # bf16: as the Trainer runs train.precision=bf16 (forward under autocast)
        with torch.autocast(device_type=model.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = scp_loss(model, batch, 0.1, max_target)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    text_prompts = [f"Background:\n{e.doc}\n\n{e.instruction}" for e in batch]

    def lora_step():  # generator only, document as text, same targets
        model.generator_loss(text_prompts, None, [e.target for e in batch], max_answer_len=max_target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    sets = model.adapters

    def scp_step_peft_switch():
        sets.fast_switch = False
        try:
            scp_step()
        finally:
            sets.fast_switch = True

    steps = (("scp", scp_step), ("lora_text", lora_step), ("scp_peft_switch", scp_step_peft_switch),
             ("scp_bf16", lambda: scp_step(bf16=True)))
    times: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _, fn in steps:  # warm-up
        fn()
    for _ in range(reps):
        for name, fn in steps:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    switch_ms = {}
    for fast in (True, False):
        sets.fast_switch, one = fast, []
        for i in range(switches):
            t = time.perf_counter()
            sets.activate("generator" if i % 2 else "compressor")
            one.append(1e3 * (time.perf_counter() - t))
        switch_ms["cached_layers" if fast else "peft_set_adapter"] = statistics.median(one)
    sets.fast_switch = True
    return {"backbone": backbone, "cr": cr, "num_mem": model.num_mem, "batch_size": batch_size, "reps": reps,
            "threads": torch.get_num_threads(), "median_s": med, "ratio_scp_over_lora": med["scp"] / med["lora_text"],
            "ratio_peft_switch_over_cached": med["scp_peft_switch"] / med["scp"],
            "ratio_fp32_over_bf16": med["scp"] / med["scp_bf16"], "switch_ms": switch_ms,
            "ratio_switch_peft_over_cached": switch_ms["peft_set_adapter"] / switch_ms["cached_layers"],
            "times": times}  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", required=True, help="backbone directory")
    p.add_argument("--kind", default="hf", choices=["hf", "tiny"], help="backbone kind")
    p.add_argument("--cr", type=int, default=16, help="compression rate (m = chunk_len / cr)")
    p.add_argument("--chunk-len", type=int, default=256, help="document tokens per chunk")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions of each step kind")
    p.add_argument("--max-target", type=int, default=96, help="target tokens per example")
    add_threads_argument(p)
    p.add_argument("--switches", type=int, default=200, help="adapter switches timed for switch_ms")
    args = p.parse_args(argv)
    set_threads(args.threads)
    torch.manual_seed(0)
    r = bench(args.backbone, args.kind, args.cr, args.chunk_len, args.batch_size, args.reps, args.max_target, args.switches)
    print(json.dumps({k: v for k, v in r.items() if k != "times"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
