"""Fused streaming cosine top-k (Triton) against the torch reference and faiss."""

import pytest
import torch

from clara.kernels.dispatch import cosine_topk
from clara.kernels.reference import cosine_topk_reference
from clara.kernels.triton_topk import topk_triton

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _data(b, n, d, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g).to(device=device, dtype=dtype)
    bank = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    return q, bank


def _all_scores(q, bank):
    qf, bf = q.float(), bank.float()
    return (qf / qf.norm(dim=1, keepdim=True)) @ (bf / bf.norm(dim=1, keepdim=True)).T  # (B, N)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,d,k", [(37, 50, 1), (37, 50, 5), (13, 50, 13), (203, 70, 3)])
def test_matches_reference(interpret, kc, dtype, n, d, k):
    q, bank = _data(3, n, d, dtype)
    values, indices = cosine_topk(q, bank, k, backend="triton")
    ref_v, ref_i = cosine_topk_reference(q, bank, k)
    assert values.dtype == torch.float32 and indices.dtype == torch.int64
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))


def test_streams_several_tiles_per_program_with_precomputed_norms(interpret, kc):
    # 300 rows = 3 tiles of 128; one program must merge its running top-k across them.
    q, bank = _data(2, 300, 40, torch.float32, seed=1)
    inv = 1.0 / bank.norm(dim=1)
    for programs in (1, 2):
        values, indices = topk_triton(q, bank, 4, inv_norms=inv, programs=programs)
        ref_v, ref_i = cosine_topk_reference(q, bank, 4, inv_norms=inv)
        kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))


def test_ties_resolved_to_distinct_rows(interpret, kc):
    # Duplicated rows tie exactly: any of them is right, but never the same row twice.
    q, bank = _data(2, 20, 24, torch.float32, seed=2)
    bank = torch.cat([bank, bank[:5], bank[:5] * 3.0])  # same direction, same cosine
    values, indices = cosine_topk(q, bank, 6, backend="triton")
    ref_v, ref_i = cosine_topk_reference(q, bank, 6)
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))


def test_faiss_and_reference_agree_on_cpu(kc):
    q, bank = _data(4, 1000, 64, torch.float32, seed=3)
    faiss_v, faiss_i = cosine_topk(q, bank, 10, backend="faiss")
    ref_v, ref_i = cosine_topk(q, bank, 10, backend="torch")
    kc.assert_topk_matches(faiss_v, faiss_i, ref_v, ref_i, _all_scores(q, bank), atol=1e-5)
    auto_v, auto_i = cosine_topk(q, bank, 10)  # CPU auto: the streaming search
    kc.assert_topk_matches(auto_v, auto_i, ref_v, ref_i, _all_scores(q, bank))


def test_reference_chunking_is_exact(kc):
    q, bank = _data(3, 500, 16, torch.bfloat16, seed=4)
    v1, i1 = cosine_topk_reference(q, bank, 7, chunk_rows=64)
    v2, i2 = cosine_topk_reference(q, bank, 7, chunk_rows=10**6)
    kc.assert_topk_matches(v1, i1, v2, i2, _all_scores(q, bank))


def test_large_k_falls_back_to_chunked_path(interpret, kc):
    q, bank = _data(1, 300, 8, torch.float32, seed=5)
    values, indices = cosine_topk(q, bank, 300, backend="triton")  # k = N > fused limit
    ref_v, ref_i = cosine_topk_reference(q, bank, 300)
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d,k", [(16, 100_003, 576, 10), (3, 4097, 77, 1), (5, 200, 130, 200), (40, 5000, 64, 33)])
def test_compiled_matches_reference(cuda, kc, dtype, b, n, d, k):
    q, bank = _data(b, n, d, dtype, device=cuda)
    values, indices = cosine_topk(q, bank, k)  # auto on CUDA: Triton
    ref_v, ref_i = cosine_topk_reference(q, bank, k)
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))
