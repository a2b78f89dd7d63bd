"""`clara pretrain sweep`: SCP at each compression rate, then one compression evaluation of all.

It trains (stage 1) and measures (``clara.eval.compression``), so it sits in the evaluation layer and
adds itself to the ``clara pretrain`` command group (registered after ``clara.pretrain.cli``).
"""

from __future__ import annotations

import argparse

from clara.cli.args import add_threads_argument, csv_list, int_list, set_threads, split_config_args, subcommands_of
from clara.eval.cli import add_answer_options


def register(subparsers) -> None:
    register_sweep(subcommands_of(subparsers, "pretrain"))


SWEEP_EPILOG = """\
example (the CR sweep of the compression evaluation):
  clara pretrain sweep configs/smollm2.yaml train.max_steps=2000 --crs 4,16,32,64,128,256 \\
      --world-fresh --eval-world out/world --out out/sweep
writes OUT/cr-{CR}/ (one SCP run per CR: adapters, checkpoints, metrics.jsonl, config.yaml, sweep_train.json),
OUT/sweep.json (as `clara eval compression --out`, plus per-CR training records), OUT/sweep.md, OUT/sweep.png.
Run the same command again to continue a killed sweep: finished CRs are skipped, the others resumed."""


def register_sweep(sub) -> None:
    s = sub.add_parser(
        "sweep",
        help="compression-rate sweep: SCP per CR into OUT/cr-{CR}, then one compression evaluation of all",
        description="For each --crs rate, SCP as `clara pretrain train` with model.compression_rate=CR added to\n"
        "the overrides (m = model.chunk_len // CR memory vectors), into OUT/cr-{CR}. A CR whose run finished\n"
        "(adapters written, metrics at train.max_steps, same config) is skipped; an unfinished one is resumed\n"
        "exactly. Then all CRs answer the same held-out world questions (`clara eval compression`): memory\n"
        "and wrong_memory per CR, raw_text and closed_book once. Every CR must divide model.chunk_len\n"
        "(checked before any training).",
        epilog=SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] KEY=VALUE",
                   help="an optional YAML preset (configs/*.yaml), then dotted overrides, e.g. train.max_steps=2000 "
                   "(model.compression_rate is set by --crs)")
    s.add_argument("--config", "-c", default=None, help="YAML preset (alternative to giving it first)")
    s.add_argument("--crs", default="4,16,32,64,128,256", help="compression rates, comma-separated; each must divide "
                   "model.chunk_len (default: %(default)s)")
    s.add_argument("--out", required=True, help="sweep directory: OUT/cr-{CR} per rate, OUT/sweep.{json,md,png}")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="pretrain records JSONL (from `clara pretrain synth`, or the reference format)")
    src.add_argument("--world-fresh", action="store_true", help="train on fresh world documents synthesised on the "
                     "fly (seed scp.fresh_seed), each seen once; every CR sees the same documents")
    s.add_argument("--skip-bad-records", action="store_true", help="log and skip malformed input lines instead of stopping")
    s.add_argument("--allow-config-change", action="store_true",
                   help="continue a CR's run although the config differs from its checkpoint's, e.g. a larger "
                   "train.max_steps to extend a finished sweep (the change is logged)")
    s.add_argument("--eval-world", required=True, help="world directory of the evaluation (from `clara world --out DIR`)")
    s.add_argument("--eval-split", default="test_unseen", help="split(s), comma-separated; test_unseen holds entities "
                   "never asked about in training (default: %(default)s)")
    s.add_argument("--eval-types", default="single_hop", help="question types, comma-separated (default: %(default)s)")
    s.add_argument("--eval-limit", type=int, default=100, help="at most this many questions, 0 = all (default: %(default)s)")
    add_answer_options(s)
    s.add_argument("--eval-batch-size", type=int, default=8, help="questions per evaluation batch (default: %(default)s)")
    s.add_argument("--plot-metric", default="em", choices=["em", "f1", "cover_em"],
                   help="metric on the y axis of OUT/sweep.png (default: %(default)s)")
    add_threads_argument(s)
    s.set_defaults(func=run_sweep_command)


def run_sweep_command(args) -> int:
    import time

    from clara.errors import ConfigError
    from clara.eval.compression import format_table
    from clara.eval.sweep import run_sweep, training_table
    from clara.fileio import SWEEP, claim_output

    config, overrides = split_config_args(args)
    try:
        crs = int_list(args.crs)
    except ValueError:
        raise ConfigError(f"--crs {args.crs}: expected integers separated by commas, e.g. 4,16,32,64,128,256") from None
    set_threads(args.threads)
    claim_output(args.out, SWEEP)
    start = time.perf_counter()
    results = run_sweep(
        config, overrides, crs, args.out, data=args.data, fresh=args.world_fresh, eval_world=args.eval_world,
        eval_splits=csv_list(args.eval_split), eval_types=csv_list(args.eval_types), eval_limit=args.eval_limit or None,
        skip_bad=args.skip_bad_records, allow_config_change=args.allow_config_change, plot_metric=args.plot_metric,
        settings=args.settings, prompt=args.prompt, style=args.style, batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
    )  # fmt: skip
    first, sweep = results["runs"][0], results["sweep"]
    print(f"sweep: CRs {','.join(map(str, sweep['crs']))} in {time.perf_counter() - start:.0f} s (training "
          f"{sweep['train_seconds']:.0f} s, evaluation {sweep['eval_seconds']:.0f} s); {first['n']} questions on "
          f"{first['documents']} documents from {','.join(results['splits'])} of {results['world']}")  # fmt: skip
    print(training_table(sweep["training"]))
    print()
    print(format_table(results))
    print(f"results: {args.out}/sweep.json, {args.out}/sweep.md, {args.out}/sweep.png")
    return 0
