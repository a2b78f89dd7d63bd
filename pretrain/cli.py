"""`clara pretrain ...`: stage 1 — `synth` (data), `train` (SCP), `instruct` (optional instruction tuning)
and `release` (commit-sized trained adapters). `clara pretrain sweep` (SCP + compression evaluation over
compression rates) trains and measures, so it lives a layer up, in ``clara.eval.sweep_cli``."""

from __future__ import annotations

import argparse

from clara.cli.args import add_overwrite_argument, add_run_arguments, load_run_config


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="stage 1 (SCP): guided data synthesis and compressor pretraining",
        description="Stage 1 — Salient Compressor Pretraining. Subcommands: synth (QA + paraphrase data "
        "with verification), train (the SCP objective), instruct (question + k documents' memory -> answer), "
        "sweep (train and evaluate at several compression rates) and release (package trained adapters).",
    )
    sub = p.add_subparsers(dest="pretrain_command", metavar="SUBCOMMAND")
    register_synth(sub)
    register_train(sub)
    register_instruct(sub)
    register_release(sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def register_synth(sub) -> None:
    s = sub.add_parser(
        "synth",
        help="synthesise simple QA, complex QA and paraphrases per document, verified for fact coverage",
        description="For each document: list its facts, write simple QA (one fact per pair), complex QA and a "
        "paraphrase; then verify and regenerate — pairs are asked for facts no pair covers yet, up to "
        "--max-rounds rounds; documents below --threshold coverage are dropped (OUT.dropped.jsonl). Kept "
        "documents become a 'qa' and a 'paraphrase' pretrain record (and a 'continuation' with --teacher cloze) in OUT, appended and fsynced per "
        "document; re-running skips documents already done. A summary goes to OUT.summary.json.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--docs", "--corpus", dest="docs",
                     help="documents JSONL ({id,title,text} or {id,contents}; world 'facts' used if present), e.g. "
                     "the passages of `clara corpus ingest`")
    src.add_argument("--world-fresh", type=int, metavar="N", help="synthesise from N fresh world documents (never repeat)")
    s.add_argument("--world-seed", type=int, default=1,
                   help="seed of the fresh-document stream (use another seed than the evaluation world)")
    s.add_argument("--world-ranges", type=int, default=0, metavar="N",
                   help="fresh documents with the value ranges (birth years, occupations, industries) of a world of N "
                   "entities, e.g. 300 as `clara world` makes; 0 (default): each small batch's own, as scp.fresh_world_ranges")
    s.add_argument("--teacher", default="world", choices=("world", "cloze", "hf", "openai"),
                   help="world: exact from structured facts; cloze: any text, no model (cloze QA of salient spans, "
                   "reconstruction, continuation of the next passage); hf: local transformers model; openai: HTTP endpoint")
    s.add_argument("--out", required=True, help="output pretrain records JSONL (appended; resumable; a directory is refused)")
    s.add_argument("--threshold", type=float, default=0.9, help="least fraction of facts covered by QA to keep a document")
    s.add_argument("--max-rounds", type=int, default=10, help="most regeneration rounds for uncovered facts")
    s.add_argument("--limit", type=int, default=None, help="stop after this many input documents")
    s.add_argument("--model", help="hf: backbone folder (clara backbone convert --out DIR); openai: model name")
    s.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="openai: endpoint base URL (…/v1)")
    s.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable holding the API key")
    s.add_argument("--workers", type=int, default=4, help="openai: documents (and requests) in flight at once")
    s.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request before it is retried")
    s.add_argument("--retries", type=int, default=5, help="openai: retries per request on 429/5xx/timeouts")
    s.add_argument("--max-new-tokens", type=int, default=384, help="hf/openai: longest reply in tokens")
    s.set_defaults(func=run_synth)


def _teacher(args):
    from clara.errors import ConfigError
    from clara.pretrain.teacher_factory import make_teacher

    if args.teacher in ("world", "cloze"):
        return make_teacher(args.teacher)
    if not args.model:
        raise ConfigError(f"--teacher {args.teacher} needs --model (hf: a backbone folder; openai: the model name)")
    if args.teacher == "hf":
        return make_teacher("hf", model=args.model, max_new_tokens=args.max_new_tokens)
    return make_teacher("openai", base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                        workers=args.workers, timeout=args.timeout, max_retries=args.retries,
                        max_new_tokens=args.max_new_tokens)  # fmt: skip


