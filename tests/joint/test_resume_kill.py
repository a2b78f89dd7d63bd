"""`clara joint` and `clara rl` killed with SIGKILL and resumed end with the same weights and losses as a straight run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from safetensors.torch import load_file

from clara.training import read_metrics

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def write_config(path, backbone, world, out_dir, cache_dir, stage="joint"):
    cfg = {
        "out_dir": str(out_dir),
        "model": {"backbone": str(backbone), "kind": "tiny", "chunk_len": 32, "compression_rate": 8,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {"lr": 1e-3, "max_steps": 12, "batch_size": 2, "save_every": 2, "log_every": 1,
                  "keep_checkpoints": 3, "warmup_steps": 2, "schedule": "cosine"},
        "joint": {"world": str(world), "candidates": 8, "top_k": 3, "eval_every": 5, "eval_limit": 4,
                  "cache_dir": str(cache_dir)},
    }
    if stage == "rl":  # sampled rollouts, DGPO and self-certainty: every source of randomness in the loop
        cfg["rl"] = {"group_size": 2, "max_turns": 2, "top_k": 2, "max_turn_tokens": 6, "dgpo_beta": 0.1,
                     "reward_self_certainty": 0.1, "distractor_end": 0.5}
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_cmd(stage, config, *extra):
    return [sys.executable, "-m", "clara.cli", stage, "--config", str(config), "--threads", "1", *extra]


@pytest.mark.parametrize("stage", ["joint", "rl"])
def test_sigkill_then_resume_is_bitwise_exact(tmp_path, tiny_backbone, world_dir, stage):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cfg_a = write_config(tmp_path / "a.yaml", tiny_backbone, world_dir, straight, tmp_path / "cache-a", stage)
    cfg_b = write_config(tmp_path / "b.yaml", tiny_backbone, world_dir, killed, tmp_path / "cache-b", stage)
    reference = subprocess.Popen(stage_cmd(stage, cfg_a), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(stage_cmd(stage, cfg_b), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints/latest"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step-000004":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it was killed"
    assert not (killed / "adapters").exists()
    killed_at = latest.read_text().strip()
    assert "step-000004" <= killed_at < "step-000012"

    resumed = subprocess.run(stage_cmd(stage, cfg_b, "--resume"), cwd=tmp_path, env=ENV, capture_output=True,
                             text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=240) == 0, reference.stderr.read()[-3000:]
    assert f"resumed from {killed / 'checkpoints' / killed_at}" in resumed.stderr

    if stage == "joint":  # how the run asked the generator travels with its adapters (joint.prompt)
        assert json.loads((killed / "adapters" / "clara_model.json").read_text())["generator_prompt"] == "direct"
    for adapter in ("query", "generator", "compressor"):
        a = load_file(str(straight / "adapters" / adapter / "adapter_model.safetensors"))
        b = load_file(str(killed / "adapters" / adapter / "adapter_model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].equal(b[name]), f"{adapter}: {name}"
    keys = ("step", "loss") + (("reward_mean", "kl", "search_count", "teacher_kl") if stage == "rl" else ())
    train_a = [tuple(r[k] for k in keys) for r in read_metrics(straight / "metrics.jsonl") if r["kind"] == "train"]
    train_b = [tuple(r[k] for k in keys) for r in read_metrics(killed / "metrics.jsonl") if r["kind"] == "train"]
    assert train_b == train_a and len(train_a) == 12
    if stage == "rl":
        return
    evals = read_metrics(killed / "metrics.jsonl", kind="eval")
    assert [r["step"] for r in evals] == [5, 10]  # the Recall@k curve, each step once
    recall = json.loads((killed / "recall.json").read_text())
    assert recall == json.loads((straight / "recall.json").read_text())
