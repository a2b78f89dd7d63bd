"""Multi-process training on CPU (gloo): torchrun DDP and DeepSpeed ZeRO-2, two ranks each.

DeepSpeed compiles its shared-memory comm op the first time it runs on a machine (~50 s here,
cached under ~/.cache/torch_extensions afterwards); later runs take ~20 s per launch.
The DeepSpeed resume test is marked slow.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clara.training import read_metrics

TOY = Path(__file__).with_name("toy_train.py")
REPO = Path(__file__).resolve().parents[2]


def torchrun(out: Path, *args: str, timeout: int = 300, ok: bool = True, **env_extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(TOY), "--out", str(out), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", **env_extra}
    proc = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout)
    assert (proc.returncode == 0) == ok, proc.stderr[-4000:]
    return proc


def assert_ranks_identical_and_trained(out: Path) -> dict:
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"{name} differs between ranks"
    torch.manual_seed(0)  # the toy model's initial weights
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("toy_for_init", TOY)
    toy = module_from_spec(spec)
    spec.loader.exec_module(toy)
    init = toy.ToyRegressor().state_dict()
    assert not torch.equal(init["inp.weight"], r0["inp.weight"]), "weights did not move"
    return r0


def test_torchrun_ddp_two_ranks_stay_identical(tmp_path):
    out = tmp_path / "ddp"
    torchrun(out, "--set", "backend=ddp", "max_steps=4", timeout=120)
    assert_ranks_identical_and_trained(out)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3, 4]  # rank 0 logs alone
    rng = torch.load(out / "checkpoints/step-000004/rng.pt", weights_only=True)
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # per-rank RNG saved


def test_ddp_ranks_drifting_apart_is_caught(tmp_path):
    proc = torchrun(tmp_path / "drift", "--set", "backend=ddp", "max_steps=3", timeout=120, ok=False,
                    TOY_BYPASS_DDP="1")
    assert "DDP ranks hold different weights after step 1" in proc.stderr


DS_ARGS = ["--set", "backend=deepspeed", "max_steps=4", f"deepspeed_config={REPO / 'configs/ds_zero2.json'}"]


def test_deepspeed_zero2_on_cpu_trains(tmp_path):
    out = tmp_path / "ds"
    torchrun(out, *DS_ARGS)
    assert_ranks_identical_and_trained(out)
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 4 and all(isinstance(x, float) for x in losses)
    manifest = (out / "checkpoints/step-000004/manifest.json").read_text()
    assert '"backend": "deepspeed"' in manifest and (out / "checkpoints/step-000004/engine").is_dir()


@pytest.mark.slow
def test_deepspeed_zero2_resume_is_exact(tmp_path):
    out = tmp_path / "ds"
    torchrun(out, *DS_ARGS)
    reference = load_file(str(out / "rank0.safetensors"))
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    # Pretend the run died after its step-2 checkpoint, then resume it.
    shutil.rmtree(out / "checkpoints/step-000004")
    (out / "checkpoints/latest").write_text("step-000002\n")
    proc = torchrun(out, "--resume", *DS_ARGS)
    assert "resumed from" in proc.stderr and "step-000002" in proc.stderr
    resumed = load_file(str(out / "rank0.safetensors"))
    for name, t in reference.items():
        assert torch.equal(resumed[name], t), name
    assert [r["loss"] for r in read_metrics(out / "metrics.jsonl")] == losses
