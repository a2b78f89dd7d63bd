"""Candidate memory is compressed once, reused across runs, and invalidated when the compressor changes."""

import dataclasses

import numpy as np
import pytest
import torch

from clara.model.memory_cache import MemoryCache, document_key
from clara.joint.train import build_joint_model, run_joint
from clara.world.splits import load_split
from clara.model.clara_model import ClaraModel


@pytest.fixture
def counted_compress(monkeypatch):
    """Count the documents ClaraModel.compress is asked to compress."""
    calls = {"docs": 0}
    real = ClaraModel.compress

    def compress(self, texts, *a, **kw):
        calls["docs"] += len(texts)
        return real(self, texts, *a, **kw)

    monkeypatch.setattr(ClaraModel, "compress", compress)
    return calls


def test_cache_matches_compress_is_reused_and_invalidated(joint_cfg, tmp_path, perturb, counted_compress):
    cfg = joint_cfg()
    model = build_joint_model(cfg)
    docs = [d for r in load_split(cfg, "dev", train=False) for d in r.candidates]
    distinct = len({document_key(d) for d in docs})
    cache = MemoryCache.for_model(model, tmp_path / "c")
    assert cache.fill(model, docs) == distinct and counted_compress["docs"] == distinct
    with torch.no_grad():
        direct = model.compress([docs[0].as_text()])[0].numpy()  # (m, H)
    np.testing.assert_allclose(cache.lookup([document_key(docs[0])])[0], direct, rtol=1e-5, atol=1e-5)

    before = counted_compress["docs"]
    again = MemoryCache.for_model(model, tmp_path / "c")  # a new process would do exactly this
    assert len(again) == distinct and again.fill(model, docs) == 0
    assert counted_compress["docs"] == before

    perturb(model, seed=3)  # a different compressor: different hash, nothing reusable
    changed = MemoryCache.for_model(model, tmp_path / "c")
    assert changed.key != cache.key == again.key and len(changed) == 0
    assert changed.fill(model, docs) == distinct
    assert not np.allclose(changed.lookup([document_key(docs[0])]), cache.lookup([document_key(docs[0])]))


def test_second_joint_run_does_not_recompress(joint_cfg, counted_compress):
    first = run_joint(joint_cfg())
    assert counted_compress["docs"] > 0
    assert set(first["after"]) >= {"R@1/all", "R@5/all"}
    counted_compress["docs"] = 0
    cfg = joint_cfg()
    second_cfg = dataclasses.replace(cfg, out_dir=cfg.out_dir + "-2")
    second = run_joint(second_cfg)
    assert counted_compress["docs"] == 0, "the second run recompressed candidates"
    assert second["compressor_hash"] == first["compressor_hash"]
    assert build_joint_model(cfg).compressor_hash() == first["compressor_hash"]
