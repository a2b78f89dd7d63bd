"""`clara pretrain train` killed with SIGKILL mid-run and resumed equals an uninterrupted run, bitwise."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clara.training import read_metrics

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny backbone and SCP data in the *reference* format ({data_type, question, answers, docs})."""
    from clara.model.backbone import build_tiny_backbone
    from clara.pretrain.synth import fresh_world_documents, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    root = tmp_path_factory.mktemp("scp-resume")
    backbone = build_tiny_backbone(root / "tiny", seed=0)
    teacher = make_teacher("world")
    lines = []
    for d in fresh_world_documents(12, seed=5):
        r = synthesize_document(d, teacher)
        doc = d.as_text()
        lines.append({"data_type": "qa", "question": [p.question for p in r.pairs], "answers": [p.answer for p in r.pairs], "docs": [doc]})
        lines.append({"data_type": "paraphrase", "question": [""], "answers": [r.paraphrase], "docs": [doc]})
    data = root / "ref.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, backbone, data


def cmd(out, backbone, data, *extra):
    return [sys.executable, "-m", "clara.cli", "pretrain", "train", str(CONFIG), f"model.backbone={backbone}",
            "model.chunk_len=32", "model.compression_rate=8", "train.max_steps=8", "train.batch_size=3",
            "train.save_every=2", "train.log_every=1", "scp.max_target_tokens=40", "--data", str(data),
            "--out", str(out), *extra]  # fmt: skip


def test_sigkill_then_resume_is_bitwise_exact(setup):
    root, backbone, data = setup
    straight, killed = root / "straight", root / "killed"
    reference = subprocess.Popen(cmd(straight, backbone, data), cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
    proc = subprocess.Popen(cmd(killed, backbone, data), cwd=root, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    latest = killed / "checkpoints/latest"
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.exists() and latest.read_text().strip() >= "step-000002":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run finished before it was killed"
    killed_at = latest.read_text().strip()
    assert "step-000002" <= killed_at < "step-000008"
    assert not (killed / "adapters").exists()

    resumed = subprocess.run(cmd(killed, backbone, data, "--resume"), cwd=root, env=ENV, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {killed / 'checkpoints' / killed_at}" in resumed.stderr
    assert reference.wait(timeout=300) == 0, reference.stderr.read()[-3000:]

    files = ["compressor/adapter_model.safetensors", "generator/adapter_model.safetensors",
             "memory_tokens.safetensors"]  # fmt: skip (stage 1 saves no query adapter)
    for f in files:
        a, b = load_file(str(straight / "adapters" / f)), load_file(str(killed / "adapters" / f))
        assert a.keys() == b.keys() and a
        for name in a:
            assert torch.equal(a[name], b[name]), (f, name)
    losses_a = [(r["step"], r["loss"], r["mse"]) for r in read_metrics(straight / "metrics.jsonl")]
    losses_b = [(r["step"], r["loss"], r["mse"]) for r in read_metrics(killed / "metrics.jsonl")]
    assert losses_b == losses_a and len(losses_a) == 8
