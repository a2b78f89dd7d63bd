"""Bank search: exact search on CPU is the streaming kernel over stored vectors (fp32, fp16 or
bf16) with inverse norms computed once at open; old banks open unchanged."""

import json

import numpy as np
import pytest
import torch

from clara.errors import CheckpointError, ConfigError
from clara.serving import bank as bank_module
from clara.serving.bank import IndexParams, MemoryBank, verify_bank
from clara.serving.bank_build import add_to_bank, build_bank
from clara.serving.protocols import HashingModel


def towns(path, ids):
    path.write_text("".join(json.dumps({"id": f"t{i}", "title": f"Town {i}", "text": f"Town {i} trades salt{i} and "
                                        f"wool{i % 7} since {1200 + i}."}) + "\n" for i in ids), encoding="utf-8")
    return path


@pytest.fixture
def model():
    return HashingModel(4, 128)


def build(tmp_path, model, name, ids=range(150), **index):
    return build_bank(towns(tmp_path / f"{name}.jsonl", ids), model, tmp_path / name, progress=False,
                      index=IndexParams(**index))


@pytest.mark.parametrize("vectors", ["fp16", "bf16"])
def test_half_precision_vectors_halve_the_file_and_find_the_same_documents(tmp_path, model, vectors):
    build(tmp_path, model, "fp32", kind="kernel")
    build(tmp_path, model, vectors, kind="kernel", vectors=vectors)
    wide, narrow = MemoryBank.open(tmp_path / "fp32"), MemoryBank.open(tmp_path / vectors)
    assert np.load(tmp_path / vectors / "retrieval.npy").dtype == np.uint16
    assert narrow._vectors.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[vectors]
    sizes = [(tmp_path / n / "retrieval.npy").stat().st_size for n in ("fp32", vectors)]
    assert sizes[1] < 0.51 * sizes[0]
    q = model.encode_query([f"salt{i} {1200 + i}" for i in (4, 77, 149)])
    _, wi = wide.search(q, 2)
    ns, ni = narrow.search(q, 2)
    # t31 hashes like t77 (the same cosine): exact search breaks the tie toward the smaller row
    assert [[narrow.ids[r] for r in row] for row in ni] == [["t4", "t0"], ["t31", "t77"], ["t149", "t0"]]
    assert np.array_equal(wi, ni)
    # the scores are exact cosines of the stored (rounded) vectors
    stored = narrow._vectors.float()[torch.from_numpy(ni[:, 0])]  # (3, D)
    qv = torch.from_numpy(bank_module.retrieval_vectors(q, narrow.info.retrieval))
    want = (qv * stored).sum(1) / stored.norm(dim=1)
    np.testing.assert_allclose(ns[:, 0], want.numpy(), atol=1e-6)
    assert json.loads((tmp_path / vectors / "manifest.json").read_text())["index"]["vectors"] == vectors
    assert verify_bank(tmp_path / vectors).index.vectors.value == vectors


def test_add_keeps_the_vector_type_and_equals_a_full_build(tmp_path, model):
    build(tmp_path, model, "grown", ids=range(100), kind="kernel", vectors="bf16")
    add_to_bank(tmp_path / "grown", towns(tmp_path / "more.jsonl", range(100, 150)), model, progress=False)
    build(tmp_path, model, "whole", kind="kernel", vectors="bf16")
    for name in ("retrieval.npy", "memory.bin"):
        assert (tmp_path / "grown" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_flat_bank_is_searched_in_place_and_agrees_with_faiss(tmp_path, model):
    build(tmp_path, model, "flat")
    bank = MemoryBank.open(tmp_path / "flat")
    # the rows of the faiss index itself, not a copy
    assert bank._vectors.data_ptr() == bank_module._flat_vectors(bank._index).data_ptr()
    q = bank_module.retrieval_vectors(model.encode_query([f"wool{i % 7} salt{i}" for i in range(0, 150, 9)]),
                                      bank.info.retrieval)
    ours_s, ours_i = bank.search_vectors(q, 5)
    faiss_s, faiss_i = bank._index.search(q, 5)
    np.testing.assert_allclose(ours_s, faiss_s, atol=1e-5)  # the same scores (the hashing model ties a lot)
    stored = bank._vectors.numpy()
    np.testing.assert_allclose(np.einsum("bd,bkd->bk", q, stored[ours_i]), ours_s, atol=1e-5)  # each row's own
    for scores, rows in zip(ours_s, ours_i):
        for a in range(4):
            assert scores[a] > scores[a + 1] or rows[a] < rows[a + 1]  # ties toward the smaller row


def test_search_reuses_the_inverse_norms_computed_at_open(tmp_path, model, monkeypatch):
    build(tmp_path, model, "kern", kind="kernel")
    bank = MemoryBank.open(tmp_path / "kern")
    torch.testing.assert_close(bank._inv_norms, 1 / bank._vectors.norm(dim=1))
    from clara.kernels import dispatch

    seen = []
    real = dispatch.cosine_topk

    def spy(q, vectors, k, **kw):
        seen.append(kw.get("inv_norms"))
        return real(q, vectors, k, **kw)

    monkeypatch.setattr(dispatch, "cosine_topk", spy)
    bank.search(model.encode_query(["salt3 1203"]), 2)
    assert len(seen) == 1 and seen[0] is bank._inv_norms


def test_opening_a_bank_runs_the_search_probes_before_the_first_query(tmp_path, model, monkeypatch):
    # the timing probe of a one-query search runs when the bank opens, so no request pays for it
    from clara.kernels import cpu_topk

    build(tmp_path, model, "kern", kind="kernel", vectors="bf16")
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0)  # a bank this small is otherwise scored in one product
    probed = []
    monkeypatch.setattr(cpu_topk, "one_query_way", lambda dtype, threads: probed.append(dtype) or "mv")
    monkeypatch.setattr(cpu_topk, "_FUSED", {})  # no fused product compiled
    batches = []
    monkeypatch.setattr(cpu_topk, "several_query_way", lambda dtype, threads, bucket: batches.append(bucket) or "rows")
    bank = MemoryBank.open(tmp_path / "kern")
    assert probed == [cpu_topk.plan_search(bank._vectors, 1, bank._inv_norms).product_dtype]
    assert batches == [8, 64]  # and several queries' orientation, at both buckets
    bank.search(model.encode_query(["salt3 1203"]), 2)
    assert len(probed) == 2  # the search asks again (a cache hit in the real probe)


def test_old_banks_open_and_a_bad_vector_file_is_refused(tmp_path, model):
    build(tmp_path, model, "kern", kind="kernel")
    manifest = json.loads((tmp_path / "kern" / "manifest.json").read_text())
    assert "vectors" not in manifest["index"]  # fp32: the manifest banks before --vectors wrote
    # a float32 file where the manifest says bf16: refused, naming the file and the fix
    manifest["index"]["vectors"] = "bf16"
    (tmp_path / "kern" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"retrieval\.npy: .*float32.*bf16.*rebuild the bank"):
        MemoryBank.open(tmp_path / "kern", verify="size")
    with pytest.raises(ConfigError, match="--vectors bf16 needs --faiss kernel"):
        IndexParams("flat", vectors="bf16")
