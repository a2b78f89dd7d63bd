"""Slow: on SmolLM2, joint training from the generator's loss alone must raise Recall@1 on
held-out questions (DESIGN §5, §11).

Recipe: configs/joint-smollm2.yaml as shipped — the stage-2 start adapters
(assets/scp-smollm2-cr16-rows) on the reader backbone, top-5, the generator asked as stage 1's rows
trained it (joint.prompt=scp) — 150 steps (JOINT_SLOW_STEPS), Recall@k on the 96 test questions —
questions never trained on — before and after. No relevance label is used. About 20 minutes on
2 cores. Measured (1 thread, 24 min): R@1 all 0.604 -> 0.714, single-hop 0.795 -> 0.977 (the issue's
target is 0.9; BM25 0.955), description 0.462 -> 0.615, linked two-hop 0.367 -> 0.400.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
START = ROOT / "assets" / "scp-smollm2-cr16-rows"


@pytest.mark.slow
def test_joint_training_raises_recall_at_1_on_held_out_questions(tmp_path, smollm2_reader, world_0):
    from clara.config import load_config
    from clara.joint.train import run_joint

    steps = int(os.environ.get("JOINT_SLOW_STEPS", "150"))
    cfg = load_config(ROOT / "configs" / "joint-smollm2.yaml", [
        f"model.backbone={smollm2_reader}", f"joint.world={world_0}", f"joint.init_adapters={START}",
        f"joint.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}", f"train.max_steps={steps}",
        "joint.eval_every=0", "train.save_every=0",
    ])  # fmt: skip
    summary = run_joint(cfg)
    before, after = summary["before"], summary["after"]
    shown = ", ".join(f"{k} {before[k]:.3f}->{after[k]:.3f}" for k in before if k.startswith("R@1/"))
    print(shown)
    assert summary["dev_questions"] == 96
    assert after["R@1/all"] >= before["R@1/all"] + 0.05, shown
    assert after["R@1/single_hop"] >= max(0.9, before["R@1/single_hop"] + 0.1), shown
