"""The index-build benchmark runs every variant over the same rows and batches (tiny backbone: mechanics only)."""

import json
import math

import pytest
import torch

from clara.config import LoraConfig, ModelConfig
from clara.eval.bench_index import bench, main

WORDS = "the bell of Ostrand rang over the harbour while the foundry cooled".split()


@pytest.fixture
def corpus(tmp_path):
    rows = [{"id": f"d{i}", "title": f"Town {i}", "text": " ".join(WORDS[: 2 + (5 * i) % len(WORDS)]) + "."}
            for i in range(7)]
    rows.append({"id": "long", "title": "Foundry", "text": " ".join(f"Bell {i} was cast in {1800 + i}." for i in range(8))})
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_bench_times_every_variant_over_the_same_rows(tiny_backbone, corpus):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8, lora=LoraConfig(r=4, alpha=8))
    r = bench(ClaraModel.from_config(cfg).eval(), corpus, docs=8, batch_size=3, reps=1, precision="bf16")
    assert set(r["docs_per_s"]) == {"build", "bare", "old", "build_fp32"}
    assert r["documents"] == 8 and r["rows"] > 8 and r["batches"] == math.ceil(r["rows"] / 3)  # "long" is split
    assert all(len(t) == 1 and t[0] > 0 for t in r["times"].values())
    for key in ("ratio_build_over_bare", "speedup_build_over_old", "ratio_bf16_over_fp32"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["precision"] == "bf16" and r["max_rel_diff"] < 1e-2  # the bank holds what the bare forward computed


def test_main_prints_the_figures_without_bf16_where_fp32_is_asked(tiny_backbone, corpus, capsys, tmp_path):
    out, threads = tmp_path / "bench.json", torch.get_num_threads()
    try:
        assert main(["--corpus", str(corpus), "--backbone", str(tiny_backbone), "--chunk-len", "32", "--cr", "8",
                     "--docs", "4", "--batch-size", "2", "--reps", "1", "--precision", "fp32", "--out", str(out),
                     "--threads", str(threads + 1)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = json.loads(capsys.readouterr().out)
    assert printed["threads"] == threads + 1 and printed["old_threads"] == threads  # the old path had no --threads
    assert printed["documents"] == 4 and printed["precision"] == "fp32" and printed["ratio_bf16_over_fp32"] is None
    assert set(printed["docs_per_s"]) == {"build", "bare", "old"} and printed["max_rel_diff"] < 1e-2
    assert json.loads(out.read_text())["times"]["build"][0] > 0
