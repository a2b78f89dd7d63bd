"""Release assets: only the trained adapters, in bfloat16, with their recipe; they load like any adapters."""

import json

import pytest
import torch

from clara.errors import CheckpointError
from clara.fileio import verify_manifest
from clara.model.release import write_release


def lora_weights(model, name):
    return {k: p.detach().clone() for k, p in model.adapters.peft.named_parameters() if f".{name}." in k}


def test_release_keeps_trained_adapters_in_bf16_and_loads_back(model, make_model, tmp_path):
    model.save_adapters(tmp_path / "run" / "adapters")
    (tmp_path / "run" / "config.yaml").write_text("train:\n  max_steps: 3\n")
    out = write_release(tmp_path / "run", tmp_path / "release", command="clara pretrain train X")
    verify_manifest(out)
    assert not (out / "query").exists() and not (out / "tokenizer").exists()
    assert (out / "train_config.yaml").read_text() == "train:\n  max_steps: 3\n"
    info = json.loads((out / "clara_model.json").read_text())
    assert info["adapters"] == ["compressor", "generator"] and info["release"]["dtype"] == "bfloat16"
    assert "clara pretrain train X" in (out / "README.md").read_text()
    size = sum(f.stat().st_size for f in (out / "generator").iterdir())
    full = sum(f.stat().st_size for f in (tmp_path / "run/adapters/generator").iterdir())
    assert size < 0.6 * full  # half the bytes of float32 (plus the small config)

    fresh = make_model()
    query_init = lora_weights(fresh, "query")
    fresh.load_adapters(out)
    for name in ("compressor", "generator"):
        for key, w in lora_weights(model, name).items():
            got = lora_weights(fresh, name)[key]
            assert torch.equal(got, w.to(torch.bfloat16).float()), key  # exactly the bf16-rounded weights
            assert not torch.equal(got, w) or w.abs().sum() == 0  # rounding really happened
    # not shipped: the query reasoner becomes a copy of the (bf16-rounded) compressor, as joint training starts
    query, compressor = lora_weights(fresh, "query"), lora_weights(fresh, "compressor")
    for key, w in query_init.items():
        assert torch.equal(query[key], compressor[key.replace(".query.", ".compressor.")])
        assert not torch.equal(query[key], w)


def test_release_refuses_unknown_adapters_and_dtypes(model, tmp_path):
    model.save_adapters(tmp_path / "adapters")
    with pytest.raises(CheckpointError, match="no adapter reader"):
        write_release(tmp_path / "adapters", tmp_path / "r1", keep=("reader",))
    with pytest.raises(CheckpointError, match="--dtype"):
        write_release(tmp_path / "adapters", tmp_path / "r2", dtype="int8")
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_release_takes_the_run_config_from_elsewhere(model, tmp_path):
    """An exported checkpoint has no config.yaml beside it: --train-config names the run's."""
    model.save_adapters(tmp_path / "exported")
    (tmp_path / "run.yaml").write_text("train:\n  max_steps: 800\n")
    out = write_release(tmp_path / "exported", tmp_path / "rel", train_config=tmp_path / "run.yaml")
    assert (out / "train_config.yaml").read_text() == "train:\n  max_steps: 800\n"
    assert oct((out / "generator" / "adapter_model.safetensors").stat().st_mode & 0o777) == "0o644"
    with pytest.raises(CheckpointError, match="no such file"):
        write_release(tmp_path / "exported", tmp_path / "rel2", train_config=tmp_path / "missing.yaml")


def test_release_names_the_backbone_where_users_convert_it(model, tmp_path, monkeypatch):
    """--backbone-path: loaders find the backbone at the README's place with no --backbone; the hash still rules."""
    import shutil

    from clara.model.loading import load_trained_model

    model.save_adapters(tmp_path / "run" / "adapters")
    out = write_release(tmp_path / "run", tmp_path / "rel", backbone_path="bb/converted")
    assert json.loads((out / "clara_model.json").read_text())["backbone"] == "bb/converted"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="backbone 'bb/converted' does not exist here"):
        load_trained_model(out)
    shutil.copytree(model.backbone_path, tmp_path / "bb" / "converted")
    assert load_trained_model(out).backbone_hash == model.backbone_hash
