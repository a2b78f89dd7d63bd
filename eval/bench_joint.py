"""Joint step time: cached candidate memory vs recompressing the candidates every step (DESIGN §5).

    python -m clara.eval.bench_joint --config configs/smollm2.yaml joint.world=out/world-0 --steps 3

Both variants run the same objective, batches, backward and optimizer step (query + generator
adapters, lr 0 so the weights stay equal); the only difference is where the (B, N, m, H)
candidate memory comes from. One process, one run, steps interleaved (cached, recompress,
cached, ...) so shared-CPU contention hits both alike. Median seconds per step are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from clara.cli.args import add_threads_argument, parse_with_overrides, set_threads


def time_steps(objectives: dict, batches, steps: int) -> dict[str, list[float]]:
    """Seconds per optimizer step of each objective, interleaved step by step so that a CPU shared
    with other work slows both variants alike."""
    import torch

    params = [p for p in next(iter(objectives.values())).parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.0)  # lr 0: both variants see the same weights every step
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for i in range(steps + 1):  # the first round warms caches and allocators: not timed
        for name, objective in objectives.items():
            t = time.perf_counter()
            loss, _ = objective(batches[i % len(batches)])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:
                times[name].append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="dotted config overrides (before or after the flags)")
    ap.add_argument("--config", default=None, help="YAML preset")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant")
    add_threads_argument(ap)
    ap.add_argument("--out", default=None, help="write the figures to this JSON file")
    args = parse_with_overrides(ap, argv, dest="overrides")

    import tempfile

    import torch

    from clara.config import load_config
    from clara.model.memory_cache import MemoryCache
    from clara.joint.objective import JointObjective
    from clara.joint.train import build_joint_model
    from clara.world.splits import load_split

    set_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    model = build_joint_model(cfg)
    records = load_split(cfg, cfg.joint.train_split, train=True)
    bs = cfg.train.batch_size
    batches = [records[i * bs : (i + 1) * bs] for i in range(args.steps + 1)]
    with tempfile.TemporaryDirectory() as tmp:
        cache = MemoryCache.for_model(model, tmp)
        t = time.perf_counter()
        cache.fill(model, (d for b in batches for r in b for d in r.candidates))
        fill_s = time.perf_counter() - t
        times = time_steps({"cached": JointObjective(model, cache, cfg.joint),
                            "recompress": RecompressingObjective(model, None, cfg.joint)}, batches, args.steps)
    cached, recompress = times["cached"], times["recompress"]
    result = {
        "backbone": cfg.model.backbone, "batch_size": bs, "candidates": cfg.joint.candidates,
        "top_k": cfg.joint.top_k, "num_mem": model.num_mem, "threads": torch.get_num_threads(),
        "cache_fill_s": round(fill_s, 3), "cached_step_s": statistics.median(cached),
        "recompress_step_s": statistics.median(recompress), "cached_all": cached, "recompress_all": recompress,
    }
    result["speedup"] = result["recompress_step_s"] / result["cached_step_s"]
    print(json.dumps(result, indent=1))
    if args.out:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.out, result)
    return 0


def _recompressing():
    from clara.joint.objective import JointObjective

    class Recompressing(JointObjective):
        """The baseline: the frozen compressor reruns on all B·N candidates in every step."""

        def __init__(self, model, cache, cfg):
            import dataclasses

            super().__init__(model, cache, dataclasses.replace(cfg, unfreeze_compressor=True))

        def candidate_memory(self, records):
            import torch

            with torch.no_grad():
                return super().candidate_memory(records)

    return Recompressing


def RecompressingObjective(model, cache, cfg):  # noqa: N802 (a class built lazily: torch imports inside)
    return _recompressing()(model, cache, cfg)


if __name__ == "__main__":
    raise SystemExit(main())
