"""The reading LoRA recipe: samples, masking, LoRA-only training, merge + save, cache, and (slow) EM gain."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from clara.model.backbone import BACKBONE_INFO, backbone_hash, build_tiny_backbone, load_backbone
from clara.errors import ConfigError
from clara.model.reader_backbone import (
    IGNORE_INDEX,
    ReaderConfig,
    encode_sample,
    fresh_qa_samples,
    fresh_reading_questions,
    reader_is_cached,
    train_reader,
    world_entity_names,
)

TINY_RECIPE = ReaderConfig(steps=3, batch_size=2, r=4, alpha=8, save_every=2)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_backbone(tmp_path_factory.mktemp("bb") / "tiny", seed=0)


def test_samples_are_fresh_and_respect_excluded_names():
    from clara.world import generate_world

    world = generate_world(seed=0, entities=40)
    names = {d["title"] for d in world.documents}
    samples = fresh_qa_samples(60, seed=7919, exclude_names=names)
    assert len({s["id"] for s in samples}) == 60  # one question per distinct document
    assert not names & {s["title"] for s in samples}
    for s in samples:
        assert s["answer"] and s["answer"] in s["document"]  # answerable by reading
    # without the exclusion the same stream is deterministic
    assert [s["question"] for s in fresh_qa_samples(5, 7919)] == [s["question"] for s in fresh_qa_samples(5, 7919)]


def test_encode_masks_prompt_and_learns_answer_plus_eos(tiny_dir):
    _, tok = load_backbone(tiny_dir)
    sample = {"document": "Kalo Ven is a painter born in Mirrow.", "question": "Where was Kalo Ven born?",
              "answer": "Mirrow"}
    ids, labels = encode_sample(tok, sample, "plain")
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert len(ids) == len(labels)
    assert learned[-1] == tok.eos_token_id
    assert tok.decode(learned[:-1]).strip() == "Mirrow"
    assert labels[: len(ids) - len(learned)] == [IGNORE_INDEX] * (len(ids) - len(learned))  # prompt fully masked
    assert "Where was Kalo Ven born?" in tok.decode(ids)


def test_recipe_rejects_bad_fields():
    with pytest.raises(ConfigError, match="style"):
        ReaderConfig(style="chatty")
    with pytest.raises(ConfigError, match="steps"):
        ReaderConfig(steps=0)


def test_train_reader_trains_only_lora_merges_saves_and_caches(tiny_dir, tmp_path, caplog, monkeypatch):
    import clara.training.loop as loop
    from transformers import AutoModelForCausalLM

    seen: dict = {}
    real_init = loop.Trainer.__init__

    def spy_init(self, model, *args, **kwargs):
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["total"] = sum(1 for _ in model.parameters())
        real_init(self, model, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", spy_init)
    out = tmp_path / "reader"
    result = train_reader(tiny_dir, out, TINY_RECIPE, exclude_names={"Kalo"})
    assert result == out
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    assert len(seen["trainable"]) < seen["total"]

    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())  # merged, not a PEFT wrapper
    base, new = load_file(tiny_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert base.keys() == new.keys()
    changed = [k for k in base if not torch.equal(base[k], new[k])]
    assert changed and all(("proj" in k) for k in changed)  # only LoRA-targeted linears moved
    assert backbone_hash(out) != backbone_hash(tiny_dir)

    info = json.loads((out / BACKBONE_INFO).read_text())["reader"]
    assert info["steps"] == 3 and info["source_hash"] == backbone_hash(tiny_dir)
    assert info["recipe"]["r"] == 4 and info["excluded_names"] == 1
    assert (out / "reader_metrics.jsonl").is_file()
    assert not (tmp_path / ".reader.train").exists()  # checkpoints cleared once the backbone is written
    _, tok = load_backbone(out)
    assert tok.chat_template

    # cached: same source and recipe -> nothing happens; another recipe -> not cached
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    caplog.set_level("INFO", logger="clara.model.reader_backbone")
    train_reader(tiny_dir, out, TINY_RECIPE, exclude_names={"Kalo"})
    assert "skipping" in caplog.text
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    from clara.model.reader_backbone import names_digest

    assert reader_is_cached(out, backbone_hash(tiny_dir), TINY_RECIPE, names_digest({"Kalo"}))
    assert not reader_is_cached(out, backbone_hash(tiny_dir), ReaderConfig(steps=4, batch_size=2, r=4, alpha=8),
                                names_digest({"Kalo"}))
    assert not reader_is_cached(out, backbone_hash(tiny_dir), TINY_RECIPE, names_digest(set()))


def test_interrupted_run_resumes_from_checkpoint(tiny_dir, tmp_path, monkeypatch):
    import clara.training.loop as loop

    out, work = tmp_path / "reader", tmp_path / "work"
    real_after = loop.Trainer._after_step

    def crash_after_step_2(self, record):
        real_after(self, record)
        if self.counters.step == 2:
            raise KeyboardInterrupt  # as if killed right after the step-2 checkpoint

    monkeypatch.setattr(loop.Trainer, "_after_step", crash_after_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_reader(tiny_dir, out, TINY_RECIPE, work_dir=work)
    assert not out.exists() and (work / "checkpoints").is_dir()
    monkeypatch.setattr(loop.Trainer, "_after_step", real_after)
    train_reader(tiny_dir, out, TINY_RECIPE, work_dir=work)
    info = json.loads((out / BACKBONE_INFO).read_text())["reader"]
    assert info["resumed_from"] == 2 and info["steps"] == 3


def test_cli_reader_subcommand(tiny_dir, tmp_path):
    out = tmp_path / "cli-reader"
    cmd = [sys.executable, "-m", "clara.cli", "backbone", "reader", "--backbone", str(tiny_dir), "--out", str(out),
           "--steps", "2", "--batch-size", "2", "--r", "4", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 steps" in proc.stdout and (out / "config.json").is_file()
    bad = subprocess.run(cmd[:-6] + ["--steps", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2  # a usage error, named on one line by argparse
    assert bad.stderr.strip().splitlines()[-1].endswith("error: argument --steps: 0 is below 1")


@pytest.mark.slow
def test_smollm2_reader_raises_open_book_em(tmp_path):
    """~40 steps of the reading LoRA lift open-book EM on held-out world questions above the base."""
    from clara.model.backbone import convert_gguf_backbone
    from clara.eval.reading import evaluate_reading
    from clara.world import generate_world

    torch.set_num_threads(2)
    base_dir = convert_gguf_backbone(out_dir=tmp_path / "smollm2")
    world = generate_world(seed=0, entities=300)
    questions = [q for q in world.questions["test"] if q["type"] == "single_hop"][:20]
    documents = world.document_index()
    names = world_entity_names_from(world)
    reader_dir = train_reader(base_dir, tmp_path / "reader", ReaderConfig(steps=40), exclude_names=names)

    def open_book_em(path):
        model, tok = load_backbone(path)
        res = evaluate_reading(model, tok, questions, documents, settings=("open_book",), style="plain")
        return res["settings"]["open_book"]["em"]

    base_em, reader_em = open_book_em(base_dir), open_book_em(reader_dir)
    assert reader_em > base_em + 0.2, (base_em, reader_em)
    # and it reads rather than recalls: fresh entities it never saw
    fresh_q, fresh_docs = fresh_reading_questions(20, seed=4242, exclude_names=names)
    model, tok = load_backbone(reader_dir)
    res = evaluate_reading(model, tok, fresh_q, fresh_docs, settings=("open_book", "closed_book"), style="plain")
    assert res["settings"]["open_book"]["em"] >= 0.5
    assert res["settings"]["closed_book"]["em"] <= 0.1


def world_entity_names_from(world) -> set[str]:
    return {d["title"] for d in world.documents}


def test_world_entity_names_reads_titles(tmp_path):
    from clara.world import generate_world, write_world

    world = generate_world(seed=3, entities=20)
    write_world(world, tmp_path / "w")
    assert world_entity_names(tmp_path / "w") == {d["title"] for d in world.documents}
