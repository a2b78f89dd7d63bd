"""The year-digit probe: it finds digits that are linearly in the features, not ones that are not, and
runs end to end on the tiny backbone (figures meaningless)."""

import json

import torch

from clara.eval.memory_probe import main, probe_digits, year_documents


def test_year_documents_state_their_year():
    texts, years = year_documents(12, 5)
    assert len(texts) == len(years) == 12
    assert all(len(y) == 4 and y.isdigit() and y in t for t, y in zip(texts, years))


def test_probe_reads_digits_that_are_in_the_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    years = [f"{1000 + int(v)}" for v in torch.randint(0, 1000, (300,), generator=g)]
    onehot = torch.zeros(300, 40)
    for i, y in enumerate(years):
        for pos, c in enumerate(y):
            onehot[i, pos * 10 + int(c)] = 1.0
    there = probe_digits(onehot + 0.05 * torch.randn(300, 40, generator=g), years, weight_decays=(1e-4,))
    assert all(p["probe"] == 1.0 for p in there["positions"]) and there["year_all_digits"] == 1.0
    noise = probe_digits(torch.randn(300, 40, generator=g), years, weight_decays=(1e-4,))
    assert noise["positions"][0]["probe"] == noise["positions"][0]["majority"] == 1.0  # every year starts with 1
    assert all(p["probe"] < 0.35 for p in noise["positions"][1:])  # chance is 0.1
    assert (there["train"], there["validation"], there["test"]) == (180, 60, 60)


def test_runs_on_the_tiny_backbone(tiny_backbone, tmp_path):
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=256, compression_rate=16,
                      lora=LoraConfig(r=4, alpha=8), memory_norm="center")
    adapters = ClaraModel.from_config(cfg).save_adapters(tmp_path / "adapters")
    out = tmp_path / "p.json"
    assert main(["--model", str(adapters), "--docs", "20", "--batch-size", "8", "--layers", "1,2", "--out", str(out)]) == 0
    stats = json.loads(out.read_text())
    assert stats["docs"] == 20 and len(stats["memory"]["positions"]) == 4 == len(stats["text_mean"]["positions"])
    assert len(stats["layer_1"]["positions"]) == len(stats["layer_2"]["positions"]) == 4
    assert 0.0 <= stats["memory"]["year_all_digits"] <= 1.0


def test_layer_states_are_the_decoder_outputs_at_the_memory_positions(tiny_backbone):
    """The last layer's caught states, after the final norm, are the memory compress returns."""
    from clara.config import LoraConfig, ModelConfig
    from clara.eval.memory_probe import memory_features
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=256,
                                               compression_rate=16, lora=LoraConfig(r=4, alpha=8)))
    texts, years = year_documents(3, 5)
    depth = len(model.lm.get_decoder().layers)
    chars = [t.index(y) + 3 for t, y in zip(texts, years)]
    feats = memory_features(model, texts, 2, [1, depth], chars)
    assert feats["layer_1"].shape == feats[f"layer_{depth}"].shape == (3, model.num_mem, model.hidden_size)
    with torch.no_grad():
        want = model.compress(texts).float()
        got = model.lm.get_decoder().norm(feats[f"layer_{depth}"].to(want.dtype)).float()
    assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(feats["layer_1"], feats[f"layer_{depth}"])
    # the token features are the states at the year's last digit, whatever the padding of its batch
    from clara.eval.memory_probe import token_at

    assert feats["token_last"].shape == feats["segment_last"].shape == (3, model.hidden_size)
    assert not torch.allclose(feats["token_last"], feats["segment_last"])
    with torch.no_grad():
        for i, (t, c) in enumerate(zip(texts, chars)):
            single = memory_features(model, [t], 1, [], [c])
            assert torch.allclose(single["token_last"][0], feats["token_last"][i], atol=1e-4)
            assert torch.allclose(single["segment_last"][0], feats["segment_last"][i], atol=1e-4)
            assert t[c] == model.tokenizer.decode(model._ids(t)[token_at(model, t, c)[0]]).strip()[-1]


def test_token_states_are_the_compressors_under_base_values_and_the_bare_backbones_on_request(tiny_backbone):
    """With memory_select_detach=base, compress runs the bare backbone after the compressor; the probe's token
    states must still be the compressor's (they were the bare backbone's before), and adapter=None gives those."""
    from clara.config import LoraConfig, ModelConfig
    from clara.eval.memory_probe import memory_features
    from clara.eval.oracle_slot import text_states
    from clara.model.clara_model import ClaraModel

    model = ClaraModel.from_config(ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=256,
                                               compression_rate=16, lora=LoraConfig(r=4, alpha=8), memory_norm="center",
                                               memory_select=2, memory_select_detach="base"))
    with torch.no_grad():  # B starts at zero: give the compressor states of its own
        for n, p in model.adapters.peft.named_parameters():
            if ".compressor." in n and "lora_B" in n:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(n)))
    texts, years = year_documents(3, 5)
    chars = [t.index(y) + 3 for t, y in zip(texts, years)]
    feats = {a: memory_features(model, texts, 2, [1], chars, adapter=a) for a in ("compressor", None)}
    states = {a: text_states(model, texts, chars, 2, a) for a in ("compressor", None)}
    selector, model.selector = model.selector, None  # one forward per compress: the reference
    try:
        want = {a: memory_features(model, texts, 2, [1], chars, adapter=a) for a in ("compressor", None)}
    finally:
        model.selector = selector
    rows = torch.arange(3)
    for a in ("compressor", None):
        for key in ("token_last", "token_1", "text_mean"):
            torch.testing.assert_close(feats[a][key], want[a][key])
        s, _, col = states[a]
        torch.testing.assert_close(s[rows, col], want[a]["token_last"])
    assert not torch.allclose(want["compressor"]["token_last"], want[None]["token_last"], atol=1e-3)
