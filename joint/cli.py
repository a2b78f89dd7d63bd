"""`clara joint`: stage 2, joint retrieval–generation training from the generator's loss alone."""

from __future__ import annotations

import argparse

from clara.cli.args import add_run_arguments, load_run_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "joint",
        help="stage 2: train the query reasoner and generator from the next-token loss alone",
        description="Joint training (DESIGN §5). The query adapter starts as a copy of the compressor "
        "adapter (joint.init_adapters: the SCP run's adapters; empty = the current, untrained compressor). "
        "The compressor is frozen and candidate memory is compressed once into a memory-mapped cache "
        "(joint.cache_dir, keyed by the compressor's hash, reused by later runs). Scores are cosines between "
        "query and candidate memory; a straight-through top-k (joint.temperature, joint.top_k) selects the "
        "memory the generator reads; only the answer's next-token loss trains. Data: data.train_file / "
        "data.eval_file (joint records) or joint.world (a `clara world` directory; joint.train_worlds adds more "
        "worlds' training questions). Writes checkpoints, "
        "metrics.jsonl (Recall@k on dev every joint.eval_every steps), adapters/ and recall.json to out_dir.",
        epilog="example: clara joint --config configs/smollm2.yaml joint.world=out/world-0 joint.eval_every=50",
    )
    add_run_arguments(p, "train.lr=3e-4 joint.top_k=5 joint.scoring=pooled")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_run_config(args)
    from clara.fileio import TRAINING_RUN, claim_output
    from clara.joint.train import run_joint

    claim_output(cfg.out_dir, TRAINING_RUN)
    out = run_joint(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    result = out["result"]
    print(f"joint training: {result.step} steps, last loss {next((x for x in reversed(result.losses) if x is not None), float('nan')):.4f}, "
          f"{result.bad_steps} skipped; adapters in {cfg.out_dir}/adapters")
    for when in ("before", "after"):
        scores = out[when]
        if scores:
            line = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if k.endswith("/all"))
            print(f"dev Recall ({out['dev_questions']} questions) {when}: {line}")
    return 0
