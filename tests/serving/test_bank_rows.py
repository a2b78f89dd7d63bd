"""What a corpus becomes in a bank: long documents split into titled rows, shortest-first batches
written back in corpus order, and the warning for a corpus cut for another chunk_len (issue 27 item 5)."""

import json
import logging

import numpy as np
import pytest
import torch

from clara.config import LoraConfig, ModelConfig
from clara.errors import DataError
from clara.serving.bank import MemDtype, MemoryBank, from_bits, to_bits
from clara.serving.bank_build import add_to_bank, build_bank
from clara.serving.protocols import HashingModel

SENTENCES = [f"Velmar Works cast bell number {i} for the town of Ostrand in the year {1800 + i}." for i in range(12)]
SENTENCES.append("Ok.")  # a last piece shorter than ingest keeps (MIN_CHUNK_TOKENS): a bank keeps it


@pytest.fixture(scope="module")
def tiny_model(tiny_backbone):
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    return ClaraModel.from_config(cfg).eval()


def write_docs(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def test_a_long_document_becomes_several_titled_rows(tmp_path, tiny_model):
    long = {"id": "bells", "title": "Velmar Works", "text": " ".join(SENTENCES)}
    short = {"id": "short", "title": "Ostrand", "text": "Ostrand is a town."}
    corpus = write_docs(tmp_path / "docs.jsonl", [long, short])
    assert tiny_model.token_counts([f"{long['title']}\n{long['text']}"])[0] > 3 * tiny_model.chunk_len
    counts: dict = {}
    info = build_bank(corpus, tiny_model, tmp_path / "bank", progress=False, batch_size=3, counts=counts)
    bank = MemoryBank.open(tmp_path / "bank")
    parts = len(bank.ids) - 1
    assert parts >= 4 and info.count == parts + 1
    assert counts == {"documents": 2, "rows": parts + 1, "split_documents": 1}
    assert bank.ids == [f"bells#{n}" for n in range(parts)] + ["short"]
    assert bank.titles == ["Velmar Works"] * parts + ["Ostrand"]
    texts = [f"{t}\n{x}" for t, x in zip(bank.titles, bank.texts)]
    assert max(tiny_model.token_counts(texts)) <= tiny_model.chunk_len  # nothing is cut at compression
    assert " ".join(bank.texts[:parts]).split() == long["text"].split()  # every word kept, in order
    assert bank.texts[parts - 1] == "Ok."
    meta = [json.loads(line) for line in (tmp_path / "bank" / "meta.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [m.get("source") for m in meta] == ["bells"] * parts + [None]
    with torch.no_grad():  # each row holds the memory of its own text
        alone = tiny_model.compress(texts)  # (rows, m, H)
    stored = bank.memory(np.arange(len(texts))[:, None])[:, 0].float()
    assert torch.allclose(stored, alone, atol=1e-2, rtol=1e-2)


def test_split_row_ids_may_not_collide_with_other_documents(tmp_path, tiny_model):
    docs = [{"id": "bells", "title": "Velmar Works", "text": " ".join(SENTENCES)},
            {"id": "bells#1", "title": "Other", "text": "Another document."}]
    with pytest.raises(DataError, match="'bells#1' is taken by another document"):
        build_bank(write_docs(tmp_path / "docs.jsonl", docs), tiny_model, tmp_path / "bank", progress=False)


def test_add_splits_long_documents_too(tmp_path, tiny_model):
    build_bank(write_docs(tmp_path / "a.jsonl", [{"id": "a", "title": "A", "text": "Short one."}]), tiny_model,
               tmp_path / "bank", progress=False)
    counts: dict = {}
    more = write_docs(tmp_path / "b.jsonl", [{"id": "bells", "title": "Velmar Works", "text": " ".join(SENTENCES)}])
    info = add_to_bank(tmp_path / "bank", more, tiny_model, progress=False, counts=counts)
    assert counts["split_documents"] == 1 and info.count == 1 + counts["rows"]
    assert MemoryBank.open(tmp_path / "bank").ids[:2] == ["a", "bells#0"]


class RecordingModel(HashingModel):
    """The hashing stand-in, remembering the texts of each compress call."""

    def __init__(self):
        super().__init__(num_mem=2, hidden_size=32)
        self.batches = []

    def compress(self, texts):
        self.batches.append(list(texts))
        return super().compress(texts)


@pytest.mark.parametrize("sort", [True, False])
def test_batches_go_shortest_first_and_rows_land_in_corpus_order(tmp_path, sort):
    rng = np.random.default_rng(0)
    docs = [{"id": f"d{i}", "title": "", "text": " ".join(f"w{i}x{j}" for j in range(int(n)))}
            for i, n in enumerate(rng.integers(1, 40, size=23))]
    corpus = write_docs(tmp_path / "docs.jsonl", docs)
    model = RecordingModel()
    build_bank(corpus, model, tmp_path / "bank", progress=False, batch_size=4, shard_docs=10, sort_by_length=sort)
    bank = MemoryBank.open(tmp_path / "bank")
    assert bank.ids == [d["id"] for d in docs]
    want = from_bits(to_bits(HashingModel(2, 32).compress([d["text"] for d in docs]), MemDtype.FP16), MemDtype.FP16)
    assert torch.equal(bank.memory(np.arange(len(docs))[:, None])[:, 0], want)
    by_shard = [[d["text"] for d in docs[i:i + 10]] for i in range(0, len(docs), 10)]
    if sort:  # within each shard, every batch is no longer than the next one's shortest
        flat = [len(t) for b in model.batches for t in b]
        sizes = [len(t) for shard in by_shard for t in sorted(shard, key=len)]
        assert flat == sizes
    else:
        assert [t for b in model.batches for t in b] == [t for shard in by_shard for t in shard]


def test_a_corpus_cut_for_another_chunk_len_is_warned_about_once(tmp_path, tiny_model, caplog):
    corpus = write_docs(tmp_path / "docs.jsonl", [{"id": "a#0", "title": "A", "text": "Short one."}])
    summary = tmp_path / "docs.jsonl.summary.json"
    summary.write_text(json.dumps({"chunk_len": 256, "chunks": 1}), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="clara.serving.bank_build"):
        build_bank(corpus, tiny_model, tmp_path / "bank", progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "chunk_len=256" in warnings[0] and "chunk_len=32" in warnings[0] and "--chunk-len 32" in warnings[0]
    caplog.clear()
    summary.write_text(json.dumps({"chunk_len": 32, "chunks": 1}), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="clara.serving.bank_build"):
        build_bank(corpus, tiny_model, tmp_path / "bank2", progress=False)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_cli_takes_threads_and_precision_and_counts_split_documents(tmp_path, tiny_model, capsys, monkeypatch):
    import argparse

    from clara.cli import index as index_cli

    adapters = tiny_model.save_adapters(tmp_path / "adapters")
    corpus = write_docs(tmp_path / "docs.jsonl", [{"id": "bells", "title": "Velmar Works", "text": " ".join(SENTENCES)},
                                                  {"id": "short", "title": "Ostrand", "text": "Ostrand is a town."}])
    threads = []
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    banks = {}
    for precision in ("fp32", "bf16"):
        parser = argparse.ArgumentParser()
        index_cli.register(parser.add_subparsers())
        args = parser.parse_args(["index", "build", "--corpus", str(corpus), "--out", str(tmp_path / precision),
                                  "--model", str(adapters), "--no-progress", "--threads", "3", "--precision", precision])
        assert args.func(args) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["documents"] == 2 and summary["split_documents"] == 1 and summary["rows"] == summary["count"] > 2
        bank = MemoryBank.open(tmp_path / precision)
        banks[precision] = bank.memory(np.arange(len(bank))[:, None])[:, 0].float()  # (rows, m, H)
    assert threads == [3, 3]
    assert not torch.equal(banks["fp32"], banks["bf16"])  # --precision reached the compressor's forwards
    assert torch.allclose(banks["fp32"], banks["bf16"], rtol=0.05, atol=0.05 * banks["fp32"].abs().max().item())
