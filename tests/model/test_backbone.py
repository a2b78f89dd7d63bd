"""Backbones: tiny build/load/generate, determinism, backbone_hash, SmolLM2 conversion (slow)."""

import json
import subprocess
import sys

import pytest
import torch

from clara.model.backbone import (
    BACKBONE_INFO,
    backbone_hash,
    build_tiny_backbone,
    convert_gguf_backbone,
    default_gguf_path,
    load_backbone,
)
from clara.config import BackboneKind
from clara.errors import ConfigError
from clara.fileio import sha256_file


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_backbone(tmp_path_factory.mktemp("bb") / "tiny", seed=0)


def test_tiny_loads_offline_with_auto_classes_and_generates(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    n = sum(p.numel() for p in model.parameters())
    assert 200_000 < n < 10_000_000
    assert len(tok) <= model.config.vocab_size
    for special in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id):
        assert special is not None
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    text = "Kalomira founded the library of Selventor in 1834."
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text  # byte-level round trip
    prompt = tok.apply_chat_template([{"role": "user", "content": "Where?"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n") and "Where?" in prompt
    enc = tok([prompt, "hi"], return_tensors="pt", padding=True, add_special_tokens=False)
    assert tok.padding_side == "left" and enc.attention_mask[1, 0] == 0  # left padded
    out = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[0] == 2 and enc.input_ids.shape[1] < out.shape[1] <= enc.input_ids.shape[1] + 4


def test_tiny_is_deterministic_per_seed(tiny_dir, tmp_path):
    same = build_tiny_backbone(tmp_path / "same", seed=0)
    other = build_tiny_backbone(tmp_path / "other", seed=1)
    assert sha256_file(same / "model.safetensors") == sha256_file(tiny_dir / "model.safetensors")
    assert sha256_file(same / "tokenizer.json") == sha256_file(tiny_dir / "tokenizer.json")
    assert sha256_file(other / "model.safetensors") != sha256_file(tiny_dir / "model.safetensors")
    assert backbone_hash(same) == backbone_hash(tiny_dir)
    assert backbone_hash(other) != backbone_hash(tiny_dir)


def test_tiny_does_not_disturb_callers_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_backbone(tmp_path / "t", hidden=32, layers=1, heads=2, vocab_size=400)
    assert torch.equal(torch.rand(3), expected)


def test_tiny_from_custom_corpus(tmp_path):
    texts = ["the cat sat on the mat"] * 50 + ["Zorblat lives in Quimby"] * 50
    d = build_tiny_backbone(tmp_path / "t", vocab_size=300, hidden=32, layers=1, heads=2, corpus_texts=texts)
    _, tok = load_backbone(d, BackboneKind.TINY)
    assert len(tok(" Zorblat", add_special_tokens=False).input_ids) < len(" Zorblat")  # merges learned


def test_backbone_hash_stable_and_sensitive(tiny_dir, tmp_path):
    import shutil

    h = backbone_hash(tiny_dir)
    assert h == backbone_hash(tiny_dir)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["transformers_version"] = "0.0.0"  # volatile fields don't matter
    (copy / "config.json").write_text(json.dumps(cfg))
    assert backbone_hash(copy) == h
    cfg["rms_norm_eps"] = 1e-3  # a real config change does
    (copy / "config.json").write_text(json.dumps(cfg))
    assert backbone_hash(copy) != h
    shutil.copy(tiny_dir / "config.json", copy / "config.json")
    assert backbone_hash(copy) == h
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one flipped bit in the weights
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert backbone_hash(copy) != h


def test_load_backbone_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="clara backbone tiny"):
        load_backbone(tmp_path / "nope", BackboneKind.TINY)
    with pytest.raises(ConfigError, match="gguf"):
        load_backbone(tmp_path, BackboneKind.GGUF)


def test_cli_tiny_and_hash(tmp_path):
    out = tmp_path / "cli-tiny"
    r = subprocess.run(
        [sys.executable, "-m", "clara.cli", "backbone", "tiny", "--out", str(out), "--hidden", "32", "--layers", "1",
         "--heads", "2", "--vocab-size", "400"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and (out / BACKBONE_INFO).is_file()
    r = subprocess.run([sys.executable, "-m", "clara.cli", "backbone", "hash", str(out)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == backbone_hash(out)


def test_convert_missing_gguf_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "clara.cli", "backbone", "convert", "--gguf", str(tmp_path / "x.gguf"),
         "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "x.gguf" in r.stderr


@pytest.mark.slow
def test_smollm2_converts_matches_gguf_and_caches(tmp_path):
    from transformers import AutoModelForCausalLM

    gguf = default_gguf_path()
    out = convert_gguf_backbone(out_dir=tmp_path / "smol")
    info = json.loads((out / BACKBONE_INFO).read_text())
    assert info["source_sha256"] == sha256_file(gguf)
    model, tok = load_backbone(out, BackboneKind.HF)
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (576, 30, 49152)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert not hasattr(cfg, "quantization_config") or cfg.quantization_config is None
    assert "<|im_start|>" in tok.chat_template  # the chat template survived the conversion
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, src(ids).logits, atol=1e-4)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer with only the answer."}],
        tokenize=False, add_generation_prompt=True,
    )
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out_ids = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out_ids[0, enc.input_ids.shape[1]:])
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    convert_gguf_backbone(out_dir=out)  # cached: nothing rewritten
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
