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

from clara.cli.args import VERBOSE_HELP, add_verbose_everywhere, parse_with_overrides
from clara.cli.console import configure_logging
from clara.errors import ClaraError

COMMAND_MODULES = (
    "clara.cli.world",  # clara world
    "clara.cli.data",  # clara data check
    "clara.cli.backbone",  # clara backbone convert|tiny
    "clara.eval.cli",  # clara eval ...
    "clara.cli.corpus",  # clara corpus ingest
    "clara.pretrain.cli",  # clara pretrain synth|train|instruct|release
    "clara.eval.sweep_cli",  # clara pretrain sweep (after clara.pretrain.cli: it joins that group)
    "clara.joint.cli",  # clara joint
    "clara.rl.cli",  # clara rl
    "clara.cli.index",  # clara index build|add|verify
    "clara.cli.serve",  # clara serve
    "clara.eval.lens_cli",  # clara lens ...; clara plot ...
    "clara.demo.main",  # clara demo
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
    except OSError as e:  # disk full, read-only file system, permissions: the path and the cause, one line
        if args.verbose or not e.strerror:
            raise
        print(f"error: {e.filename or 'a file'}: {e.strerror.lower()} (errno {e.errno})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
