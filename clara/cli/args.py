"""Arguments shared by every training stage command (`clara pretrain train`, `clara joint`, `clara rl`),
and the comma-list argument types of every command.

All take the same form, as in the house style: ``clara joint configs/smollm2.yaml train.lr=3e-4``
(a YAML preset, optional, then dotted overrides); ``--config FILE`` is accepted too.
"""

from __future__ import annotations

import argparse

from clara.errors import ConfigError


def csv_list(text: str) -> list[str]:
    """Argument type of comma lists (``--split test,test_unseen``): stripped, empty items dropped."""
    return [t.strip() for t in text.split(",") if t.strip()]


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is below {least}")
    return value


def positive_int(text: str) -> int:
    """Argument type of counts and sizes that must be at least 1 (``--batch-size``, ``--shard-docs``)."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """Argument type of counts where 0 means "the default" or "off" (``--threads``, ``--nlist``)."""
    return _whole_number(text, 0)


def int_list(text: str) -> list[int]:
    """Argument type of comma lists of integers (``--ks 1,3,5``)."""
    return [int(t) for t in csv_list(text)]


def add_prompt_argument(p: argparse.ArgumentParser, asks: str) -> None:
    """``--prompt direct|scp``: how an evaluation asks the generator; by default as the adapters record it."""
    from clara.config import GeneratorPrompt

    p.add_argument("--prompt", default=None, choices=[g.value for g in GeneratorPrompt],
                   help=f"how {asks} asks the generator (default: as the stage that trained it did, the "
                   "generator_prompt recorded in the adapters' clara_model.json; direct where none is recorded)")


def add_overwrite_argument(p: argparse.ArgumentParser, what: str, flag: str = "--out") -> None:
    """``--overwrite``: replace an output of the command's own kind; anything else at the path is always refused."""
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} already at {flag} (anything else there is refused, with or without this flag)")


def add_out_file_arguments(p: argparse.ArgumentParser, help: str, **kw) -> None:
    """``--out FILE`` and ``--overwrite`` for a command that writes its results to one file."""
    p.add_argument("--out", help=help, **{"default": None, **kw})
    add_overwrite_argument(p, "a file")


def claim_out_file(args: argparse.Namespace) -> None:
    """Refuse, before any work, an ``--out`` that is a directory, or an existing file without ``--overwrite``."""
    from clara.fileio import FILE, claim_output

    if args.out:
        claim_output(args.out, FILE, overwrite=args.overwrite)


def add_threads_argument(p, help: str = "torch CPU threads (0 = torch default)") -> argparse.Action:
    """``--threads N``: torch CPU threads (0 = torch default); applied by :func:`set_threads`.

    ``p`` is a parser or an argument group; ``help`` rewords the help where the count means more (faiss too).
    Returns the action, as ``add_argument`` does."""
    return p.add_argument("--threads", type=non_negative_int, default=0, help=help)


def set_threads(threads: int) -> None:
    """Apply ``--threads`` (0 leaves torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def add_precision_argument(p: argparse.ArgumentParser, what: str) -> None:
    """``--precision auto|fp32|bf16`` of an inference command (clara.devices.resolve_precision)."""
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help=f"precision of {what}: bf16 autocast or fp32 (default auto: bf16 only where the CPU runs "
                   "it natively, avx512_bf16 or AMX, or the GPU supports it; CLARA_PRECISION replaces auto)")


def add_run_arguments(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("config_and_overrides", nargs="*", metavar="[CONFIG.yaml] KEY=VALUE",
                   help=f"an optional YAML preset (configs/*.yaml), then dotted overrides, e.g. {example}")
    p.add_argument("--config", "-c", default=None, help="YAML preset (alternative to giving it first)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest valid checkpoint (exact: same weights and losses as an "
                   "uninterrupted run)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue although the config differs from the checkpoint's, e.g. a larger "
                   "train.max_steps to extend a finished run (the change is logged; exactness is then yours)")
    add_threads_argument(p)


OVERRIDES_DEST = "config_and_overrides"


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None = None,
                         dest: str = OVERRIDES_DEST) -> argparse.Namespace:
    """``parser.parse_args``, except that the preset and ``KEY=VALUE`` overrides may also follow flags.

    argparse fills a ``nargs="*"`` positional from its first run of bare words only, so in
    ``clara pretrain train CFG --data X train.max_steps=4`` the override after ``--data X`` was
    an unrecognized argument. Leftover bare words join the command's own list (``dest``) in order,
    where it has one; a leftover flag, or a bare word for a command without such a list, is the
    usual argparse error.
    """
    args, extra = parser.parse_known_args(argv)
    words = [a for a in extra if not a.startswith("-")]
    unknown = extra if not hasattr(args, dest) else [a for a in extra if a.startswith("-")]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if words:
        setattr(args, dest, [*getattr(args, dest), *words])
    return args


VERBOSE_HELP = "debug logging, and every line the libraries print (DeepSpeed, faiss, transformers)"


def subcommands_of(subparsers, name: str) -> argparse._SubParsersAction:
    """The subcommand group of the already registered command ``name``, so that a module of a higher
    layer can add a subcommand to it (``clara pretrain sweep`` is registered by ``clara.eval.sweep_cli``)."""
    parser = subparsers.choices[name]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"clara {name} has no subcommands")


def add_verbose_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--verbose`` is accepted after any (sub)command too: ``clara index build ... --verbose``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                if "--verbose" not in child._option_string_actions:
                    child.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
                add_verbose_everywhere(child)


def split_config_args(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The preset (``--config`` or the first bare word) and the ``KEY=VALUE`` overrides."""
    config, overrides = args.config, []
    for item in args.config_and_overrides:
        if "=" in item:
            overrides.append(item)
        elif config is None:
            config = item
        else:
            raise ConfigError(f"two config files given ({config}, {item}); give one preset, then KEY=VALUE overrides")
    return config, overrides


def load_run_config(args: argparse.Namespace):
    """Set torch threads and return the resolved config from the preset and overrides."""
    from clara.config import load_config

    config, overrides = split_config_args(args)
    set_threads(args.threads)
    return load_config(config, overrides)
