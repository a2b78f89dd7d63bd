"""Adapters round-trip exactly, are standard PEFT directories, and refuse a different backbone."""

import json

import pytest
import torch

from clara.errors import CheckpointError

DOCS = ["Kalo was born in Venra and studied physics.", "The museum of Mira is 300 years old."]
QUESTIONS = ["Where was Kalo born?", "How old is the museum?"]


def outputs(model):
    with torch.no_grad():
        mem = model.compress(DOCS)
        q = model.encode_query(QUESTIONS)
        loss = model.generator_loss(QUESTIONS, mem[:, None], ["Venra", "300 years"], reduction="none")
    text = model.generate(QUESTIONS, mem[:, None], max_new_tokens=6)
    return mem, q, loss, text


def test_saved_and_reloaded_adapters_give_identical_outputs(model, make_model, tmp_path):
    with torch.no_grad():
        model.mem_embed.add_(0.1)  # memory-token embeddings are saved too
    before = outputs(model)
    model.save_adapters(tmp_path / "adapters")
    fresh = make_model()
    assert not torch.equal(outputs(fresh)[0], before[0])  # untrained adapters differ
    fresh.load_adapters(tmp_path / "adapters")
    after = outputs(fresh)
    for a, b in zip(before[:3], after[:3]):
        assert torch.equal(a, b)
    assert before[3] == after[3]


def test_each_adapter_is_a_standard_peft_directory(model, make_model, model_cfg, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model.save_adapters(tmp_path / "adapters")
    info = json.loads((tmp_path / "adapters" / "clara_model.json").read_text())
    assert info["backbone_hash"] == model.backbone_hash and info["num_mem"] == model.num_mem
    assert (info["backbone"], info["backbone_kind"]) == (model_cfg.backbone, "tiny")  # enough to rebuild the model
    for name in ("compressor", "query", "generator"):
        sub = tmp_path / "adapters" / name
        assert (sub / "adapter_config.json").is_file() and (sub / "adapter_model.safetensors").is_file()
    # plain PEFT loads the generator onto the (resized) backbone and reproduces our forward
    base = AutoModelForCausalLM.from_pretrained(make_model().lm.config._name_or_path)
    base.resize_token_embeddings(info["vocab_size"], mean_resizing=False)
    peft = PeftModel.from_pretrained(base, str(tmp_path / "adapters" / "generator"))
    ids = model.tokenizer(QUESTIONS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad(), model.using("generator"):
        ours = model.lm(input_ids=ids).logits
    base_vocab = model.tokens.mem_ids[0]  # added rows differ (random init there): compare the real vocabulary
    torch.testing.assert_close(peft(input_ids=ids).logits[..., :base_vocab], ours[..., :base_vocab])


def test_adapters_from_another_backbone_are_refused(model, make_model, other_backbone, tmp_path):
    model.save_adapters(tmp_path / "adapters")
    other = make_model(other_backbone)
    assert other.backbone_hash != model.backbone_hash
    with pytest.raises(CheckpointError, match="trained on backbone .* set model.backbone"):
        other.load_adapters(tmp_path / "adapters")


def test_a_command_names_its_backbone_flag(model, other_backbone, tmp_path):
    """`clara index build` and the other loaders take --backbone, not the config key model.backbone."""
    from clara.model.loading import load_trained_model

    model.save_adapters(tmp_path / "adapters")
    with pytest.raises(CheckpointError, match=r"set --backbone DIR to the backbone the adapters were trained on$"):
        load_trained_model(tmp_path / "adapters", other_backbone)


def test_adapters_from_another_backbone_load_when_asked(model, make_model, other_backbone, tmp_path, caplog):
    """scp.init_other_backbone: train adapters further on another backbone of the same shape (a warning)."""
    with torch.no_grad():
        model.mem_embed.add_(0.1)
    model.save_adapters(tmp_path / "adapters")
    other = make_model(other_backbone)
    with caplog.at_level("WARNING"):
        other.load_adapters(tmp_path / "adapters", other_backbone=True)
    assert "loading them to train further on this backbone" in caplog.text
    assert torch.equal(other.mem_embed, model.mem_embed)
    theirs = other.adapters.state_dict("compressor")
    for name, value in model.adapters.state_dict("compressor").items():
        assert torch.equal(theirs[name], value)


def _as_reader_build(src, dst, steps):
    """A copy of backbone ``src`` that says it is a reader backbone made with ``steps`` steps."""
    import shutil

    shutil.copytree(src, dst)
    info_file = dst / "clara_backbone.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["reader"] = {"source_hash": "base", "recipe": {"steps": steps, "seed": 0}, "exclude_names_sha256": "x",
                      "steps": steps, "final_loss": float(len(str(dst)))}  # volatile fields differ per build
    info_file.write_text(json.dumps(info))
    return dst


def test_adapters_load_onto_another_build_of_the_same_reader_recipe(make_model, tiny_backbone, other_backbone,
                                                                     perturb, tmp_path, caplog):  # fmt: skip
    # two builds of one recipe differ in their float rounding (another CPU thread count), here in every weight
    a = make_model(_as_reader_build(tiny_backbone, tmp_path / "a", steps=16))
    b = make_model(_as_reader_build(other_backbone, tmp_path / "b", steps=16))
    c = make_model(_as_reader_build(other_backbone, tmp_path / "c", steps=17))
    assert a.backbone_hash != b.backbone_hash and a.backbone_recipe == b.backbone_recipe != c.backbone_recipe
    perturb(a, seed=5)
    a.save_adapters(tmp_path / "adapters")
    with caplog.at_level("WARNING", logger="clara.model.clara_model"):
        b.load_adapters(tmp_path / "adapters")
    assert "another build of the same recipe" in caplog.text
    assert all(torch.equal(p, q) for p, q in zip(a.adapters.parameters("query"), b.adapters.parameters("query")))
    with pytest.raises(CheckpointError, match="trained on backbone"):
        c.load_adapters(tmp_path / "adapters")


def test_corrupt_or_missing_adapters_are_refused(model, make_model, tmp_path):
    fresh = make_model()
    with pytest.raises(CheckpointError, match="no such adapter directory"):
        fresh.load_adapters(tmp_path / "nowhere")
    model.save_adapters(tmp_path / "adapters")
    weights = tmp_path / "adapters" / "query" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match="adapter_model.safetensors"):
        fresh.load_adapters(tmp_path / "adapters")


