"""The streaming CPU bank search (kernels/cpu_topk.py): exact top-k, ties toward the smaller row."""

import numpy as np
import pytest
import torch

from clara.kernels import cpu_topk
from clara.kernels.cpu_topk import native_product_dtypes, plan_search, topk_cpu
from clara.kernels.dispatch import cosine_topk, inverse_norms
from clara.kernels.reference import cosine_topk_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(params=["streaming", "small bank"])
def path(request, monkeypatch):
    """Run a test through the candidate passes (any bank) and the one-product path of small banks."""
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0 if request.param == "streaming" else 10**9)
    return request.param


def _brute_force(q, bank, k):
    """Rows ordered by (float64 cosine desc, row asc): the definition the search must meet."""
    qd, bd = q.double(), bank.double()
    cos = (qd / qd.norm(dim=1, keepdim=True).clamp_min(1e-8)) @ (bd / bd.norm(dim=1, keepdim=True).clamp_min(1e-8)).T
    rows = np.arange(bank.shape[0])
    return torch.tensor(np.array([np.lexsort((rows, -c))[:k] for c in cos.numpy()])), cos


def _all_scores(q, bank):
    qf, bf = q.float(), bank.float()
    return (qf / qf.norm(dim=1, keepdim=True)) @ (bf / bf.norm(dim=1, keepdim=True)).T  # (B, N)


def _data(b, n, d, dtype, seed, unit=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g)
    bank = torch.randn(n, d, generator=g)
    if unit:
        bank = bank / bank.norm(dim=1, keepdim=True)
    return q.to(dtype), bank.to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unit", [False, True])
@pytest.mark.parametrize("b,n,d,k,chunk", [(3, 1001, 50, 5, 160), (17, 4099, 70, 1, 512), (2, 300, 8, 300, None),
                                           (9, 2500, 33, 12, 1024), (1, 3001, 40, 6, 512)])  # one query
def test_matches_reference_on_irregular_shapes(kc, path, dtype, unit, b, n, d, k, chunk):
    q, bank = _data(b, n, d, dtype, seed=n + k, unit=unit)
    inv = inverse_norms(bank)
    for given in (inv, None):
        values, indices = topk_cpu(q, bank, k, inv_norms=given, chunk_rows=chunk)
        ref_v, ref_i = cosine_topk_reference(q, bank, k)
        assert values.dtype == torch.float32 and indices.dtype == torch.int64
        kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("way", ["mv", "mm", "split"])
def test_one_query_is_exact_through_each_product(kc, monkeypatch, dtype, way):
    # one query scores a chunk by mv, mv split over threads, or a one-row mm, whichever this CPU times fastest;
    # each must be exact, the short last chunk (3001 = 5 x 512 + 441) included
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0)
    monkeypatch.setattr(cpu_topk, "one_query_way", lambda product, threads: way)
    monkeypatch.setattr(cpu_topk, "_FUSED", {})  # no fused product compiled
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # three ranges: unequal parts
    calls = []
    real_mv = torch.mv
    monkeypatch.setattr(torch, "mv", lambda *a, **kw: calls.append(a[0].shape[0]) or real_mv(*a, **kw))
    for unit in (False, True):
        q, bank = _data(1, 3001, 40, dtype, seed=11, unit=unit)
        values, indices = topk_cpu(q, bank, 6, inv_norms=inverse_norms(bank), chunk_rows=512)
        ref_v, ref_i = cosine_topk_reference(q, bank, 6)
        kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))
    assert bool(calls) == (way != "mm")
    if way == "split":
        assert {170, 171} <= set(calls) and 147 in calls  # 512 = 170 + 171 + 171; the last chunk 441 = 3 x 147


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("way", ["queries", "rows"])
def test_several_queries_are_exact_through_each_orientation(kc, monkeypatch, dtype, way):
    # several queries multiply a chunk as (B, D) x (D, C) or as (C, D) x (D, B) then transposed, whichever this CPU
    # times faster; both must be exact, the short last chunk (3001 = 5 x 512 + 441) included
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0)
    monkeypatch.setattr(cpu_topk, "several_query_way", lambda product, threads, bucket: way)
    for unit in (False, True):
        q, bank = _data(5, 3001, 40, dtype, seed=17, unit=unit)
        inv = inverse_norms(bank)
        assert plan_search(bank, 5, inv, 512).by_rows == (way == "rows")
        for given in (inv, None):
            values, indices = topk_cpu(q, bank, 6, inv_norms=given, chunk_rows=512)
            kc.assert_topk_matches(values, indices, *cosine_topk_reference(q, bank, 6), _all_scores(q, bank))
    # the rows' orientation takes chunks of at most ROWS_WAY_CHUNK rows; the queries' take the scores' budget
    big = torch.zeros(300_000, 4)
    want = cpu_topk.ROWS_WAY_CHUNK if way == "rows" else cpu_topk.SCORE_BYTES // (4 * 64)
    assert plan_search(big, 64).chunk_rows == want


