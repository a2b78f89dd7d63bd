"""Kernel benchmarks: achieved GB/s against device memory bandwidth, speed vs reference and faiss.

    python -m clara.kernels.bench                      # CPU: torch reference vs faiss (Triton on CUDA)
    python -m clara.kernels.bench --n 1000000 --d 576 --json out.json
    python -m clara.kernels.bench --cpu-roofline       # the bank search against faiss, torch, a read and the copy floor

Times are quantiles (median, p20, p80) of repeated calls, as in the Triton tutorials.
GB/s counts the bytes a kernel must read (bank or docs, once) and write.
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from clara.cli.args import add_threads_argument
from clara.kernels.dispatch import cosine_scores, cosine_topk, faiss_available

log = logging.getLogger(__name__)

# Peak memory bandwidth by device-name fragment (GB/s, vendor figures); unknown -> None.
PEAK_GBPS = {"H100 SXM": 3350, "H100 PCIe": 2000, "H100": 3350, "H200": 4800, "A100": 2039, "L4": 300,
             "A10": 600, "4090": 1008, "3090": 936}


def device_peak_gbps(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # host DRAM bandwidth is not reported by torch; see the stream figure instead
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_GBPS.items() if k in name), None)


def quantiles(fn, reps: int, device: torch.device) -> tuple[float, float, float]:
    """(median, p20, p80) seconds per call, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    t = torch.tensor(times)
    return tuple(float(x) for x in torch.quantile(t, torch.tensor([0.5, 0.2, 0.8])))


def copy_gbps(device: torch.device, nbytes: int, reps: int) -> float:
    """Achieved bandwidth of a plain tensor copy: the practical ceiling on this device."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    med, _, _ = quantiles(lambda: dst.copy_(src), reps, device)
    return 2 * nbytes / med / 1e9


def _row(kernel, backend, secs, nbytes, peak):
    med, p20, p80 = secs
    gbps = nbytes / med / 1e9
    return {"kernel": kernel, "backend": backend, "median_ms": med * 1e3, "p20_ms": p20 * 1e3,
            "p80_ms": p80 * 1e3, "GB/s": gbps, "of_peak": (gbps / peak) if peak else None}


def bench_topk(device, b, n, d, k, dtype, reps) -> list[dict]:
    q = torch.randn(b, d, device=device, dtype=dtype)
    bank = torch.randn(n, d, device=device, dtype=dtype)
    nbytes = bank.numel() * bank.element_size() + q.numel() * q.element_size()
    peak = device_peak_gbps(device)
    backends = ["torch"] + (["triton"] if device.type == "cuda" else ["cpu"]) + (
        ["faiss"] if faiss_available() and device.type == "cpu" else [])
    rows = []
    for backend in backends:
        secs = quantiles(lambda: cosine_topk(q, bank, k, backend=backend), reps, device)
        rows.append(_row(f"cosine_topk B={b} N={n} D={d} k={k} {str(dtype)[6:]}", backend, secs, nbytes, peak))
    return rows


def bench_scores(device, b, n, d, dtype, reps) -> list[dict]:
    q = torch.randn(b, d, device=device, dtype=dtype, requires_grad=True)
    docs = torch.randn(b, n, d, device=device, dtype=dtype, requires_grad=True)
    elt = docs.element_size()
    # forward reads docs; backward reads docs and writes their gradient
    nbytes = 3 * docs.numel() * elt
    peak = device_peak_gbps(device)
    rows = []
    for backend in ["torch"] + (["triton"] if device.type == "cuda" else []):
        def step():
            s = cosine_scores(q, docs, backend=backend)
            torch.autograd.grad(s.sum(), (q, docs))

        secs = quantiles(step, reps, device)
        rows.append(_row(f"cosine_scores fwd+bwd B={b} N={n} D={d} {str(dtype)[6:]}", backend, secs, nbytes, peak))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """speedup = reference median / this median, per kernel configuration."""
    ref = {r["kernel"]: r["median_ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        r["speedup_vs_torch"] = ref[r["kernel"]] / r["median_ms"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clara.kernels.bench", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None, help="bank rows for top-k (default 10^7 on CUDA, 10^6 on CPU)")
    p.add_argument("--d", type=int, default=576, help="vector width for top-k (default 576)")
    p.add_argument("--b", type=int, default=16, help="queries per top-k call (default 16)")
    p.add_argument("--k", type=int, default=10, help="top-k (default 10)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="bank dtype")
    p.add_argument("--scores-shape", default="8,20,16384", help="B,N,D for cosine_scores (default 8,20,16384)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 10; 3 rounds for --cpu-roofline)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    r = p.add_argument_group("--cpu-roofline: the bank search (kernels/roofline.py) instead of the rows above")
    r.add_argument("--cpu-roofline", action="store_true",
                   help="ours (with and without the fused one-query product), faiss IndexFlatIP, plain torch, a plain "
                        "read of the bank and the copy floor, in one interleaved run")
    r.add_argument("--shapes", default="200000x1024,1000000x576", help="banks NxD, comma-separated (default %(default)s)")
    r.add_argument("--batches", default="1,8,64", help="query batch sizes (default %(default)s)")
    r.add_argument("--stored", default="bf16", choices=["fp32", "fp16", "bf16"],
                   help="the bank's stored dtype (index build --vectors), timed beside fp32 (default %(default)s)")
    add_threads_argument(r, help="torch and faiss threads (default: torch's)")
    args = p.parse_args(argv)
    if args.cpu_roofline:
        from clara.kernels import roofline

        args.reps = args.reps or 3
        return roofline.run(args)
    args.reps = args.reps or 10
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    n = args.n or (10**7 if device.type == "cuda" else 10**6)
    rows = bench_topk(device, args.b, n, args.d, args.k, dtype, args.reps)
    sb, sn, sd = (int(x) for x in args.scores_shape.split(","))
    rows += bench_scores(device, sb, sn, sd, dtype, args.reps)
    add_ratios(rows)
    faiss_ms = {r["kernel"]: r["median_ms"] for r in rows if r["backend"] == "faiss"}
    for r in rows:
        if r["kernel"] in faiss_ms:
            r["speedup_vs_faiss"] = faiss_ms[r["kernel"]] / r["median_ms"]
    ceiling = copy_gbps(device, min(n * args.d * 4, 2**30), args.reps)
    peak = device_peak_gbps(device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}"
          f" ({torch.get_num_threads()} threads); peak {peak or 'unknown'} GB/s; copy {ceiling:.1f} GB/s")
    print(f"{'kernel':52s} {'backend':7s} {'median ms':>10s} {'p20':>9s} {'p80':>9s} {'GB/s':>8s} {'vs torch':>8s}")
    for r in rows:
        print(f"{r['kernel']:52s} {r['backend']:7s} {r['median_ms']:10.2f} {r['p20_ms']:9.2f} {r['p80_ms']:9.2f}"
              f" {r['GB/s']:8.1f} {r['speedup_vs_torch']:7.2f}x")
    if args.json:
        from clara.fileio import atomic_write_json

        atomic_write_json(args.json, {"device": str(device), "peak_gbps": peak, "copy_gbps": ceiling, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
