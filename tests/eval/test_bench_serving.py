"""The serving benchmark's prefill breakdown on the tiny backbone: its phases add up and its prompts are
the ones the server and raw-text RAG send (timings meaningless)."""

import json

from clara.eval.bench_serving import PHASES, answer_phases, format_breakdown, main


def test_breakdown_times_every_phase_and_counts_the_prompts(tmp_path):
    out = tmp_path / "b.json"
    assert main(["--backbone", "tiny", "--parts", "breakdown", "--k", "3", "--reps", "2", "--passage-tokens", "32",
                 "--cr", "8", "--build-docs", "6", "--threads", "1", "--out", str(out)]) == 0
    b = json.loads(out.read_text())["breakdown"]
    for name in ("clara", "raw_text_rag"):
        med = b[name]["median_ms"]
        assert set(med) == set(PHASES) and all(v >= 0 for v in med.values())
        assert b[name]["ttft_without_retrieval_ms"] <= b[name]["ttft_ms"]
    # 3 memories of m = 32 / 8 = 4 slots against 3 passages of 32 tokens in the prompt
    assert b["raw_text_rag"]["prompt_positions"] - b["clara"]["prompt_positions"] >= 3 * (32 - 4)
    assert b["positions_ratio"] > 1 and "| prefill |" in format_breakdown(b)


def test_raw_text_rag_reads_the_retrieved_passages_as_text(tiny_backbone):
    """The raw-text prompt holds the k retrieved passages' text; CLaRa's holds k·m slots instead."""
    import numpy as np
    import torch

    from clara.config import BackboneKind, LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind=BackboneKind.TINY, chunk_len=32,
                                               compression_rate=8, lora=LoraConfig(r=4, alpha=8))).eval()
    texts = ["Briven founded the museum in 1820.", "Velmar Works makes bells.", "The river Selad is long."]
    with torch.no_grad():
        mem = model.compress(texts)  # (3, m, H)

    class Bank:
        def search(self, q, k):
            return np.zeros((1, k), np.float32), np.array([[2, 0]])

        def memory(self, rows):
            return mem[torch.as_tensor(rows)]

        def document(self, row):
            return {"text": texts[row]}

    _, raw_len = answer_phases(model, Bank(), "Who founded the museum?", 2, "direct", raw=True)
    _, mem_len = answer_phases(model, Bank(), "Who founded the museum?", 2, "direct", raw=False)
    assert raw_len == len(model.prompt_ids("Who founded the museum?", 0, texts[2] + "\n\n" + texts[0]))
    assert mem_len == len(model.prompt_ids("Who founded the museum?", 2))


def test_weights_part_times_the_three_settings_and_leaves_the_model_fp32(tiny_backbone):
    import torch
    from torch import nn

    from clara.config import BackboneKind, LoraConfig, ModelConfig, Precision
    from clara.eval.bench_serving import bench_bf16_weights
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind=BackboneKind.TINY, chunk_len=32,
                                               compression_rate=8, lora=LoraConfig(r=4, alpha=8))).eval()
    res = bench_bf16_weights(model, reps=1, positions=(1, 7))
    assert set(res["median_ms"]) == {f"{s}@{n}" for s in ("autocast_fp32_weights", "bf16_weights", "bf16_weights_bf16_factors", "fp32") for n in (1, 7)}
    assert res["autocast_fp32_weights_over_bf16_weights@7"] > 0 and res["bf16_weights_bf16_factors_over_bf16_weights@1"] > 0
    assert model.inference_precision is Precision.FP32
    assert all(m.weight.dtype == torch.float32 for m in model.lm.modules() if isinstance(m, nn.Linear))


def test_a_model_whose_backbone_moved_is_timed_with_model_backbone(tiny_backbone, tmp_path, monkeypatch):
    """--model records its backbone's path; elsewhere, --model-backbone gives it (the error names that flag, since
    this benchmark's own --backbone picks a stand-in)."""
    import pytest

    from clara.config import BackboneKind, LoraConfig, ModelConfig
    from clara.errors import CheckpointError
    from clara.model.clara_model import ClaraModel
    from clara.model.release import write_release

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind=BackboneKind.TINY, chunk_len=32,
                                               compression_rate=8, lora=LoraConfig(r=4, alpha=8)))
    model.save_adapters(tmp_path / "run" / "adapters")
    release = write_release(tmp_path / "run", tmp_path / "rel", backbone_path="bb/converted")
    monkeypatch.chdir(tmp_path)  # where bb/converted is not
    with pytest.raises(CheckpointError, match="backbone 'bb/converted' does not exist here; pass --model-backbone DIR"):
        main(["--parts", "weights", "--model", str(release), "--reps", "1", "--threads", "1"])
    out = tmp_path / "w.json"
    assert main(["--parts", "weights", "--model", str(release), "--model-backbone", str(tiny_backbone), "--reps", "1",
                 "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["weights"]["median_ms"]["fp32@1"] > 0
