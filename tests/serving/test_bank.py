"""Memory bank: build, add, search, verify, crash safety and resume (DESIGN §9)."""

import argparse
import json

import numpy as np
import pytest
import torch

from clara.serving import bank_build
from clara.serving.bank import IndexParams, MemDtype, MemoryBank, from_bits, to_bits, verify_bank
from clara.serving.bank_build import add_to_bank, build_bank
from clara.errors import CheckpointError, ConfigError, DataError
from clara.serving.protocols import HashingModel


def write_corpus(path, start, stop):
    rows = [{"id": f"d{i}", "title": f"Town {i}", "text": f"Town number {i} was founded by person{i} in {1000 + i}."}
            for i in range(start, stop)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path / "docs.jsonl", 0, 40)


@pytest.fixture
def model():
    return HashingModel(num_mem=4, hidden_size=64)


def build(corpus, model, out, **kw):
    kw.setdefault("progress", False)
    return build_bank(corpus, model, out, **kw)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_build_stores_memory_and_search_finds_the_document(tmp_path, corpus, model, dtype):
    info = build(corpus, model, tmp_path / "bank", dtype=dtype, batch_size=7)
    assert info.count == 40 and info.num_mem == 4 and info.hidden_size == 64
    bank = MemoryBank.open(tmp_path / "bank")
    texts = [f"Town {i}\nTown number {i} was founded by person{i} in {1000 + i}." for i in (3, 17)]
    expected = from_bits(to_bits(model.compress(texts), MemDtype(dtype)), MemDtype(dtype))  # (2, m, H)
    assert torch.equal(bank.memory(np.array([[3], [17]]))[:, 0], expected)
    scores, idx = bank.search(model.encode_query(["who is person17 of 1017", "person3 1003"]), k=3)
    assert [bank.ids[r[0]] for r in idx] == ["d17", "d3"]
    assert scores.shape == (2, 3) and scores[0, 0] > scores[0, 1]
    assert (tmp_path / "bank" / "memory.bin").stat().st_size == 40 * 4 * 64 * 2
    assert not (tmp_path / "bank.work").exists()  # work dir removed on success


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "kernel"])
def test_other_indexes_agree_with_flat_on_the_best_match(tmp_path, kind):
    model = HashingModel(4, 256)  # wide enough that 300 documents' words rarely collide
    corpus = write_corpus(tmp_path / "docs.jsonl", 0, 300)
    build(corpus, model, tmp_path / "flat")
    build(corpus, model, tmp_path / kind, index=IndexParams(kind, nlist=4, nprobe=4, pq_m=16 if kind == "ivfpq" else 0))
    flat, other = MemoryBank.open(tmp_path / "flat"), MemoryBank.open(tmp_path / kind)
    q = model.encode_query([f"person{i} {1000 + i}" for i in (5, 123, 250)])
    _, fi = flat.search(q, 1)
    _, oi = other.search(q, 1)
    assert [flat.ids[r[0]] for r in fi] == ["d5", "d123", "d250"]
    assert np.array_equal(fi, oi)


def test_ivf_with_too_few_documents_is_a_clear_error(tmp_path, corpus, model):
    with pytest.raises(ConfigError, match="needs at least 64 documents"):
        build(corpus, model, tmp_path / "bank", index=IndexParams("ivf", nlist=64))


def test_fp16_overflow_asks_for_bf16(tmp_path, corpus):
    class Loud(HashingModel):
        def compress(self, texts):
            return super().compress(texts) * 1e6

    with pytest.raises(CheckpointError, match="bf16"):
        build(corpus, Loud(4, 64), tmp_path / "bank")
    assert build(corpus, Loud(4, 64), tmp_path / "bank", dtype="bf16").count == 40


def test_add_appends_without_recompressing_and_equals_a_full_build(tmp_path, corpus, model):
    build(corpus, model, tmp_path / "bank", index=IndexParams("flat"))
    more = write_corpus(tmp_path / "more.jsonl", 40, 55)
    before = model.calls["compress"]
    info = add_to_bank(tmp_path / "bank", more, model, batch_size=5, progress=False)
    assert info.count == 55
    assert model.calls["compress"] - before == 3  # 15 new documents / batch 5: old ones untouched
    full = write_corpus(tmp_path / "all.jsonl", 0, 55)
    build(full, model, tmp_path / "full")
    for name in ("memory.bin", "meta.jsonl"):
        assert (tmp_path / "bank" / name).read_bytes() == (tmp_path / "full" / name).read_bytes()
    bank = MemoryBank.open(tmp_path / "bank")
    _, idx = bank.search(model.encode_query(["person50 1050"]), 1)
    assert bank.ids[idx[0, 0]] == "d50"
    assert verify_bank(tmp_path / "bank").count == 55


