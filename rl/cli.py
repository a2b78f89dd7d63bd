"""`clara rl`: agentic RL of the search agent (DESIGN §8) — GRPO, optional DGPO and self-certainty."""

from __future__ import annotations

import argparse

from clara.cli.args import add_run_arguments, load_run_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "rl",
        help="agentic RL: the generator searches latent memory (<search>/<information>/<answer>) trained with GRPO",
        description="Agentic RL (DESIGN §8). Starts from a stage-2 run (rl.init_adapters); only the generator "
        "adapter trains. Per step: rl.group_size rollouts per question, up to rl.max_turns turns; each "
        "</search> query goes through the query reasoner and the top rl.top_k candidate memories are spliced in. "
        "Rewards: answer EM/F1, format, optional self-certainty, retrieval hit and bridge hit (rl.reward_*; the bridge "
        "is the last gold document of a two-hop question). Loss: clipped "
        "ratio (rl.clip_eps), k3 KL to the starting generator (rl.beta), aggregation rl.aggregation "
        "(grpo|dapo|dr_grpo), DGPO teacher KL on rollouts under rl.dgpo_threshold (rl.dgpo_beta > 0). Data, "
        "candidates, memory cache and scoring come from the joint.* keys. Writes checkpoints, metrics.jsonl "
        "(reward, zero-variance groups, KL, EM, search count, thinking rate, query rewriting, source "
        "referencing) and adapters/ to out_dir.",
        epilog="example: clara rl --config configs/rl-tiny-cpu.yaml joint.world=out/world-0 rl.aggregation=dapo",
    )
    add_run_arguments(p, "rl.group_size=8 rl.dgpo_beta=0.1 train.max_steps=50")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    from clara.fileio import TRAINING_RUN, claim_output
    from clara.rl.train import run_rl

    claim_output(cfg.out_dir, TRAINING_RUN)
    out = run_rl(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    result = out["result"]
    last = next((x for x in reversed(result.losses) if x is not None), float("nan"))
    print(f"rl: {result.step} steps, last loss {last:.4f}, {result.bad_steps} skipped; adapters in "
          f"{cfg.out_dir}/adapters; metrics in {cfg.out_dir}/metrics.jsonl")
    print(f"gold recall@{cfg.rl.top_k} with the raw question as query: {out['raw_question_recall']:.3f}")
    return 0
