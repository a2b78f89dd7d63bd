"""Exact cosine top-k on CPU in one streaming pass over the bank (the serving search).

q [B, D] against a bank [N, D] -> the k best cosine scores and their rows, ties broken toward
the smaller row (as the Triton kernel does).

Pass 1 streams the bank in chunks whose [B, C] score block stays in the last-level cache. Each
chunk is scored by one matrix product: in the bank's own bf16/fp16 where the CPU multiplies it
natively, else in float32 (a half-precision chunk is copied to float32, never the whole
bank). One query may instead go through the fused product (``compile_fused``: each row read
once in its own dtype and widened to float32 in registers) where it was compiled and measured
faster. Rows of unit norm (a bank stored normalised) are not rescaled. ``Plan.error_model``
bounds how far a pass-1 score can be from the exact cosine, so ``Plan.bar`` turns the k-th
best pass-1 score into a score that every row of the exact top-k reaches in pass 1. Each
chunk keeps its best rows; those at or above the bar are the candidates. Pass 2 rescores
them exactly in float32 and orders them by (score desc, row asc), packed in one int64 key as
the Triton kernel packs them. The result is the exact top-k whatever the precision of pass 1.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from clara.kernels.common import DEFAULT_EPS, pack_keys, unpack_keys

log = logging.getLogger(__name__)

# A chunk's scores [B, C] in float32 take at most this much (the search's working memory). They
# stay in the last-level cache of a server CPU; smaller chunks, in L2, measured slower: score
# traffic is only B/D of the bank's, and every chunk pays the calls and thread barriers of a
# product and a top-k (10-20 ms each on the loaded 2-core machine of docs/RESULTS.md).
SCORE_BYTES = 64 << 20
# Several queries whose product runs the chunk's rows against them (``several_query_way``) score a chunk of
# at most this many rows (MKL blocks the product itself): in a one-off sweep on an AMD EPYC, chunks of 16k to
# 131k rows ran within 10% of one another at 8 and 64 queries.
ROWS_WAY_CHUNK = 1 << 17
# A half-precision chunk copied to float32 (no native product) takes at most this much.
CAST_BYTES = 16 << 20
# Fewer rows than this per chunk and the per-call overhead of the products dominates.
MIN_CHUNK_ROWS = 4096
# A query with more candidates than this (a zero query, a bank of duplicates) is rescored
# by streaming the whole bank through pass 2 instead.
MAX_CANDIDATES = 1 << 12
# Rows pass 1 keeps per chunk and query beyond k.
KEEP_EXTRA = 64
# Strided slices per chunk whose maxima pick the slices holding a chunk's best rows.
GROUP = 16
# Rows pass 2 rescores per product.
RESCORE_ROWS = 8192
# A bank this small is scored exactly in one product, without pass 1.
SMALL_BANK_ROWS = 8192
# Half-precision passes only when every row norm is in [1 / NORM_RANGE, NORM_RANGE] (known
# from inv_norms), so that the product neither overflows nor loses a score to subnormals.
NORM_RANGE = 2.0**6
# Rows whose norms are all within this of 1 (a bank stored normalised) are scored by the plain
# dot product, one pass less per chunk; the bound widens by as much.
MAX_NORM_SLACK = 2.0**-7

_UNIT_ROUNDOFF = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
# Half the smallest subnormal: the absolute error of rounding a tiny value.
_TINY = {torch.float32: 0.0, torch.bfloat16: 2.0**-134, torch.float16: 2.0**-25}


@functools.cache
def native_product_dtypes() -> frozenset:
    """The half-precision dtypes this CPU multiplies natively, with float32 accumulation.

    bf16 needs AVX512-BF16 or AMX, fp16 AVX512-FP16 or AMX-FP16 (oneDNN's checks); either
    must also pass a probe, since torch's fallback product accumulates in the input dtype
    (a sum of 4097 ones stalls at 256 in bf16).
    """
    found = set()
    try:
        checks = {
            torch.bfloat16: (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
            and torch.ops.mkldnn._is_mkldnn_bf16_supported(),
            torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported(),
        }
    except (AttributeError, RuntimeError):
        return frozenset()
    for dtype, native in checks.items():
        if native and torch.backends.mkldnn.is_available():
            # a vector-matrix, a matrix and a matrix-vector product, as the search calls them; 4097 rounds to 4096
            ones = torch.ones(16, 4097, dtype=dtype)
            if all(bool(((a @ ones[:3].T).float() == 4096.0).all()) for a in (ones[:1], ones)) \
                    and bool((torch.mv(ones, ones[0]).float() == 4096.0).all()):
                found.add(dtype)
    return frozenset(found)


@functools.cache
def _row_pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="clara-topk")


def split_mv(rows: torch.Tensor, q: torch.Tensor, out: torch.Tensor, parts: int) -> torch.Tensor:
    """``out = rows @ q`` with the rows in ``parts`` ranges, each product on its own thread: torch's float32 mv
    runs on one core, and one core of an AMD EPYC reads at about half the machine's copy rate."""
    bounds = [rows.shape[0] * i // parts for i in range(parts + 1)]
    part = lambda i: torch.mv(rows[bounds[i] : bounds[i + 1]], q, out=out[bounds[i] : bounds[i + 1]])  # noqa: E731
    list(_row_pool(parts).map(part, range(parts)))
    return out


def _fastest(ways: dict[str, Callable[[], object]]) -> str:
    """The way with the lowest best-of-3 time, timed in turn (interleaved)."""
    best = dict.fromkeys(ways, math.inf)
    for _ in range(3):
        for way, run in ways.items():
            t = time.perf_counter()
            run()
            best[way] = min(best[way], time.perf_counter() - t)
    return min(best, key=best.get)


def _probe_rows(dtype: torch.dtype) -> torch.Tensor:
    """A bank larger than the caches, for the probes below."""
    return torch.ones(1 << 16, 512, dtype=dtype)


@functools.cache
def one_query_way(dtype: torch.dtype, threads: int) -> str:
    """How one query scores a chunk fastest on this CPU: ``"mv"``, a one-row ``"mm"``, or ``"split"`` (``split_mv``
    over ``threads`` row ranges), timed once per dtype and thread count on a bank larger than the caches (best
    of 3 each, interleaved). All accumulate in float32 (the probe above) and pass 2 rescores each exactly, so
    only the speed differs: a bf16 mv read 1.4x faster than mm on a Xeon with AMX and 0.6x as fast on an AMD
    EPYC without it; there an fp32 mv ran on one core (docs/RESULTS.md §7)."""
    rows = _probe_rows(dtype)
    return _fastest(_one_query_products(rows, rows[0].clone(), torch.empty(rows.shape[0], dtype=dtype), threads))


def _one_query_products(rows: torch.Tensor, q: torch.Tensor, out: torch.Tensor, threads: int) -> dict:
    """``out = rows @ q`` by each way ``one_query_way`` times: mv, a one-row mm, and (threads > 1) split_mv."""
    ways = {"mv": lambda: torch.mv(rows, q, out=out), "mm": lambda: torch.mm(q[None], rows.T, out=out[None])}
    if threads > 1:
        ways["split"] = lambda: split_mv(rows, q, out, threads)
    return ways


def _batch_bucket(batch: int) -> int:
    """The batch size ``several_query_way`` is probed at for ``batch`` queries."""
    return 8 if batch <= 8 else 64


@functools.cache
def several_query_way(dtype: torch.dtype, threads: int, bucket: int) -> str:
    """How ``bucket`` queries (8 or 64) score a chunk faster on this CPU: ``"queries"``, the queries against
    the chunk's rows (``q @ rows.T``, (B, C) at once), or ``"rows"``, the rows against the queries (``rows @
    q.T``, then transposed to (B, C)). Timed once per dtype, thread count and bucket, as ``one_query_way``. On
    an AMD EPYC, float32 (MKL) ran "rows" 1.1-2.1x faster and bf16 (oneDNN) mostly "queries"
    (docs/RESULTS.md §7)."""
    del threads  # a key only: the products run on torch's threads
    rows = _probe_rows(dtype)
    q = rows[:bucket].clone()
    out, out_t = torch.empty(bucket, rows.shape[0], dtype=dtype), torch.empty(rows.shape[0], bucket, dtype=dtype)

    def by_rows():
        torch.mm(rows, q.T, out=out_t)
        out.copy_(out_t.T)

    return _fastest({"queries": lambda: torch.mm(q, rows.T, out=out), "rows": by_rows})


# The fused one-query product of each bank dtype, once compiled (compile_fused).
_FUSED: dict[torch.dtype, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
_FUSED_LOCK = threading.Lock()


def _fused_dot(rows: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """rows (r, D) in the bank's dtype, q (D,) float32 -> (r,) float32 dot products. Compiled, it reads each
    row once and widens it in registers: no float32 copy, and no half-precision product."""
    return (rows.float() * q).sum(-1)


def compile_fused(dtype: torch.dtype) -> bool:
    """Compile the fused one-query product for banks of ``dtype`` (torch.compile's C++ backend, dynamic
    shapes: seconds once a process, faster once its disk cache is warm). A one-query search uses it from
    then on wherever it measures faster than the products above (on an AMD EPYC, a bf16 bank read 1.7x
    faster). False, with a warning, where it cannot be compiled (no C++ compiler): the products above serve."""
    with _FUSED_LOCK:
        if dtype in _FUSED:
            return True
        try:
            fn = torch.compile(_fused_dot, dynamic=True)
            rows = torch.ones(300, 96, dtype=dtype)
            rows[7] = 2
            got = fn(rows, torch.ones(96))
            want = torch.full((300,), 96.0).index_fill_(0, torch.tensor([7]), 192.0)
            if not torch.equal(got, want):
                raise RuntimeError(f"it computed {got[:8].tolist()} for {want[:8].tolist()}")
        except Exception as e:  # noqa: BLE001 - any failure of the compiler leaves the products above
            first_line = (str(e).splitlines() or [""])[0][:200]
            log.warning("the fused one-query search for %s banks is unavailable (%s: %s); using torch's products",
                        str(dtype).removeprefix("torch."), type(e).__name__, first_line)
            return False
        _FUSED[dtype] = fn
        return True


@functools.cache
def fused_wins(bank_dtype: torch.dtype, product_dtype: torch.dtype, threads: int, compiled: bool) -> bool:
    """Whether one query reads a bank of ``bank_dtype`` faster through the compiled fused product than through
    the fastest way of ``product_dtype`` (timed as ``one_query_way``; the cast a non-native half-precision
    chunk would also need is not counted against the other way). False until ``compile_fused(bank_dtype)``."""
    if not compiled:
        return False
    fused = _FUSED[bank_dtype]
    rows, q32 = _probe_rows(bank_dtype), torch.ones(512)
    other = _probe_rows(product_dtype) if product_dtype != bank_dtype else rows
    way = one_query_way(product_dtype, threads)
    product = _one_query_products(other, other[0].clone(), torch.empty(other.shape[0], dtype=product_dtype), threads)[way]
    return _fastest({"fused": lambda: fused(rows, q32), way: product}) == "fused"


def warm_up(bank: torch.Tensor, inv_norms: torch.Tensor | None = None, *, fused: bool = False) -> None:
    """Run now the one-time probes that a first one-query search of ``bank`` would run (a bank runs this
    when it opens, so that its first request does not pay for them); with ``fused``, first compile the
    fused product for its dtype (a server does)."""
    if bank.shape[0] > SMALL_BANK_ROWS:
        if fused:
            compile_fused(bank.dtype)
        threads = torch.get_num_threads()
        plan = plan_search(bank, 1, inv_norms)
        if not plan.fused:
            one_query_way(plan.product_dtype, threads)
        for batch in (8, 64):  # several_query_way's buckets
            plan_search(bank, batch, inv_norms)


@dataclass(frozen=True)
class Plan:
    """How pass 1 scores a bank: the product's dtype, the chunk size, whether the rows are of
    unit norm to within ``norm_slack`` (then their scores are not rescaled), whether one
    query goes through the fused product (float32 arithmetic on the rows as stored), and how
    several queries multiply a chunk (``several_query_way``)."""

    product_dtype: torch.dtype
    chunk_rows: int
    unit_rows: bool = False
    norm_slack: float = 0.0
    fused: bool = False
    by_rows: bool = False

    def error_model(self, bank_dtype: torch.dtype, d: int) -> tuple[float, float]:
        """(c, r) with |pass-1 score - exact cosine s| <= c + r |s|, for a unit query and rows
        whose norms n are in range.

        Rounding q and the row to the product dtype moves the dot by at most
        ((1+u_q)(1+u_d) - 1) n (Cauchy-Schwarz), float32 accumulation over d terms by
        gamma_d = d u32 / (1 - d u32) of it (together: a n), and rounding the product adds
        u_out of the dot, itself at most n (|s| + a). Unscaled, the dot of a row with
        |n - 1| <= slack is s n; scaled, 1/n carries gamma_d. Pass 2 is within 2 gamma_d too.
        """
        u_q = _UNIT_ROUNDOFF[self.product_dtype]
        u_d = 0.0 if bank_dtype == self.product_dtype else u_q
        gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
        a = (1 + u_q) * (1 + u_d) * (1 + gamma) - 1 + _TINY[self.product_dtype] * (math.sqrt(d) + NORM_RANGE)
        exact = 2 * gamma + 2.0**-22
        if self.unit_rows:
            n = 1 + self.norm_slack
            return n * a * (1 + u_q) + 2 * exact, n * u_q + self.norm_slack
        return a * (1 + u_q) * (1 + gamma) + 2 * exact, u_q * (1 + gamma) + gamma

    def bar(self, kth: torch.Tensor, bank_dtype: torch.dtype, d: int) -> torch.Tensor:
        """Lowest pass-1 score a row of the exact top-k can have, given the k-th best pass-1
        score ``kth`` (B,): the k rows scoring at least kth have exact scores of at least
        g(kth), and a row with exact score y scores at least y - c - r|y| in pass 1."""
        c, r = self.error_model(bank_dtype, d)
        low = torch.where(kth >= c, (kth - c) / (1 + r), (kth - c) / (1 - r))  # exact k-th >= low
        return low - c - r * low.abs()


def plan_search(bank: torch.Tensor, batch: int, inv_norms: torch.Tensor | None = None,
                chunk_rows: int | None = None, fused: bool = True) -> Plan:
    """Pick the product dtype (exact float32 unless half precision is native and every row's
    norm is in range; float32 also for the fused product, where one query measured faster
    through it, unless ``fused`` is False), the chunk size, whether scores need rescaling by
    the row norms, and, for several queries, the product's orientation (``several_query_way``)."""
    native = native_product_dtypes()
    low, high = (None, None) if inv_norms is None else (float(x) for x in torch.aminmax(inv_norms))
    in_range = low is not None and low >= 1 / NORM_RANGE and high <= NORM_RANGE
    product = bank.dtype if bank.dtype in native and in_range else torch.float32
    threads = torch.get_num_threads()
    fused = fused and batch == 1 and fused_wins(bank.dtype, product, threads, bank.dtype in _FUSED)
    if fused:
        product = torch.float32
    by_rows = batch > 1 and several_query_way(product, threads, _batch_bucket(batch)) == "rows"
    if chunk_rows is None:
        rows = SCORE_BYTES // (4 * batch)
        if by_rows:
            rows = min(rows, ROWS_WAY_CHUNK)
        if product != bank.dtype and not fused:
            rows = min(rows, CAST_BYTES // (bank.shape[1] * product.itemsize))
        chunk_rows = max(MIN_CHUNK_ROWS, rows // GROUP * GROUP)
    slack = 1.0 if low is None else max(1 / low - 1, 1 - 1 / high)  # rows' |norm - 1|
    unit = slack <= MAX_NORM_SLACK
    return Plan(product, min(chunk_rows, bank.shape[0]), unit, slack if unit else 0.0, fused, by_rows)


class _ChunkScorer:
    """Pass-1 scores of bank chunks, into a reused buffer (no page faults per chunk)."""

    def __init__(self, qn: torch.Tensor, bank: torch.Tensor, inv_norms, eps: float, plan: Plan):
        self.bank, self.inv_norms, self.eps, self.plan = bank, inv_norms, eps, plan
        self.qn = qn  # (B, D) float32, unit rows
        self.q_product = qn.to(plan.product_dtype)  # (B, D)
        rows = plan.chunk_rows
        same = plan.product_dtype == bank.dtype or plan.fused
        self.cast = None if same else torch.empty(rows, bank.shape[1], dtype=plan.product_dtype)
        self.out = torch.empty(qn.shape[0], rows, dtype=plan.product_dtype)  # (B, C)
        self.out_t = torch.empty(rows, qn.shape[0], dtype=plan.product_dtype) if plan.by_rows else None  # (C, B)
        self.threads = torch.get_num_threads()
        self.one_way = None
        if qn.shape[0] == 1:
            self.one_way = "fused" if plan.fused else one_query_way(plan.product_dtype, self.threads)

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        """Scores (B, stop - start) of bank rows start..stop: cosines, or plain dot products
        where the plan says the rows are of unit norm (the bound covers the difference)."""
        chunk = self.bank[start:stop]  # (r, D)
        r = stop - start
        if self.cast is not None:
            chunk = self.cast[:r].copy_(chunk)  # (r, D) in the product dtype, in cache
        if self.one_way == "fused":  # one query, the rows as stored, float32 arithmetic
            fused = _FUSED[self.bank.dtype] if r > 1 else _fused_dot  # one row would compile a specialised graph
            scores = fused(chunk, self.qn[0])[None]  # (1, r)
        elif self.one_way == "mv":  # one query: whichever of mv, a split mv and a one-row mm this CPU runs fastest
            scores = torch.mv(chunk, self.q_product[0], out=self.out[0, :r])[None]  # (1, r)
        elif self.one_way == "split":
            scores = split_mv(chunk, self.q_product[0], self.out[0, :r], self.threads)[None]  # (1, r)
        elif self.plan.by_rows:  # several queries, the rows against them (several_query_way), then (B, r)
            scores_t = torch.mm(chunk, self.q_product.T, out=self.out_t[:r])  # (r, B)
            scores = self.out.view(-1)[: self.out.shape[0] * r].view(-1, r).copy_(scores_t.T)  # (B, r), contiguous
        elif self.out.shape[0] == 1 or r == self.out.shape[1]:  # (B, r) of the buffer is contiguous
            scores = torch.mm(self.q_product, chunk.T, out=self.out[:, :r])
        else:  # the last, shorter chunk: a (B, r) slice of the buffer is not contiguous
            scores = self.q_product @ chunk.T
        if self.plan.unit_rows:
            return scores  # (B, r)
        if self.inv_norms is not None:
            inv = self.inv_norms[start:stop]  # (r,) float32
        else:
            inv = torch.linalg.vector_norm(self.bank[start:stop], dim=1, dtype=torch.float32).clamp_min(self.eps).reciprocal()
        return scores * inv  # (B, r) float32


def _round_down(bar: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``bar`` in ``dtype``, never above it: comparing in the scores' dtype keeps every row."""
    if dtype == torch.float32:
        return bar
    return (bar - bar.abs() * 2 * _UNIT_ROUNDOFF[dtype] - 2.0**-24).to(dtype)


def _chunk_top(scores: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m best (values, columns) per row of scores (B, r), best first.

    The columns fall into r / GROUP strided slices (column j, j + r / GROUP, ...). The m best
    columns lie in the m slices with the best maxima (any other slice's maximum is beaten by m
    slices' maxima), so an elementwise max over GROUP rows of slices, a top-k over their maxima
    and one over the m chosen slices replace a top-k over all r columns (about half the time).
    """
    b, r = scores.shape
    width = r // GROUP
    if r % GROUP or width < m:
        return scores.topk(m, dim=1)
    grid = scores.view(b, GROUP, width)  # column t * width + j at [:, t, j]
    slices = grid.amax(dim=1).topk(m, dim=1).indices  # (B, m) the slices j with the best maxima
    members = grid.gather(2, slices[:, None, :].expand(b, GROUP, m)).view(b, GROUP * m)  # (B, GROUP * m)
    values, pos = members.topk(m, dim=1)  # (B, m); pos = t * m + slice position
    return values, (pos // m) * width + slices.gather(1, pos % m)


def _pass_one(scorer: _ChunkScorer, n: int, k: int):
    """Candidate (query, row) pairs containing every row of each query's exact top-k, or None
    when some query has more than MAX_CANDIDATES.

    Each chunk keeps its best ``k + KEEP_EXTRA`` rows per query (a top-k costs about the same
    for any small k). Rows at or above ``Plan.bar`` of the k-th best kept score are the
    candidates; a chunk whose kept rows all clear the bar may hold more that do, and is
    scored again for them.
    """
    b = scorer.qn.shape[0]
    chunk = scorer.plan.chunk_rows
    starts = list(range(0, n, chunk))
    kept_v, kept_i, floors = [], [], []
    for start in starts:
        stop = min(start + chunk, n)
        m = min(k + KEEP_EXTRA, stop - start)
        v, i = _chunk_top(scorer(start, stop), m)  # (B, m), best first
        v = v.float()
        kept_v.append(v)
        kept_i.append(i + start)
        floors.append(v[:, -1] if m < stop - start else torch.full_like(v[:, -1], -math.inf))
    values, rows = torch.cat(kept_v, dim=1), torch.cat(kept_i, dim=1)  # (B, chunks * m)
    bar = scorer.plan.bar(values.topk(k, dim=1).values[:, -1], scorer.bank.dtype, scorer.bank.shape[1])  # (B,)
    saturated = torch.stack(floors, dim=1) >= bar[:, None]  # (B, chunks)
    # a saturated chunk is scored again for all its rows at or above the bar: drop its kept ones
    rescanned = saturated.repeat_interleave(torch.tensor([len(v[0]) for v in kept_v]), dim=1)
    query, pos = ((values >= bar[:, None]) & ~rescanned).nonzero().unbind(1)
    pairs = [(query, rows[query, pos])]
    for c in saturated.any(dim=0).nonzero().flatten().tolist():
        queries = saturated[:, c].nonzero().flatten()  # (b',)
        scores = scorer(starts[c], min(starts[c] + chunk, n))[queries]  # (b', r)
        hit_q, hit_col = (scores >= _round_down(bar[queries], scores.dtype)[:, None]).nonzero().unbind(1)
        pairs.append((queries[hit_q], hit_col + starts[c]))
    query = torch.cat([p[0] for p in pairs])
    rows = torch.cat([p[1] for p in pairs])
    if int(torch.bincount(query, minlength=b).max()) > MAX_CANDIDATES:
        return None
    return query, rows


def _inverse_norms_of(rows: torch.Tensor, picked: torch.Tensor, inv_norms, eps: float) -> torch.Tensor:
    if inv_norms is not None:
        return inv_norms[rows].float()
    return torch.linalg.vector_norm(picked, dim=-1, dtype=torch.float32).clamp_min(eps).reciprocal()


def _rescore(qn: torch.Tensor, bank: torch.Tensor, inv_norms, eps: float, k: int, query, rows):
    """Exact float32 top-k of each query over its own candidate rows, ties toward the smaller row."""
    b = qn.shape[0]
    order = torch.unique(query * bank.shape[0] + rows)  # dedupe; grouped by query
    query, rows = order // bank.shape[0], order % bank.shape[0]
    counts = torch.bincount(query, minlength=b)  # (B,)
    slot = torch.arange(len(rows)) - (torch.cumsum(counts, 0) - counts)[query]  # place within its query
    width = int(counts.max())
    padded = torch.zeros(b, width, dtype=torch.int64)  # (B, M) candidate rows, padded with row 0
    valid = torch.zeros(b, width, dtype=torch.bool)
    padded[query, slot] = rows
    valid[query, slot] = True
    best = torch.empty(b, 0, dtype=torch.int64)
    step = max(1, RESCORE_ROWS // b)  # candidates per query rescored per product
    for start in range(0, width, step):
        idx = padded[:, start : start + step]  # (B, m)
        picked = bank[idx]  # (B, m, D)
        scores = torch.bmm(picked.float(), qn[:, :, None])[..., 0] * _inverse_norms_of(idx, picked, inv_norms, eps)
        scores = scores.masked_fill(~valid[:, start : start + idx.shape[1]], -math.inf)  # (B, m)
        best = torch.cat([best, pack_keys(scores, idx)], dim=1)
        best = best.topk(min(k, best.shape[1]), dim=1).values
    return unpack_keys(best)


def _scan_exact(qn: torch.Tensor, bank: torch.Tensor, inv_norms, eps: float, k: int):
    """Exact float32 top-k over every row, ties toward the smaller row (too many candidates)."""
    best = torch.empty(qn.shape[0], 0, dtype=torch.int64)  # (B, <= k) packed keys
    for start in range(0, bank.shape[0], RESCORE_ROWS):
        picked = bank[start : start + RESCORE_ROWS]  # (r, D)
        idx = torch.arange(start, start + len(picked))
        scores = (qn @ picked.float().T) * _inverse_norms_of(idx, picked, inv_norms, eps)  # (B, r)
        best = torch.cat([best, pack_keys(scores, idx)], dim=1)
        best = best.topk(min(k, best.shape[1]), dim=1).values
    return unpack_keys(best)


def topk_cpu(
    q: torch.Tensor,
    bank: torch.Tensor,
    k: int,
    inv_norms: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
    chunk_rows: int | None = None,
    fused: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [B, D], bank [N, D] -> (values [B, k] float32, indices [B, k] int64), best first.

    Exact: the top-k of the float32 cosine, ties toward the smaller row. ``inv_norms``
    ([N], ``1 / max(|row|, eps)``) saves the norm of every row on every call. ``fused=False``
    keeps one query off the compiled fused product (the benchmark's baseline).
    """
    qf = q.float()
    qn = qf / qf.norm(dim=1, keepdim=True).clamp_min(eps)  # (B, D)
    inv_norms = None if inv_norms is None else inv_norms.float()
    if bank.shape[0] <= SMALL_BANK_ROWS:  # one exact product: a candidate pass would cost more than it saves
        return _scan_exact(qn, bank, inv_norms, eps, k)
    plan = plan_search(bank, q.shape[0], inv_norms, chunk_rows, fused)
    scorer = _ChunkScorer(qn, bank, inv_norms, eps, plan)
    candidates = _pass_one(scorer, bank.shape[0], k)
    if candidates is None:
        return _scan_exact(qn, bank, inv_norms, eps, k)
    return _rescore(qn, bank, inv_norms, eps, k, *candidates)


def inverse_norms(bank: torch.Tensor, eps: float = DEFAULT_EPS, chunk_rows: int = 1 << 16) -> torch.Tensor:
    """[N] float32 ``1 / max(|row|, eps)`` of a bank, computed chunk by chunk (no float32 copy)."""
    out = torch.empty(bank.shape[0], dtype=torch.float32, device=bank.device)
    for start in range(0, bank.shape[0], chunk_rows):
        chunk = bank[start : start + chunk_rows]
        out[start : start + len(chunk)] = torch.linalg.vector_norm(chunk, dim=1, dtype=torch.float32)
    return out.clamp_min_(eps).reciprocal_()
