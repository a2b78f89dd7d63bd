"""SCP objective and recipe on the tiny backbone: mechanics only (never quality, DESIGN §2)."""

import json

import pytest
import torch

from clara.config import ClaraConfig, LoraConfig, ModelConfig, ScpConfig, TrainConfig
from clara.pretrain.scp import (
    PARAPHRASE_INSTRUCTIONS, QA_INSTRUCTION, ScpExample, build_scp_model, load_examples, mean_pairwise_cosine,
    scp_loss, train_scp,
)


@pytest.fixture(scope="module")
def fresh_docs():
    """Six world documents with their synthesised QA, as pretrain record dicts."""
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teachers import make_teacher

    teacher = make_teacher("world")
    return [rec for d in fresh_world_documents(6, seed=7) for rec in result_records(synthesize_document(d, teacher), "world")]


def make_cfg(backbone, out, **train):
    t = dict(lr=3e-3, max_steps=4, batch_size=3, save_every=0, log_every=1, seed=0)
    t.update(train)
    return ClaraConfig(
        out_dir=str(out),
        model=ModelConfig(backbone=str(backbone), kind="tiny", chunk_len=32, compression_rate=8,
                          lora=LoraConfig(r=4, alpha=8)),
        train=TrainConfig(**t),
        scp=ScpConfig(max_target_tokens=48),
    )


def examples(recs):
    from clara.pretrain.scp import example_from_record
    from clara.records import PretrainRecord

    return [example_from_record(PretrainRecord.from_json(r, "test")) for r in recs]


def test_loss_is_finite_and_both_terms_contribute(tiny_backbone, tmp_path, fresh_docs):
    model = build_scp_model(make_cfg(tiny_backbone, tmp_path))
    batch = examples(fresh_docs[:4])
    ce_only, m0 = scp_loss(model, batch, mse_weight=0.0)
    full, m1 = scp_loss(model, batch, mse_weight=0.1)
    assert torch.isfinite(full) and torch.isfinite(ce_only)
    assert m1["mse"] > 0 and m1["ce"] > 0
    assert full.item() == pytest.approx(m1["ce"] + 0.1 * m1["mse"], rel=1e-5)
    assert abs(full.item() - ce_only.item()) > 1e-4
    # the MSE term sends its own gradient to the compressor
    grads = []
    for lam in (0.0, 0.1):
        model.zero_grad(set_to_none=True)
        scp_loss(model, batch, mse_weight=lam)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.adapters.parameters("compressor") if p.grad is not None]))
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_scp_trains_compressor_generator_and_memory_not_query_or_base(tiny_backbone, tmp_path, fresh_docs):
    data = tmp_path / "synth.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fresh_docs))
    cfg = make_cfg(tiny_backbone, tmp_path / "run")
    model = build_scp_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_scp(cfg, data, model=model)
    assert result.step == 4 and all(x is not None for x in result.losses)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    lora = lambda name: {n for n in before if f".{name}." in n and "lora_" in n}  # noqa: E731
    assert lora("compressor") and lora("compressor") <= changed
    assert {n for n in lora("generator") if "lora_B" in n} <= changed  # B starts at zero, so A's grad is 0 at step 1
    assert "mem_embed" in changed
    assert not (lora("query") & changed), "the query adapter must stay untouched"
    base = {n for n in before if "lora_" not in n and n != "mem_embed"}
    assert base and not (base & changed), sorted(base & changed)[:3]
    assert (tmp_path / "run/adapters/compressor/adapter_model.safetensors").is_file()
    # memory of different documents stays distinct
    docs = list(dict.fromkeys(r["doc"] for r in fresh_docs))
    with torch.no_grad():
        cos = mean_pairwise_cosine(model.compress(docs))
    assert cos < 0.99, cos
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all({"ce", "mse", "mem_cos"} <= r.keys() for r in rows if r.get("kind") == "train")


def test_reference_format_records_become_examples(tmp_path):
    path = tmp_path / "ref.jsonl"
    lines = [
        {"data_type": "qa", "question": ["Who founded Brell?", "When?"], "answers": ["Tarvel Osk", "1901"],
         "docs": ["Brell was founded by Tarvel Osk in 1901."]},
        {"data_type": "paraphrase", "question": [""], "answers": ["Tarvel Osk founded Brell in 1901."],
         "docs": ["Brell was founded by Tarvel Osk in 1901."]},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    qa, para = load_examples(path)
    assert qa == ScpExample("Brell was founded by Tarvel Osk in 1901.", QA_INSTRUCTION,
                            "Question: Who founded Brell?\nAnswer: Tarvel Osk\nQuestion: When?\nAnswer: 1901")
    assert para.target == "Tarvel Osk founded Brell in 1901." and para.instruction in PARAPHRASE_INSTRUCTIONS
    assert [e.instruction for e in load_examples(path, ("qa",))] == [QA_INSTRUCTION]


def test_fresh_stream_is_deterministic_and_never_repeats():
    from clara.pretrain.scp import FreshExamples

    a, b = FreshExamples(3, 40), FreshExamples(3, 40)
    assert [a[i] for i in (5, 0, 39)] == [b[i] for i in (5, 0, 39)]
    qa_docs = [a[i].doc for i in range(40) if a[i].instruction == QA_INSTRUCTION]
    assert len(qa_docs) == len(set(qa_docs)) >= 15
