"""`clara demo` end to end: fast with the tiny backbone, slow with SmolLM2."""

import json
import subprocess
import sys

import pytest


def _run_demo(out, *extra, timeout):
    cmd = [sys.executable, "-m", "clara.cli", "demo", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_demo_with_tiny_backbone(tmp_path):
    out = tmp_path / "demo"
    r = _run_demo(out, "--backbone", "tiny", "--entities", "40", "--limit", "3", "--reader-steps", "2",
                  "--scp-steps", "2", "--scp-docs", "6", "--scp-release", str(tmp_path / "none"),
                  "--joint-steps", "2", "--joint-eval-every", "1", timeout=300)
    assert r.returncode == 0, r.stderr
    report = (out / "report.md").read_text()
    # stage 1: synthesis, then a live SCP run scored with right and wrong memory (no release for tiny)
    stage1 = json.loads((out / "stage1.json").read_text())
    assert stage1["synth"]["kept"] == 6 and stage1["live"]["steps"] == 2
    assert set(stage1["live"]["settings"]) == {"memory", "wrong_memory", "raw_text", "closed_book"}
    assert "release_note" in stage1 and "not scored" in report and "live run (2 steps)" in report
    assert (out / "scp-live" / "adapters" / "clara_model.json").is_file()
    assert report.count("| open_book | 3 |") == 2 and report.count("| closed_book | 3 |") == 2 + 1  # base, reader, live SCP
    assert "After the reading LoRA (2 steps" in report
    reader = json.loads((out / "reading.json").read_text())["reader"]
    assert reader["backbone_hash"] != json.loads((out / "reading.json").read_text())["backbone_hash"]
    assert "random-init" in report
    # stage 2: joint training from the live SCP adapters, Recall@k beside BM25 and MiniLM on the same test questions
    stage2 = json.loads((out / "stage2.json").read_text())
    assert stage2["steps"] == 2 and stage2["init"] == str(out / "scp-live" / "adapters")
    assert set(stage2["recall"]) == {"query before", "query after", "bm25", "minilm"}
    assert stage2["recall"]["bm25"]["all"]["n"] == stage2["n"] > 0
    assert all(set(t["all"]) >= {"n", "R@1", "R@2", "R@5"} for t in stage2["recall"].values())
    assert "## Stage 2" in report and "| all | " in report
    lens = stage2["lens"]["by_type"]["all"]  # bridge-document words in the query's lens, before/after/raw question
    assert lens["n"] == sum(g["n"] for k, g in stage2["lens"]["by_type"].items() if k != "all") > 0
    assert set(lens) == {"n", "target_words", "before", "after", "after_wrong", "after_other_kind", "raw", "raw_wrong",
                         "memory", "after_specific", "after_wrong_specific", "memory_specific"} and lens["target_words"] > 0
    read = stage2["lens"]["read_by_type"]["all"]  # the same counts in the read view (--view read)
    assert set(read) == set(lens) and read["n"] == lens["n"] and read["target_words"] == lens["target_words"]
    assert "Logit lens of the two-hop test questions" in report and "| read | all |" in report
    assert (out / "joint" / "adapters" / "clara_model.json").is_file()
    for png in ("joint-curves.png", "retrieval.png", "stage1-em.png", "lens-two-hop.png"):
        assert (out / png).stat().st_size > 10_000 and f"({png})" in report
    assert report.strip() in r.stdout  # the printed report is the written one
    assert (out / "world" / "manifest.json").is_file()
    assert json.loads((out / "reading.json").read_text())["n"] == 3
    # a second run reuses the backbone (same hash) and rewrites the report
    first = json.loads((out / "reading.json").read_text())["backbone_hash"]
    assert _run_demo(out, "--backbone", "tiny", "--entities", "40", "--limit", "2", "--reader-steps", "0",
                     "--scp-steps", "0", timeout=300).returncode == 0
    again = json.loads((out / "reading.json").read_text())
    assert again["backbone_hash"] == first and again["n"] == 2


@pytest.mark.slow
def test_demo_with_smollm2(tmp_path):
    out = tmp_path / "demo"
    r = _run_demo(out, "--limit", "8", "--entities", "100", "--reader-steps", "16", timeout=3600)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "reading.json").read_text())
    assert res["n"] == 8
    info = json.loads((out / "backbones" / "smollm2" / "clara_backbone.json").read_text())
    assert info["params"] == 134_515_008
    # SmolLM2 reads: with the document it gets more answers into its reply than without
    ob, cb = res["settings"]["open_book"], res["settings"]["closed_book"]
    assert ob["raw_cover_em"] > cb["raw_cover_em"]
    # the reading LoRA makes it read: open-book EM rises, closed-book EM stays near zero
    rd = res["reader"]["settings"]
    assert rd["open_book"]["em"] >= ob["em"] + 0.25
    assert rd["closed_book"]["em"] <= 0.15


def test_live_run_of_a_further_trained_release_starts_fresh_at_this_cpus_precision(tmp_path):
    """The default release records the adapters it was trained on from, and bf16: the demo's live run must not
    look for those adapters, nor force bf16 on a CPU that lacks it."""
    import argparse
    from pathlib import Path

    from clara.config import load_config
    from clara.demo.stage1 import DEFAULT_RELEASE, live_config
    from clara.modes import Precision

    recorded = live_config(argparse.Namespace(scp_steps=1), tmp_path, "hf", tmp_path / "live", None)
    assert recorded.scp.init_adapters == ""  # the fallback recipe
    cfg = live_config(argparse.Namespace(scp_steps=3), tmp_path / "bb", "hf", tmp_path / "live", DEFAULT_RELEASE)
    recorded_from = load_config(DEFAULT_RELEASE / "train_config.yaml").scp.init_adapters
    assert recorded_from and not Path(recorded_from).exists()  # the case tested: adapters not shipped
    assert cfg.scp.init_adapters == "" and cfg.train.precision is Precision.AUTO
    assert cfg.train.max_steps == 3 and cfg.model.backbone == str(tmp_path / "bb")