def run_synth(args) -> int:
    from itertools import islice
    from pathlib import Path

    from clara.fileio import APPENDED_FILE, claim_output
    from clara.pretrain.synth import fresh_world_documents, read_documents, summary_path, synthesize

    claim_output(args.out, APPENDED_FILE)
    if args.world_fresh is not None:
        docs, total = fresh_world_documents(args.world_fresh, args.world_seed, args.world_ranges), args.world_fresh
    else:
        docs, total = read_documents(args.docs), None
    if args.limit is not None:
        docs, total = islice(docs, args.limit), min(args.limit, total or args.limit)
    teacher = _teacher(args)
    try:
        s = synthesize(docs, teacher, args.out, threshold=args.threshold, max_rounds=args.max_rounds, total=total)
    finally:
        teacher.close()
    print(f"synth ({s['teacher']}) -> {args.out}: kept {s['kept']}, dropped {s['dropped']}, "
          f"already done {s['skipped_already_done']}, errors {s['errors']}; {s['pairs_per_doc']:.1f} pairs/doc "
          f"({s['simple_per_doc']:.1f} simple, {s['complex_per_doc']:.1f} complex), mean coverage "
          f"{s['mean_coverage_kept']:.3f}, {s['docs_per_second']:.1f} docs/s; summary {summary_path(Path(args.out))}")  # fmt: skip
    return 0


def _add_run_args(s) -> None:
    add_run_arguments(s, "train.max_steps=200 scp.mse_weight=0.1 model.compression_rate=4")
    s.add_argument("--out", default=None, help="run directory (default: out_dir of the config); a directory holding "
                   "anything but a training run is refused")
    s.add_argument("--skip-bad-records", action="store_true", help="log and skip malformed input lines instead of stopping")


def register_train(sub) -> None:
    s = sub.add_parser(
        "train",
        help="SCP: train compressor + generator to answer QA / paraphrase targets from memory only",
        description="Salient Compressor Pretraining (DESIGN §4): L = CE(generator(instruction, mem) -> target) + "
        "scp.mse_weight * MSE(mean of memory vectors, mean of the document's last-layer states). Trains the "
        "compressor and generator adapters and the memory-token embeddings on the shared training loop "
        "(checkpoints every train.save_every steps, exact --resume). Writes RUN/adapters, RUN/metrics.jsonl "
        "(loss, ce, mse, mem_cos = mean pairwise cosine of the batch's memories) and RUN/config.yaml.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_run_args(s)
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="pretrain records JSONL (from `clara pretrain synth`, or the reference format "
                     "{data_type, question, answers, docs})")
    src.add_argument("--world-fresh", action="store_true", help="train on fresh world documents synthesised on the fly "
                     "(seed scp.fresh_seed), each seen once: nothing can be memorised")
    src.add_argument("--export-checkpoint", metavar="CKPT", help="train nothing: write the adapters of checkpoint CKPT "
                     "(RUN/checkpoints/step-N, same config) to --out (e.g. of a run stopped early)")
    add_overwrite_argument(s, "an adapters directory, with --export-checkpoint,")
    s.set_defaults(func=run_train)


def run_train(args) -> int:
    import time
    from pathlib import Path

    from clara.fileio import ADAPTERS, TRAINING_RUN, claim_output
    from clara.pretrain.scp import ADAPTERS_SUBDIR, train_scp

    cfg = load_run_config(args)
    out = Path(args.out or cfg.out_dir)
    if args.export_checkpoint:
        from clara.pretrain.scp import export_checkpoint_adapters

        claim_output(out, ADAPTERS, overwrite=args.overwrite)
        print(f"adapters of {args.export_checkpoint} written to {export_checkpoint_adapters(cfg, args.export_checkpoint, out)}")
        return 0
    claim_output(out, TRAINING_RUN)
    start = time.perf_counter()
    r = train_scp(cfg, args.data, fresh=args.world_fresh, resume=args.resume, out_dir=out,
                  skip_bad=args.skip_bad_records, allow_config_change=args.allow_config_change)
    done = [x for x in r.losses if x is not None]
    print(f"scp: {r.step} steps ({r.bad_steps} skipped) in {time.perf_counter() - start:.0f} s, "
          f"last loss {done[-1] if done else float('nan'):.4f}; adapters {out / ADAPTERS_SUBDIR}, metrics {out / 'metrics.jsonl'}")
    return 0


