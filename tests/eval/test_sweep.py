"""`clara pretrain sweep` on the tiny backbone: mechanics only (train per CR, skip, resume, one evaluation)."""

import json
import logging
import shutil
from pathlib import Path

import pytest

from clara.cli.main import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
CRS = (4, 8)  # chunk_len 32: 8 and 4 memory vectors


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from clara.model.backbone import build_tiny_backbone
    from clara.world import generate_world, write_world

    root = tmp_path_factory.mktemp("sweep")
    backbone = build_tiny_backbone(root / "tiny", seed=0)
    # 20 entities: test_unseen then has single-hop questions about two different documents
    world = write_world(generate_world(seed=0, entities=20, candidates=4), root / "world")
    return root, backbone, world


def sweep_argv(backbone, world, out, *extra, crs=CRS, overrides=()):
    return ["pretrain", "sweep", str(CONFIG), f"model.backbone={backbone}", "model.chunk_len=32", "train.max_steps=2",
            "train.batch_size=2", "train.log_every=1", "scp.max_target_tokens=24", *overrides,
            "--crs", ",".join(map(str, crs)), "--world-fresh", "--eval-world", str(world), "--eval-limit", "4",
            "--eval-batch-size", "4", "--max-new-tokens", "2", "--threads", "1", "--out", str(out), *extra]  # fmt: skip


def read_sweep(out: Path) -> dict:
    return json.loads((out / "sweep.json").read_text())


def mtimes(run_dir: Path) -> dict[str, int]:
    """Modification times of the files a (re)training would rewrite."""
    files = [run_dir / "adapters" / "clara_model.json", run_dir / "metrics.jsonl",
             *sorted((run_dir / "checkpoints").rglob("*.safetensors"))]  # fmt: skip
    return {str(f): f.stat().st_mtime_ns for f in files}


@pytest.fixture(scope="module")
def first_sweep(setup):
    root, backbone, world = setup
    out = root / "sweep"
    assert main(sweep_argv(backbone, world, out)) == 0
    return out


def test_sweep_trains_each_cr_and_evaluates_text_baselines_once(setup, first_sweep, capsys):
    out = first_sweep
    res = read_sweep(out)
    assert [r["cr"] for r in res["runs"]] == list(CRS) and res["sweep"]["crs"] == list(CRS)
    for run in res["runs"]:
        info = json.loads((out / f"cr-{run['cr']}" / "adapters" / "clara_model.json").read_text())
        assert info["num_mem"] == run["num_mem"] == 32 // run["cr"]
        assert info["generator_prompt"] == "scp"  # SCP trains the generator to be asked in its QA form
        assert run["model"] == str(out / f"cr-{run['cr']}" / "adapters")
        assert {"memory", "wrong_memory"} <= set(run["settings"]) and run["settings"]["memory"]["n"] == 4
        t = run["training"]
        assert t["status"] == "trained" and t["steps"] == 2 and t["train_seconds"] > 0
        assert t["train_seconds_total"] == t["train_seconds"]
    baselines = [r["cr"] for r in res["runs"] if {"raw_text", "closed_book"} & set(r["settings"])]
    assert baselines == [CRS[0]]  # once, not per CR
    assert set(res["runs"][0]["settings"]) == {"memory", "wrong_memory", "raw_text", "closed_book"}
    md = (out / "sweep.md").read_text()
    assert "| 8 | wrong_memory | 4 |" in md and "| 4 | 8 | trained | 2 |" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_crs_and_resumes_unfinished_ones(setup, first_sweep, tmp_path, caplog):
    _, backbone, world = setup
    out = tmp_path / "sweep"
    shutil.copytree(first_sweep, out)
    before = mtimes(out / "cr-4")
    shutil.rmtree(out / "cr-8" / "adapters")  # as if killed after the last checkpoint, before the adapters
    caplog.set_level(logging.INFO, logger="clara.eval.sweep")
    assert main(sweep_argv(backbone, world, out)) == 0
    assert mtimes(out / "cr-4") == before
    assert any("CR 4" in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)
    training = {t["cr"]: t for t in read_sweep(out)["sweep"]["training"]}
    assert training[4]["status"] == "skipped" and training[4]["train_seconds"] == 0.0
    assert training[4]["train_seconds_total"] > 0  # kept from the run that trained it
    assert training[8]["status"] == "resumed" and training[8]["resumed_from"] == 2 and training[8]["steps"] == 2
    assert (out / "cr-8" / "adapters" / "clara_model.json").is_file()


def test_changed_config_refuses_to_skip_and_extends_when_allowed(setup, first_sweep, tmp_path, capsys):
    _, backbone, world = setup
    out = tmp_path / "sweep"
    shutil.copytree(first_sweep, out)
    # a finished run under another config is not skipped: its resume refuses the changed config
    assert main(sweep_argv(backbone, world, out, crs=(8,), overrides=["train.lr=5e-4"])) == 1
    assert "--allow-config-change" in capsys.readouterr().err
    longer = sweep_argv(backbone, world, out, crs=(8,), overrides=["train.max_steps=3"])
    assert main(longer) == 1
    assert "--allow-config-change" in capsys.readouterr().err
    assert main([*longer, "--allow-config-change"]) == 0
    (t,) = read_sweep(out)["sweep"]["training"]
    assert t["status"] == "resumed" and t["resumed_from"] == 2 and t["steps"] == 3
    steps = [json.loads(line)["step"] for line in (out / "cr-8" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


@pytest.mark.parametrize("crs, named", [((4, 5), "--crs 5:"), ((64, 4, 3), "--crs 64,3:")])
def test_cr_that_does_not_divide_chunk_len_fails_before_training(setup, tmp_path, capsys, crs, named):
    _, backbone, world = setup
    out = tmp_path / "sweep"
    assert main(sweep_argv(backbone, world, out, crs=crs)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}") and "model.chunk_len=32" in err[0]
    assert not out.exists()  # nothing trained, nothing written


def test_crs_must_be_integers(setup, tmp_path, capsys):
    _, backbone, world = setup
    assert main([*sweep_argv(backbone, world, tmp_path / "s"), "--crs", "4,x"]) == 1
    assert "error: --crs 4,x" in capsys.readouterr().err


@pytest.mark.parametrize("extra, named", [
    (["--eval-world", "no-such-world"], "no-such-world: not a directory"),
    (["--settings", "memory,telepathy"], "--settings telepathy"),
    (["--eval-split", "test_unseen,nope"], "no split 'nope'"),
])  # fmt: skip
def test_bad_eval_arguments_fail_before_training(setup, tmp_path, capsys, extra, named):
    _, backbone, world = setup
    out = tmp_path / "sweep"
    assert main([*sweep_argv(backbone, world, out), *extra]) == 1
    assert named in capsys.readouterr().err
    assert not out.exists()


def test_missing_training_data_fails_before_training(setup, tmp_path, capsys):
    _, backbone, world = setup
    out = tmp_path / "sweep"
    argv = [a for a in sweep_argv(backbone, world, out) if a != "--world-fresh"]
    assert main([*argv, "--data", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: training data not found" in capsys.readouterr().err
    assert not out.exists()
