"""Fixtures for stage-2 tests: one tiny backbone and one small world per session."""

import pytest

from clara.config import ClaraConfig, from_dict


def joint_dict(backbone, world, out_dir, cache_dir, **train) -> dict:
    """A tiny stage-2 config (m = 32 / 8 = 4 memory vectors, N = 8 candidates, k = 3) as a dict."""
    return {
        "out_dir": str(out_dir),
        "model": {"backbone": str(backbone), "kind": "tiny", "chunk_len": 32, "compression_rate": 8,
                  "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "train": {"lr": 1e-3, "max_steps": 2, "batch_size": 2, "save_every": 0, "log_every": 1, **train},
        "joint": {"world": str(world), "candidates": 8, "top_k": 3, "eval_limit": 6},
    }


@pytest.fixture
def joint_cfg(tiny_backbone, world_dir, tmp_path):
    def make(**train) -> ClaraConfig:
        return from_dict(ClaraConfig, joint_dict(tiny_backbone, world_dir, tmp_path / "run", tmp_path / "cache", **train))

    return make


