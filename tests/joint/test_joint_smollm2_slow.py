"""Slow: on SmolLM2, joint training from the generator's loss alone must raise Recall@1 on
held-out questions (DESIGN §5, §11).

Recipe: configs/joint-smollm2.yaml from the release SCP adapters (assets/scp-smollm2-cr16) on the
reader backbone, top-1 retrieval (joint.top_k=1: the generator reads only what the query reasoner
ranks first, so the loss speaks directly to Recall@1), 150 steps (JOINT_SLOW_STEPS), Recall@k on the
96 test questions — questions never trained on — before and after. No relevance label is used.
About 9 minutes on 2 cores. Measured with the 1,800-step release: R@1 all 0.589 -> 0.635, description
0.308 -> 0.615, single-hop 0.773 -> 0.864 (the issue's 0.9 target is not reached), hidden two-hop
0.500 -> 0.400, linked two-hop 0.433 -> 0.300.
"""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASE = ROOT / "assets" / "scp-smollm2-cr16"


@pytest.mark.slow
def test_joint_training_raises_recall_at_1_on_held_out_questions(tmp_path, smollm2_reader, world_0):
    from clara.config import load_config
    from clara.joint.train import run_joint

    steps = int(os.environ.get("JOINT_SLOW_STEPS", "150"))
    cfg = load_config(ROOT / "configs" / "joint-smollm2.yaml", [
        f"model.backbone={smollm2_reader}", f"joint.world={world_0}", f"joint.init_adapters={RELEASE}",
        f"joint.cache_dir={tmp_path / 'cache'}", f"out_dir={tmp_path / 'run'}", f"train.max_steps={steps}",
        "joint.top_k=1", "joint.eval_every=0", "train.save_every=0",
    ])  # fmt: skip
    summary = run_joint(cfg)
    before, after = summary["before"], summary["after"]
    shown = ", ".join(f"{k} {before[k]:.3f}->{after[k]:.3f}" for k in before if k.startswith("R@1/"))
    print(shown)
    assert summary["dev_questions"] == 96
    assert after["R@1/all"] >= before["R@1/all"] + 0.03, shown
    assert after["R@1/description"] >= before["R@1/description"] + 0.10, shown  # the type BM25-like cues leave to learn
    assert after["R@1/single_hop"] >= before["R@1/single_hop"] + 0.05, shown
