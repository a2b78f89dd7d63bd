"""The CPU roofline of the bank search: ``python -m clara.kernels.bench --cpu-roofline``.

For each bank shape and batch size, one interleaved run times, round by round: a large tensor
copy (the machine's copy bandwidth, so the floor is measured under the same load), faiss
IndexFlatIP over the float32 bank (the bank's default index), and, for the float32 bank and
for the bank's stored half-precision dtype: a plain read of the bank (``bank.sum()``: what no
search can beat), a plain torch ``q @ bank.T`` + topk, ours (the streaming exact search the
bank runs, given its cached inverse norms, after ``clara serve``'s warm-up, which compiles the
fused one-query product) and ours without the fused product ("ours-torch": torch's products
only). The floor of a search is the bytes of the bank it reads over the copy bandwidth.
Ratios are between medians of the same run; absolute times on a shared machine are noise.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

import torch

from clara.cli.args import set_threads
from clara.kernels.cpu_topk import native_product_dtypes, topk_cpu, warm_up
from clara.kernels.dispatch import faiss_available, inverse_norms

log = logging.getLogger(__name__)

# Bytes each side of the copy: well beyond any last-level cache, as a bank is.
COPY_BYTES = 512 << 20
# A first call slower than this is kept as a timed repetition instead of a warm-up.
WARM_UP_LIMIT_S = 1.0
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> dict:
    """The CPU features that decide the search's products: from /proc/cpuinfo where it exists."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            line = next((l for l in f if l.startswith("flags")), "")
        flags = set(line.split(":", 1)[-1].split())
    except OSError:
        flags = set()
    names = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")
    found = {name: name in flags for name in names}
    found["native_products"] = sorted(str(d).removeprefix("torch.") for d in native_product_dtypes())
    return found


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _interleaved(methods: dict, reps: int) -> dict[str, float]:
    """Median seconds per call of each method, timed in turn, round after round."""
    times: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():
        first = _time(fn)
        if first > WARM_UP_LIMIT_S:
            times[name].append(first)
    for _ in range(reps):
        for name, fn in methods.items():
            if len(times[name]) < reps:
                times[name].append(_time(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def _methods(q, banks, invs, index, k, copy) -> dict:
    methods = {"copy": copy}
    if index is not None:
        qn = (q / q.norm(dim=1, keepdim=True)).numpy()
        methods["faiss fp32"] = lambda: index.search(qn, k)
    for name, bank in banks.items():
        qd = q.to(bank.dtype)
        methods[f"read {name}"] = bank.sum
        methods[f"torch {name}"] = lambda qd=qd, bank=bank: (qd @ bank.T).topk(k, dim=1)
        methods[f"ours-torch {name}"] = lambda bank=bank, inv=invs[name]: topk_cpu(q, bank, k, inv_norms=inv, fused=False)
        methods[f"ours {name}"] = lambda bank=bank, inv=invs[name]: topk_cpu(q, bank, k, inv_norms=inv)
    return methods


def roofline(shapes, batches, stored: str, k: int = 10, reps: int = 3, seed: int = 0) -> dict:
    """{"copy_gbps": [...], "rows": [...]}: one row per (shape, batch, dtype, method)."""
    rows, copies = [], []
    src = torch.ones(COPY_BYTES // 4)
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)  # noqa: E731
    for n, d in shapes:
        g = torch.Generator().manual_seed(seed)
        bank32 = torch.randn(n, d, generator=g)
        bank32 /= bank32.norm(dim=1, keepdim=True)  # stored normalised, as the bank's vectors are
        banks = {"fp32": bank32} | ({stored: bank32.to(DTYPES[stored])} if stored != "fp32" else {})
        invs = {name: inverse_norms(b) for name, b in banks.items()}
        for name, b in banks.items():
            warm_up(b, invs[name], fused=True)  # as clara serve opens a bank
        index = None
        if faiss_available():
            import faiss

            index = faiss.IndexFlatIP(d)
            index.add(bank32.numpy())
        for b in batches:
            q = torch.randn(b, d, generator=g)
            med = _interleaved(_methods(q, banks, invs, index, k, copy), reps)
            copy_gbps = 2 * COPY_BYTES / med.pop("copy") / 1e9
            copies.append(copy_gbps)
            for method, secs in med.items():
                kind, dtype = method.split()
                nbytes = n * d * DTYPES[dtype].itemsize
                rows.append({"n": n, "d": d, "b": b, "k": k, "method": kind, "dtype": dtype, "ms": secs * 1e3,
                             "GB/s": nbytes / secs / 1e9, "floor_ms": nbytes / (copy_gbps * 1e9) * 1e3,
                             "copy_gbps": copy_gbps})
            log.info("N=%d D=%d B=%d done", n, d, b)
        del index, banks, invs, bank32
    _add_ratios(rows)
    return {"copy_gbps": copies, "rows": rows}


def _add_ratios(rows: list[dict]) -> None:
    """x_floor = ms / floor; x_read = ms / a plain read of the same bank; faiss_x = faiss ms / ms;
    torch_x = torch ms (same dtype) / ms."""
    by = {(r["n"], r["d"], r["b"], r["method"], r["dtype"]): r["ms"] for r in rows}
    for r in rows:
        key = (r["n"], r["d"], r["b"])
        r["x_floor"] = r["ms"] / r["floor_ms"]
        r["x_read"] = r["ms"] / by[(*key, "read", r["dtype"])] if r["method"] != "faiss" else None
        faiss_ms = by.get((*key, "faiss", "fp32"))
        r["faiss_x"] = faiss_ms / r["ms"] if faiss_ms else None
        r["torch_x"] = by[(*key, "torch", r["dtype"])] / r["ms"] if r["method"] != "faiss" else None


def print_table(result: dict, flags: dict) -> None:
    shown = {k: v for k, v in flags.items() if v}
    print(f"cpu: {shown}; threads {torch.get_num_threads()}; copy "
          f"{min(result['copy_gbps']):.1f}-{max(result['copy_gbps']):.1f} GB/s (read + write, per round)")
    print(f"{'N x D':>13s} {'B':>3s} {'method':10s} {'dtype':5s} {'ms':>9s} {'GB/s':>6s} {'floor ms':>9s}"
          f" {'x floor':>7s} {'x read':>7s} {'faiss/it':>8s} {'torch/it':>8s}")
    for r in result["rows"]:
        ratio = lambda x, w=8: f"{x:{w}.2f}" if x is not None else f"{'-':>{w}s}"  # noqa: E731
        print(f"{r['n']:>7d}x{r['d']:<5d} {r['b']:3d} {r['method']:10s} {r['dtype']:5s} {r['ms']:9.1f} {r['GB/s']:6.1f}"
              f" {r['floor_ms']:9.1f} {r['x_floor']:7.2f} {ratio(r['x_read'], 7)} {ratio(r['faiss_x'])}"
              f" {ratio(r['torch_x'])}")


def run(args) -> int:
    """The --cpu-roofline part of ``python -m clara.kernels.bench``."""
    set_threads(args.threads)
    if args.threads and faiss_available():
        import faiss

        faiss.omp_set_num_threads(args.threads)
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    result = roofline(shapes, batches, args.stored, k=args.k, reps=args.reps)
    flags = cpu_flags()
    print_table(result, flags)
    if args.json:
        from clara.fileio import atomic_write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.json, {"cpu_flags": flags, "threads": torch.get_num_threads(), **result})
    return 0
