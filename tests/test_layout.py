"""DESIGN §1: stage folders are importable only under the `clara` namespace, from any directory."""

import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parent.parent
STAGE_FOLDERS = ("pretrain", "joint", "rl", "kernels", "eval", "demo")


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def _top_level_import_names() -> set[str]:
    """What a Python started in the repo root could import from our top-level entries."""
    names = set()
    for entry in REPO.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and ((entry / "__init__.py").exists() or list(entry.glob("__init__.*"))):
            names.add(entry.name)
        elif entry.suffix in (".py", ".so", ".pyd"):
            names.add(entry.stem)
    return names


def test_no_top_level_folder_shadows_an_installed_distribution():
    installed = {name for name, dists in packages_distributions().items() if set(dists) != {"clara-rag"}}
    importable = _top_level_import_names()
    assert importable == {"clara"}, f"top-level regular packages besides clara: {importable - {'clara'}}"
    assert not importable & installed, importable & installed
    for stage in STAGE_FOLDERS:  # mapped into clara.<stage> as namespace folders (clara/__init__.py)
        assert (REPO / stage).is_dir() and not (REPO / stage / "__init__.py").exists(), stage


def test_stages_import_under_clara_from_any_directory(tmp_path):
    code = (
        "import importlib.util as u, transformers\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,"
        " num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))\n"
        "import clara.kernels.dispatch, clara.eval.stats, clara.pretrain.scp, clara.joint.objective, clara.rl.rollout, clara.demo.main\n"
        "print(clara.kernels.dispatch.__file__)\n"
        "spec = u.find_spec('kernels')\n"
        "print('kernels:', spec and spec.origin)\n"
    )
    for cwd in (REPO, tmp_path):
        r = _python(code, cwd)
        assert r.returncode == 0, (cwd, r.stderr[-2000:])
        assert r.stdout.splitlines()[0] == str(REPO / "kernels" / "dispatch.py")
        # a bare `import kernels` is never our folder: Hugging Face's distribution, or nothing
        assert f"kernels: {REPO / 'kernels'}" not in r.stdout, (cwd, r.stdout)


def test_cli_runs_from_the_repo_root(tmp_path):
    out = tmp_path / "tiny"
    r = subprocess.run(
        [sys.executable, "-m", "clara.cli", "backbone", "tiny", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "config.json").exists()


def test_wheel_holds_only_clara_packages(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("clara_rag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"clara"}, tops
    for stage, module in (("kernels", "dispatch"), ("eval", "stats"), ("pretrain", "scp"), ("joint", "objective"), ("rl", "rollout"), ("demo", "main")):
        assert f"clara/{stage}/{module}.py" in names, stage


def test_cli_help_lists_commands():
    r = subprocess.run([sys.executable, "-m", "clara.cli", "--help"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "COMMAND" in r.stdout


def test_atomic_writes_get_normal_permissions(tmp_path):
    import os

    from clara.fileio import atomic_dir, atomic_write_text

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_stage_commands_take_a_preset_then_overrides(tmp_path):
    import argparse

    import pytest

    from clara.cli.args import add_run_arguments, load_run_config
    from clara.errors import ConfigError

    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  lr: 1e-3\n  max_steps: 7\n")
    p = argparse.ArgumentParser()
    add_run_arguments(p, "train.lr=3e-4")
    cfg = load_run_config(p.parse_args([str(preset), "train.lr=3e-4"]))
    assert (cfg.train.lr, cfg.train.max_steps) == (3e-4, 7)
    assert load_run_config(p.parse_args(["--config", str(preset), "train.seed=3"])).train.seed == 3
    with pytest.raises(ConfigError, match="two config files"):
        load_run_config(p.parse_args([str(preset), str(preset)]))
    with pytest.raises(ConfigError, match="train.lrr"):
        load_run_config(p.parse_args(["train.lrr=1"]))


@pytest.mark.parametrize("argv, expected", [
    (["pretrain", "train", "configs/tiny-cpu.yaml", "--data", "X", "train.max_steps=4"],
     ["configs/tiny-cpu.yaml", "train.max_steps=4"]),
    (["joint", "configs/tiny-cpu.yaml", "--threads", "1", "train.max_steps=1", "train.lr=1e-4"],
     ["configs/tiny-cpu.yaml", "train.max_steps=1", "train.lr=1e-4"]),
    (["rl", "train.max_steps=1", "--resume", "configs/rl-tiny-cpu.yaml"], ["train.max_steps=1", "configs/rl-tiny-cpu.yaml"]),
])
def test_overrides_before_or_after_the_flags(argv, expected):
    from clara.cli.main import build_parser
    from clara.cli.args import parse_with_overrides

    args = parse_with_overrides(build_parser(), argv)
    assert args.config_and_overrides == expected


@pytest.mark.parametrize("argv", [
    ["joint", "configs/tiny-cpu.yaml", "--bogus"],  # an unknown flag is still an error
    ["world", "--out", "X", "train.max_steps=1"],  # a command that takes no overrides
])
def test_leftover_arguments_are_still_errors(argv, capsys):
    from clara.cli.main import build_parser
    from clara.cli.args import parse_with_overrides

    with pytest.raises(SystemExit):
        parse_with_overrides(build_parser(), argv)
    assert "unrecognized arguments" in capsys.readouterr().err