def test_mismatched_memory_count_is_refused(model, model_cfg, tmp_path):
    import dataclasses

    from clara.model.clara_model import ClaraModel

    model.save_adapters(tmp_path / "adapters")
    other = ClaraModel.from_config(dataclasses.replace(model_cfg, compression_rate=4))  # m = 8
    with pytest.raises(CheckpointError, match="num_mem.*scp.init_other_cr"):
        other.load_adapters(tmp_path / "adapters")


def test_resampled_slots_keep_the_ends_and_interpolate_between():
    from clara.model.storage import resample_slots

    saved = torch.tensor([[0.0, 10.0], [2.0, 20.0], [4.0, 40.0]])  # (3 slots, H 2)
    torch.testing.assert_close(resample_slots(saved, 5), torch.tensor(
        [[0.0, 10.0], [1.0, 15.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]]))  # saved slots at 0, 2, 4
    torch.testing.assert_close(resample_slots(saved, 2), torch.tensor([[0.0, 10.0], [4.0, 40.0]]))
    torch.testing.assert_close(resample_slots(saved, 1), torch.tensor([[2.0, 70.0 / 3]]))  # one slot: the mean
    assert resample_slots(saved, 3) is saved


@pytest.mark.parametrize("rate", [4, 16])  # m = 8 (more slots than saved) and m = 2 (fewer)
def test_adapters_of_another_rate_load_when_asked_with_lora_kept_and_slots_resampled(model, model_cfg, tmp_path, rate):
    import dataclasses

    from clara.model.clara_model import ClaraModel
    from clara.model.storage import resample_slots

    with torch.no_grad():
        model.mem_embed.add_(torch.randn_like(model.mem_embed))
    model.save_adapters(tmp_path / "adapters")
    other = ClaraModel.from_config(dataclasses.replace(model_cfg, compression_rate=rate))
    other.load_adapters(tmp_path / "adapters", other_cr=True)
    assert other.num_mem == 32 // rate
    torch.testing.assert_close(other.mem_embed.detach(), resample_slots(model.mem_embed.detach(), other.num_mem),
                               rtol=0, atol=0)
    for name in ("compressor", "query", "generator"):
        for a, b in zip(model.adapters.parameters(name), other.adapters.parameters(name), strict=True):
            torch.testing.assert_close(b.detach(), a.detach(), rtol=0, atol=0)
    assert other.compress(DOCS).shape == (2, other.num_mem, other.hidden_size)  # it runs at its own rate