def test_several_queries_are_timed_once_per_dtype_and_bucket():
    assert cpu_topk.several_query_way(torch.float32, 2, 8) in ("queries", "rows")
    hits = cpu_topk.several_query_way.cache_info().hits
    plan_search(torch.zeros(9000, 512), 3)  # 3 queries: the bucket of 8
    assert cpu_topk.several_query_way.cache_info().hits == hits + 1


def test_the_one_query_product_is_timed_once_per_dtype_and_thread_count():
    assert cpu_topk.one_query_way(torch.float32, 2) in ("mv", "mm", "split")
    assert cpu_topk.one_query_way(torch.float32, 1) in ("mv", "mm")  # no split on one thread
    hits = cpu_topk.one_query_way.cache_info().hits
    cpu_topk.one_query_way(torch.float32, 2)
    assert cpu_topk.one_query_way.cache_info().hits == hits + 1


@pytest.fixture(scope="module")
def compiled():
    """The fused one-query product compiled for each dtype (seconds each, once)."""
    return {dtype: cpu_topk.compile_fused(dtype) for dtype in DTYPES}


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_query_is_exact_through_the_fused_product(kc, monkeypatch, compiled, dtype):
    # compiled by torch.compile's C++ backend, which needs a compiler (this project's machines have one)
    assert compiled[dtype]
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0)
    monkeypatch.setattr(cpu_topk, "fused_wins", lambda bank_dtype, product, threads, ready: ready)  # as if faster
    calls, real = [], cpu_topk._FUSED[dtype]
    monkeypatch.setitem(cpu_topk._FUSED, dtype, lambda rows, q: calls.append((rows.dtype, q.dtype)) or real(rows, q))
    for unit in (False, True):
        q, bank = _data(1, 3001, 40, dtype, seed=13, unit=unit)
        inv = inverse_norms(bank)
        plan = plan_search(bank, 1, inv, 512)
        assert plan.fused and plan.product_dtype == torch.float32
        assert not plan_search(bank, 1, inv, 512, fused=False).fused and not plan_search(bank, 2, inv, 512).fused
        for given in (inv, None):
            values, indices = topk_cpu(q, bank, 6, inv_norms=given, chunk_rows=512)
            ref_v, ref_i = cosine_topk_reference(q, bank, 6)
            kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))
    assert len(calls) == 2 * 2 * 6 and set(calls) == {(dtype, torch.float32)}  # every chunk, read as stored
    # a last chunk of one row is scored without the compiled graph (which would compile one for it)
    calls.clear()
    q, bank = _data(1, 1025, 40, dtype, seed=14)
    values, indices = topk_cpu(q, bank, 3, inv_norms=inverse_norms(bank), chunk_rows=512)
    kc.assert_topk_matches(values, indices, *cosine_topk_reference(q, bank, 3), _all_scores(q, bank))
    assert len(calls) == 2


def test_the_fused_product_is_probed_only_once_compiled(compiled, monkeypatch):
    assert not cpu_topk.fused_wins(torch.bfloat16, torch.bfloat16, 2, False)
    assert cpu_topk.fused_wins(torch.float32, torch.float32, 2, True) in (True, False)
    hits = cpu_topk.fused_wins.cache_info().hits
    cpu_topk.fused_wins(torch.float32, torch.float32, 2, True)
    assert cpu_topk.fused_wins.cache_info().hits == hits + 1


@pytest.mark.parametrize("failure", ["compiler", "wrong result"])
def test_a_fused_product_that_fails_leaves_the_products(kc, monkeypatch, caplog, failure):
    monkeypatch.setattr(cpu_topk, "_FUSED", {})

    def broken_compile(fn, **kw):
        def run(rows, q):
            if failure == "compiler":
                raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(details)")
            return fn(rows, q) + 1
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    assert not cpu_topk.compile_fused(torch.bfloat16)
    assert "fused one-query search for bfloat16 banks is unavailable" in caplog.text
    assert ("No working C++ compiler found" in caplog.text) == (failure == "compiler")
    q, bank = _data(1, 9000, 16, torch.bfloat16, seed=5)
    inv = inverse_norms(bank)
    assert not plan_search(bank, 1, inv).fused
    cpu_topk.warm_up(bank, inv, fused=True)  # a server's warm-up: the same warning, and the search still serves
    kc.assert_topk_matches(*topk_cpu(q, bank, 4, inv_norms=inv), *cosine_topk_reference(q, bank, 4), _all_scores(q, bank))


