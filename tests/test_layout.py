"""DESIGN §1: stage folders are importable only under the `clara` namespace."""

import subprocess
import sys
import tempfile


def _run_outside_checkout(code: str) -> subprocess.CompletedProcess:
    # A Python started in the repo root would see kernels/ as a top-level package.
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_no_top_level_kernels_or_eval_package():
    r = _run_outside_checkout(
        "import importlib.util as u\n"
        "for name in ('kernels', 'eval', 'pretrain', 'joint'):\n"
        "    assert u.find_spec(name) is None, name\n"
        "import clara.kernels, clara.eval, clara.pretrain, clara.joint\n"
        "print('ok', clara.kernels.__file__)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "ok" in r.stdout
    assert "/kernels/__init__.py" in r.stdout


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

    from clara.cli_args import add_run_arguments, load_run_config
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