def register_instruct(sub) -> None:
    s = sub.add_parser(
        "instruct",
        help="optional SCP step: tune compressor + generator to answer questions from k documents' memories",
        description="Instruction tuning after SCP (DESIGN §4): question + the memories of scp.instruct_k documents -> "
        "answer. The documents are each question's gold document plus its first non-gold candidates (the hardest "
        "negatives), the gold slot chosen by a stable hash of the question id. Loss: the generator's next-token "
        "cross-entropy on the answer. Starts from SCP adapters and trains the compressor and generator adapters and "
        "the memory-token embeddings on the shared training loop (exact --resume). Data: joint records of "
        "data.train_file, or split joint.train_split of joint.world (joint.candidates must match the data). Writes "
        "RUN/adapters (evaluate with `clara eval compression --prompt direct`), RUN/metrics.jsonl, RUN/config.yaml.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_run_arguments(s, "joint.world=out/world-0 joint.candidates=20 scp.instruct_k=3 train.max_steps=200")
    s.add_argument("--init", default=None, metavar="ADAPTERS_DIR",
                   help="SCP adapters to start from: the run directory of `clara pretrain train` or its adapters/ "
                   "(sets joint.init_adapters; required unless that key is set)")
    s.add_argument("--out", default=None, help="run directory (default: out_dir of the config); a directory holding "
                   "anything but a training run is refused")
    s.set_defaults(func=run_instruct)


def run_instruct(args) -> int:
    import time

    from clara.fileio import TRAINING_RUN, claim_output
    from clara.pretrain.instruct import train_instruct
    from clara.pretrain.scp import ADAPTERS_SUBDIR

    cfg = load_run_config(args)
    out = claim_output(args.out or cfg.out_dir, TRAINING_RUN)
    start = time.perf_counter()
    r = train_instruct(cfg, args.init, resume=args.resume, out_dir=out, allow_config_change=args.allow_config_change)
    done = [x for x in r.losses if x is not None]
    print(f"instruct: {r.step} steps ({r.bad_steps} skipped) in {time.perf_counter() - start:.0f} s, last loss "
          f"{done[-1] if done else float('nan'):.4f}; adapters {out / ADAPTERS_SUBDIR}, metrics {out / 'metrics.jsonl'}")
    return 0


def register_release(sub) -> None:
    s = sub.add_parser(
        "release",
        help="package trained adapters as a small committed asset (bf16, trained adapters only, with the recipe)",
        description="Copy the adapters a stage trained (default compressor + generator of an SCP run) from a run "
        "or adapter directory, with weights in bfloat16, the run's config.yaml as train_config.yaml, the command "
        "that made them and a manifest of checksums. `make demo` starts from such an asset.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("source", help="run directory (holding adapters/) or adapter directory")
    s.add_argument("--out", required=True, help="release directory to write (e.g. assets/scp-smollm2-cr16)")
    add_overwrite_argument(s, "a release")
    s.add_argument("--keep", default="compressor,generator", help="adapters to ship, comma-separated")
    s.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"), help="stored weight type")
    s.add_argument("--command", default="", help="the exact command that trained the source (goes in the README)")
    s.add_argument("--notes", default=None, help="a markdown file appended to the README (e.g. measured quality)")
    s.add_argument("--train-config", default=None,
                   help="the run's config.yaml (default: the one beside the adapters, if any)")
    s.add_argument("--backbone-path", default=None,
                   help="the backbone directory the release names (default: the run's), e.g. out/backbones/smollm2 "
                   "where `clara backbone convert --out` puts it; loading still checks the backbone's hash")
    s.set_defaults(func=run_release)


def run_release(args) -> int:
    from pathlib import Path

    from clara.fileio import RELEASE, claim_output
    from clara.model.release import write_release

    claim_output(args.out, RELEASE, overwrite=args.overwrite)
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    out = write_release(args.source, args.out, keep=[k for k in args.keep.split(",") if k], dtype=args.dtype,
                        command=args.command, notes=notes, train_config=args.train_config,
                        backbone_path=args.backbone_path)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"release written to {out} ({size / 2**20:.1f} MiB)")
    return 0
