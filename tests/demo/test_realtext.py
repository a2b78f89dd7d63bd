"""The demo's real-text round: mechanics on the tiny backbone (answers are noise), and the skip note."""

import argparse

from clara.config import LoraConfig, ModelConfig


def test_realtext_round_on_tiny_adapters(tmp_path, tiny_backbone):
    from clara.demo.realtext import realtext_report, run_realtext
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))  # fmt: skip
    ClaraModel.from_config(cfg).save_adapters(tmp_path / "release")
    args = argparse.Namespace(realtext_release=str(tmp_path / "release"), realtext_questions=3)
    timings = {}
    res = run_realtext(args, tiny_backbone, tmp_path / "demo", timings)
    # the tiny model's chunk_len (32) splits most of the 22 passages into several bank rows
    assert res["compression"]["n"] == 3 and res["bank"]["n"] == 3 and res["bank"]["bank_size"] > 22
    assert set(res["compression"]["settings"]) == {"memory", "wrong_memory", "raw_text", "closed_book"}
    assert "real text" in timings
    report = "\n".join(realtext_report(res))
    assert "Who composed An American in Paris?" in report and "What nationality is Alain Connes?" in report and str(tmp_path / "release") in report
    assert "raw-text RAG" in report


def test_realtext_round_skips_a_release_of_another_backbone(tmp_path, tiny_backbone):
    from clara.demo.realtext import realtext_report, run_realtext

    args = argparse.Namespace(realtext_release=str(tmp_path / "absent"), realtext_questions=3)
    res = run_realtext(args, tiny_backbone, tmp_path / "demo", {})
    assert "no release adapters" in res["skipped"]
    assert any(line.startswith("Skipped: no release adapters") for line in realtext_report(res))