def test_add_refuses_clashing_ids_and_another_compressor(tmp_path, corpus, model):
    build(corpus, model, tmp_path / "bank")
    with pytest.raises(DataError, match="'d3' is already in bank"):
        add_to_bank(tmp_path / "bank", write_corpus(tmp_path / "dup.jsonl", 3, 5), model, progress=False)
    with pytest.raises(CheckpointError, match="built by compressor"):
        add_to_bank(tmp_path / "bank", write_corpus(tmp_path / "m.jsonl", 90, 95), HashingModel(4, 64, seed=1),
                    progress=False)


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) - 7]))
    else:
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["memory.bin", "retrieval.faiss", "meta.jsonl"])
@pytest.mark.parametrize("how", ["truncate", "flip"])
def test_verify_and_open_name_a_corrupt_file(tmp_path, corpus, model, name, how):
    build(corpus, model, tmp_path / "bank")
    _corrupt(tmp_path / "bank" / name, how)
    with pytest.raises(CheckpointError, match=name):
        verify_bank(tmp_path / "bank")
    with pytest.raises(CheckpointError, match=name):
        MemoryBank.open(tmp_path / "bank")  # sha256 on load is the default
    if how == "truncate":  # the fast path still catches a wrong size
        with pytest.raises(CheckpointError, match=name):
            MemoryBank.open(tmp_path / "bank", verify="size")


def test_crash_during_add_leaves_the_old_bank_intact(tmp_path, corpus, model, monkeypatch):
    build(corpus, model, tmp_path / "bank")
    old = {p.name: p.read_bytes() for p in (tmp_path / "bank").iterdir()}

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(bank_build, "write_manifest", crash)
    with pytest.raises(OSError, match="disk full"):
        add_to_bank(tmp_path / "bank", write_corpus(tmp_path / "more.jsonl", 40, 50), model, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "bank").iterdir()} == old
    assert verify_bank(tmp_path / "bank").count == 40
    # temp dirs cleaned up (the writer lock file stays: removing a flock file would race a waiting writer)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bank") and p.name != ".bank.lock"]
    monkeypatch.undo()
    calls = model.calls["compress"]
    assert add_to_bank(tmp_path / "bank", tmp_path / "more.jsonl", model, progress=False).count == 50
    assert model.calls["compress"] == calls  # the shards survived the crash: nothing recompressed


def test_build_resumes_after_a_crash(tmp_path, corpus, model):
    class Crashing(HashingModel):
        def compress(self, texts):
            if self.calls["compress"] == 5:
                raise RuntimeError("killed")
            return super().compress(texts)

    with pytest.raises(RuntimeError, match="killed"):
        build(corpus, Crashing(4, 64), tmp_path / "bank", batch_size=4, shard_docs=8)
    assert not (tmp_path / "bank").exists()
    assert len(list((tmp_path / "bank.work").glob("shard-*.npy"))) == 2  # 2 shards of 8 (4 batches) done
    build(corpus, model, tmp_path / "bank", batch_size=4, shard_docs=8)
    assert model.calls["compress"] == (40 - 16) // 4  # only the unfinished documents
    build(corpus, HashingModel(4, 64), tmp_path / "fresh", batch_size=4, shard_docs=8)
    assert (tmp_path / "bank" / "memory.bin").read_bytes() == (tmp_path / "fresh" / "memory.bin").read_bytes()


def test_stale_work_of_another_job_is_discarded(tmp_path, corpus, model):
    work = tmp_path / "bank.work"
    work.mkdir()
    (work / "job.json").write_text('{"op": "other"}')
    np.save(work / "shard-000000.npy", np.zeros((8, 4, 64), np.uint16))
    build(corpus, model, tmp_path / "bank", shard_docs=8)
    assert model.calls["compress"] > 0
    assert from_bits(np.fromfile(tmp_path / "bank" / "memory.bin", np.uint16)[:256], MemDtype.FP16).abs().sum() > 0


def run_cli(argv):
    from clara.cli import index as index_cli

    parser = argparse.ArgumentParser()
    index_cli.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_build_add_verify(tmp_path, corpus, capsys):
    bank = tmp_path / "bank"
    assert run_cli(["index", "build", "--corpus", str(corpus), "--out", str(bank), "--model", "hashing:m=4,h=32",
                    "--no-progress", "--dtype", "bf16", "--retrieval", "pooled"]) == 0
    more = write_corpus(tmp_path / "more.jsonl", 40, 42)
    assert run_cli(["index", "add", str(bank), "--corpus", str(more), "--model", "hashing:m=4,h=32", "--no-progress"]) == 0
    assert run_cli(["index", "verify", str(bank)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1].removeprefix("ok "))
    assert summary["count"] == 42 and summary["dtype"] == "bf16" and summary["retrieval"] == "pooled"
    _corrupt(bank / "memory.bin", "flip")
    with pytest.raises(CheckpointError, match="memory.bin"):
        run_cli(["index", "verify", str(bank)])
