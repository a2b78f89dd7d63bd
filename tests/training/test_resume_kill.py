"""Resume is exact: a run killed with SIGKILL mid-run and resumed equals an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from clara.training import read_metrics

TOY = Path(__file__).with_name("toy_train.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def toy_cmd(out, *args):
    return [sys.executable, str(TOY), "--out", str(out), *args]


def run_ok(cmd, cwd):
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_sigkill_mid_run_then_resume_is_bitwise_exact(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    # The uninterrupted run goes alongside the one we kill (2 cores, and most time is imports).
    reference = subprocess.Popen(toy_cmd(straight), cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
    proc = subprocess.Popen(toy_cmd(killed, "--sleep", "0.25"), cwd=tmp_path, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed / "checkpoints/latest"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if latest.exists() and latest.read_text().strip() >= "step-000006":
            break
        time.sleep(0.02)
    time.sleep(0.3)  # land the kill between checkpoints (after step 7 was logged, before step 8 saved)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not (killed / "rank0.safetensors").exists(), "the run finished before it was killed"
    killed_at = latest.read_text().strip()
    assert killed_at < "step-000012"

    proc = run_ok(toy_cmd(killed, "--resume"), tmp_path)
    assert reference.wait(timeout=120) == 0, reference.stderr.read()[-3000:]
    assert f"resumed from {killed / 'checkpoints' / killed_at}" in proc.stderr

    a, b = load_file(str(straight / "rank0.safetensors")), load_file(str(killed / "rank0.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    losses_a = [(r["step"], r["loss"]) for r in read_metrics(straight / "metrics.jsonl")]
    losses_b = [(r["step"], r["loss"]) for r in read_metrics(killed / "metrics.jsonl")]
    assert losses_b == losses_a and len(losses_a) == 12  # every step once, same losses