def test_a_split_product_equals_the_whole():
    rows, q = torch.randn(1001, 24), torch.randn(24)
    out = torch.empty(1001)
    torch.testing.assert_close(cpu_topk.split_mv(rows, q, out, 4), rows @ q)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties_go_to_the_smaller_row(path, dtype):
    # Small integers: every product and norm is exact, so repeated rows tie exactly and the
    # brute-force order (cosine desc, row asc) is unambiguous.
    g = torch.Generator().manual_seed(7)
    distinct = torch.randint(-4, 5, (40, 24), generator=g).float()
    bank = distinct[torch.randint(0, 40, (3000,), generator=g)]  # each row about 75 times
    q = torch.randint(-4, 5, (6, 24), generator=g).float()
    want, cos = _brute_force(q, bank, 90)
    assert (cos.gather(1, want[:, :1]) == cos.gather(1, want[:, 1:2])).all()  # the top is a tie
    for chunk in (256, None):
        _, got = topk_cpu(q.to(dtype), bank.to(dtype), 90, inv_norms=inverse_norms(bank.to(dtype)), chunk_rows=chunk)
        assert torch.equal(got, want)


def test_same_rows_as_brute_force_on_a_normalised_bank():
    q, bank = _data(64, 20_000, 96, torch.float32, seed=3, unit=True)
    want, cos = _brute_force(q, bank, 10)
    values, got = cosine_topk(q, bank, 10, inv_norms=inverse_norms(bank))  # CPU auto: this search
    assert torch.equal(got, want)
    torch.testing.assert_close(values.double(), cos.gather(1, want), atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_products_stay_within_the_error_model(dtype):
    """Pass 1 multiplies in the bank's dtype where the CPU does so natively: the error bound
    that makes the result exact must hold for its scores (against float64)."""
    if dtype not in native_product_dtypes():
        pytest.skip(f"this CPU has no native {dtype} product")
    for unit in (False, True):
        q, bank = _data(16, 5000, 300, dtype, seed=11, unit=unit)
        inv = inverse_norms(bank)
        plan = plan_search(bank, 16, inv)
        assert plan.product_dtype == dtype and plan.unit_rows == unit
        qn = q.float() / q.float().norm(dim=1, keepdim=True)
        scores = cpu_topk._ChunkScorer(qn, bank, inv, 1e-8, plan)(0, 5000).double()
        _, exact = _brute_force(q, bank, 1)
        c, r = plan.error_model(bank.dtype, 300)
        assert ((scores - exact).abs() <= c + r * exact.abs()).all()
        assert (scores - exact).abs().max() > 1e-5  # half precision (a float32 product errs by ~1e-7)


def test_crowded_scores_take_the_rescan_and_full_scan_paths(kc, monkeypatch):
    monkeypatch.setattr(cpu_topk, "SMALL_BANK_ROWS", 0)
    # 3000 rows within 0.01 of each other: more candidates than a chunk keeps (rescans), and
    # with a low cap, more than pass 2 takes (the whole bank is rescored).
    g = torch.Generator().manual_seed(5)
    d = 64
    q = torch.zeros(4, d)
    q[torch.arange(4), torch.arange(4)] = 1.0
    bank = torch.randn(3000, d, generator=g) * 0.01
    bank[:, :4] += 1.0
    bank = (bank / bank.norm(dim=1, keepdim=True)).bfloat16()
    ref_v, ref_i = cosine_topk_reference(q, bank, 7)
    calls = {"scan": 0}
    scan = cpu_topk._scan_exact

    def counting_scan(*args):
        calls["scan"] += 1
        return scan(*args)

    monkeypatch.setattr(cpu_topk, "_scan_exact", counting_scan)
    values, indices = topk_cpu(q, bank, 7, inv_norms=inverse_norms(bank), chunk_rows=512)
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))
    assert calls["scan"] == 0
    monkeypatch.setattr(cpu_topk, "MAX_CANDIDATES", 50)
    values, indices = topk_cpu(q, bank, 7, inv_norms=inverse_norms(bank), chunk_rows=512)
    kc.assert_topk_matches(values, indices, ref_v, ref_i, _all_scores(q, bank))
    assert calls["scan"] == 1


def test_zero_query_and_out_of_range_norms(path):
    bank = torch.randn(500, 16).half()
    bank[3] *= 1000.0  # a norm far outside the half-precision range: float32 products instead
    inv = inverse_norms(bank)
    assert plan_search(bank, 2, inv).product_dtype == torch.float32
    q = torch.stack([torch.zeros(16), bank[3].float()]).half()
    values, indices = topk_cpu(q, bank, 4, inv_norms=inv)
    assert indices[0].tolist() == [0, 1, 2, 3]  # all scores 0: the smallest rows
    assert indices[1, 0] == 3 and values[1, 0] == pytest.approx(1.0, abs=1e-6)


def test_inverse_norms_chunked_and_clamped():
    bank = torch.randn(70_000, 5).bfloat16()
    bank[9] = 0
    inv = inverse_norms(bank)
    assert inv.dtype == torch.float32 and inv[9] == 1e8
    torch.testing.assert_close(inv[:9], 1 / bank[:9].float().norm(dim=1))
    torch.testing.assert_close(inv[-5:], 1 / bank[-5:].float().norm(dim=1))
