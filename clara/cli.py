"""The `clara` console script: one entry point, one subcommand per stage or tool.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func``; modules import heavy libraries (torch, transformers) inside their functions so
that ``clara --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from clara.cli_args import VERBOSE_HELP, add_verbose_everywhere, parse_with_overrides
from clara.console import configure_logging
from clara.errors import ClaraError

COMMAND_MODULES = (
    "clara.world.cli",  # clara world
    "clara.data_cli",  # clara data check
    "clara.backbone_cli",  # clara backbone convert|tiny
    "clara.eval.cli",  # clara eval ...
    "clara.corpus_cli",  # clara corpus ingest
    "clara.pretrain.cli",  # clara pretrain synth|train|instruct
    "clara.joint.cli",  # clara joint
    "clara.joint.rl_cli",  # clara rl
    "clara.index_cli",  # clara index build|add|verify
    "clara.serve_cli",  # clara serve
    "clara.eval.lens_cli",  # clara lens ...; clara plot ...
    "clara.demo",  # clara demo
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clara",
        description="CLaRa: retrieval and generation trained jointly in one continuous space.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    add_verbose_everywhere(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parse_with_overrides(parser, argv)
    configure_logging(verbose=args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ClaraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