def test_the_generator_prompt_is_recorded_and_carried_to_the_next_stage(model, make_model, tmp_path, caplog):
    """Stage 2 records how it asked the generator; a stage that loads and saves again (RL) keeps it; an
    evaluation asks that way unless told otherwise, and warns when told another way."""
    from clara.model.prompts import resolve_prompt

    assert model.generator_prompt is None and resolve_prompt(None, model) == "direct"  # bare backbone
    model.save_adapters(tmp_path / "joint", prompt="scp")
    assert json.loads((tmp_path / "joint" / "clara_model.json").read_text())["generator_prompt"] == "scp"
    rl = make_model()
    rl.load_adapters(tmp_path / "joint")
    rl.save_adapters(tmp_path / "rl")  # RL trains the generator in its own template; stage 2's form stays
    evaluated = make_model()
    evaluated.load_adapters(tmp_path / "rl")
    assert evaluated.generator_prompt == "scp" and resolve_prompt(None, evaluated) == "scp"
    with caplog.at_level("WARNING", logger="clara.model.prompts"):
        assert resolve_prompt("direct", evaluated) == "direct"
    assert "trained to be asked in the scp form" in caplog.text


def test_adapters_of_a_lower_rank_load_into_a_higher_one_as_the_same_function(model, model_cfg, tmp_path):
    """Issue 28's lever (d) trains the release's rank-16 adapters further at rank 64: the grown adapters
    compute what the saved ones did (r 4, alpha 8 -> r 8, alpha 4: the scaling changes 2 -> 0.5, so
    B must be rescaled), and the new directions still train (their A is live, their B zero)."""
    import dataclasses

    from clara.config import LoraConfig
    from clara.model.clara_model import ClaraModel

    model.save_adapters(tmp_path / "adapters")
    before = outputs(model)
    cfg = dataclasses.replace(model_cfg, lora=LoraConfig(r=8, alpha=4, dropout=0.0))
    with pytest.raises(CheckpointError, match="r=4.*r=8.*a higher model.lora.r than saved loads when a stage starts from them"):
        ClaraModel.from_config(cfg).load_adapters(tmp_path / "adapters")
    grown = ClaraModel.from_config(cfg)
    grown.load_adapters(tmp_path / "adapters", grow_rank=True)
    after = outputs(grown)
    for a, b in zip(before[:3], after[:3]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert before[3] == after[3]
    lora_a = [p for n, p in grown.adapters.peft.named_parameters() if ".compressor." in n and "lora_A" in n][0]
    lora_b = [p for n, p in grown.adapters.peft.named_parameters() if ".compressor." in n and "lora_B" in n][0]
    assert lora_a.shape[0] == 8 and lora_b.shape[1] == 8
    assert torch.count_nonzero(lora_b[:, 4:]) == 0 and torch.count_nonzero(lora_a[4:]) > 0
    assert torch.count_nonzero(lora_b[:, :4]) > 0  # the perturbed saved B, not a fresh zero one
    with pytest.raises(CheckpointError, match="r=8.*r=4"):  # a higher saved rank cannot shrink losslessly
        grown.save_adapters(tmp_path / "r8")
        model.load_adapters(tmp_path / "r8", grow_rank=True)
