"""The hf teacher with the real SmolLM2-135M-Instruct on real Wikipedia passages (slow)."""

import json

import pytest

pytestmark = pytest.mark.slow


def test_hf_teacher_runs_the_verify_loop_on_wikipedia(tmp_path):
    from pathlib import Path

    from clara.model.backbone import convert_gguf_backbone
    from clara.data.corpus import ingest
    from clara.pretrain.synth import read_documents, synthesize
    from clara.pretrain.teacher_factory import make_teacher

    backbone = convert_gguf_backbone(out_dir=tmp_path / "smollm2")
    dump = Path(__file__).resolve().parents[1] / "fixtures" / "enwiki-shortened-sample.xml.bz2"
    passages = tmp_path / "wiki.jsonl"
    ingest(dump, passages, tokenizer=backbone, chunk_len=128, limit=3)
    docs = [d for d in read_documents(passages) if d.id.endswith("#0")][:2]
    teacher = make_teacher("hf", model=str(backbone), max_new_tokens=160)
    out = tmp_path / "synth.jsonl"
    s = synthesize(docs, teacher, out, threshold=0.5, max_rounds=2)
    assert s["kept"] + s["dropped"] == 2 and s["errors"] == 0
    print(json.dumps(s, indent=1))
    for line in out.read_text().splitlines() + (tmp_path / "synth.jsonl.dropped.jsonl").read_text().splitlines():
        print(line[:1500])
