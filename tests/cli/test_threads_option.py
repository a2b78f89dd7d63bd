"""``--threads`` is one option everywhere (clara.cli.args.add_threads_argument): a count of at least 0."""

import argparse
import importlib

import pytest

from clara.cli.main import build_parser


def commands_with_threads(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The command lines (``("eval", "reading")``) of every (sub)command of ``parser`` that accepts --threads."""
    found = [path] if path and "--threads" in parser._option_string_actions else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, child in action.choices.items():
                if id(child) not in seen:  # an alias names the same parser
                    seen.add(id(child))
                    found += commands_with_threads(child, (*path, name))
    return found


COMMANDS = commands_with_threads(build_parser())


def test_the_walk_finds_the_commands():
    names = {" ".join(c) for c in COMMANDS}
    assert {"eval reading", "eval compression", "eval retrieval", "eval agent", "pretrain sweep", "lens",
            "lens question", "demo", "serve", "joint"} <= names


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_threads_option_refuses_a_negative_count(command, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*command, "--threads", "-1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("argument --threads: -1 is below 0")


@pytest.mark.parametrize("module", ["clara.eval.bank_answers", "clara.eval.bench_generation", "clara.eval.bench_joint",
                                    "clara.eval.bench_scp", "clara.kernels.bench"])
def test_the_scripts_refuse_a_negative_count_too(module, capsys):
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).main(["--threads", "-1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("argument --threads: -1 is below 0")


def test_eval_retrieval_takes_threads(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["eval", "retrieval", "--help"])
    assert e.value.code == 0
    assert "--threads" in capsys.readouterr().out
    args = build_parser().parse_args(["eval", "retrieval", "--world", "w", "--threads", "2"])
    assert args.threads == 2
