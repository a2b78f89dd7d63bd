"""One short GPU benchmark (``make bench-gpu``): the Triton kernels beside torch and faiss-gpu,
achieved GB/s against the device's peak, written as one JSON and one PNG.

    python -m clara.kernels.bench_gpu --out out/bench       # bench_gpu.json, bench_gpu.png

On CUDA: the streaming cosine top-k at N = 10^7, D = 576 and 1,024, bf16, B = 1, 16 and 64
(k = 10, with the inverse norms a bank caches), beside torch's ``q @ bank.T`` + topk and
faiss-gpu's flat index (fp16 storage) where faiss has GPUs; the cosine scores forward +
backward at B = 8, N = 20, D = 16,384 (bf16), Triton beside torch. The peak is the vendor
figure for known devices; a measured device copy is reported beside it. About a minute on an
H100 once compiled. Without CUDA the same rows run at CPU sizes, the streaming CPU search in
Triton's place, and the Triton kernels only where TRITON_INTERPRET=1 was set before triton was
imported (then at tiny sizes: the interpreter is slow).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from clara.kernels.bench import copy_gbps, device_peak_gbps, quantiles
from clara.kernels.dispatch import cosine_scores, cosine_topk, faiss_available, inverse_norms, triton_usable

log = logging.getLogger(__name__)

SIZES = {  # top-k N, dims, batches; scores (B, N, D)
    "cuda": {"n": 10**7, "dims": (576, 1024), "batches": (1, 16, 64), "scores": (8, 20, 16384)},
    "cpu": {"n": 20000, "dims": (576, 1024), "batches": (1, 16, 64), "scores": (8, 20, 16384)},
}
# The Triton kernels in the interpreter (CPU, TRITON_INTERPRET=1): top-k (B, N, D), scores (B, N, D).
INTERPRETER_TOPK = (2, 128, 64)
INTERPRETER_SCORES = (2, 5, 256)


def _row(kernel: str, backend: str, secs, nbytes: int, peak: float | None, **shape) -> dict:
    med = secs[0]
    gbps = nbytes / med / 1e9
    return {"kernel": kernel, "backend": backend, **shape, "median_ms": med * 1e3, "p20_ms": secs[1] * 1e3,
            "p80_ms": secs[2] * 1e3, "GB/s": gbps, "of_peak": gbps / peak if peak else None}


def _faiss_gpu_search(bank: torch.Tensor, k: int):
    """A search function over a faiss-gpu flat index of ``bank`` (fp16 storage), or None."""
    if not faiss_available():
        return None
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return None
    import faiss.contrib.torch_utils  # noqa: F401 (lets faiss take torch tensors on the GPU)

    config = faiss.GpuIndexFlatConfig()
    config.useFloat16 = True
    index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), bank.shape[1], config)
    for start in range(0, bank.shape[0], 1 << 20):  # float32 a slice at a time: the bank stays bf16
        chunk = bank[start : start + (1 << 20)].float()
        index.add(chunk / chunk.norm(dim=1, keepdim=True))
    return lambda q: index.search(q / q.norm(dim=1, keepdim=True), k)


def bench_topk(device, n: int, dims, batches, k: int, reps: int, peak) -> list[dict]:
    rows = []
    for d in dims:
        bank = torch.randn(n, d, device=device, dtype=torch.bfloat16)
        inv = inverse_norms(bank)
        nbytes = bank.numel() * 2 + inv.numel() * 4
        faiss_search = _faiss_gpu_search(bank, k) if device.type == "cuda" else None
        ours = "triton" if device.type == "cuda" else "cpu"
        for b in batches:
            q = torch.randn(b, d, device=device, dtype=torch.bfloat16)
            shape = {"n": n, "d": d, "b": b, "k": k, "dtype": "bf16"}
            runs = {ours: lambda: cosine_topk(q, bank, k, inv_norms=inv, backend=ours),
                    "torch": lambda: (q @ bank.T).topk(k, dim=1)}
            if faiss_search is not None:
                qf = q.float()
                runs["faiss-gpu"] = lambda: faiss_search(qf)
            for backend, fn in runs.items():
                rows.append(_row("cosine_topk", backend, quantiles(fn, reps, device), nbytes, peak, **shape))
        bank = inv = faiss_search = None  # free the device memory before the next width
    return rows


def interpreted_topk(k: int) -> list[dict]:
    """The Triton top-k itself through the interpreter, once, at a tiny size: it runs, it agrees."""
    b, n, d = INTERPRETER_TOPK
    q, bank = torch.randn(b, d, dtype=torch.bfloat16), torch.randn(n, d, dtype=torch.bfloat16)
    secs = quantiles(lambda: cosine_topk(q, bank, k, backend="triton"), 1, torch.device("cpu"))
    return [_row("cosine_topk", "triton-interpreter", secs, bank.numel() * 2, None, n=n, d=d, b=b, k=k, dtype="bf16")]


def bench_scores(device, shape, reps: int, peak, backends) -> list[dict]:
    b, n, d = shape
    q = torch.randn(b, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    docs = torch.randn(b, n, d, device=device, dtype=torch.bfloat16, requires_grad=True)
    rows = []
    for backend in backends:
        def step():
            s = cosine_scores(q, docs, backend="torch" if backend == "torch" else "triton")
            torch.autograd.grad(s.sum(), (q, docs))

        # forward reads docs; backward reads them again and writes their gradient
        rows.append(_row("cosine_scores fwd+bwd", backend, quantiles(step, reps, device), 3 * docs.numel() * 2, peak,
                         b=b, n=n, d=d, dtype="bf16"))
    return rows


def run(device: torch.device, reps: int, n: int | None = None) -> dict:
    sizes = SIZES[device.type]
    peak = device_peak_gbps(device)
    rows = bench_topk(device, n or sizes["n"], sizes["dims"], sizes["batches"], 10, reps, peak)
    if device.type == "cuda":
        rows += bench_scores(device, sizes["scores"], reps, peak, ["triton", "torch"])
    else:
        rows += bench_scores(device, sizes["scores"], reps, peak, ["torch"])
        if triton_usable(device):  # TRITON_INTERPRET=1
            rows += interpreted_topk(10) + bench_scores(device, INTERPRETER_SCORES, 1, peak, ["triton-interpreter"])
    copy = copy_gbps(device, 1 << 30 if device.type == "cuda" else 1 << 28, reps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    for r in rows:
        r["of_copy"] = r["GB/s"] / copy
    return {"device": name, "peak_gbps": peak, "copy_gbps": copy, "rows": rows}


def plot(result: dict, path: Path) -> Path:
    from clara.training.curves import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    for ax, kernel in zip(axes, ("cosine_topk", "cosine_scores fwd+bwd")):
        rows = [r for r in result["rows"] if r["kernel"] == kernel]
        configs = list(dict.fromkeys((r.get("d"), r["b"]) for r in rows))
        backends = list(dict.fromkeys(r["backend"] for r in rows))
        width = 0.8 / max(1, len(backends))
        for i, backend in enumerate(backends):
            got = {(r.get("d"), r["b"]): r["GB/s"] for r in rows if r["backend"] == backend}
            ax.bar([c + i * width for c in range(len(configs))], [got.get(c, 0) for c in configs], width, label=backend)
        for level, style, label in ((result["peak_gbps"], "--", "peak"), (result["copy_gbps"], ":", "device copy")):
            if level:
                ax.axhline(level, linestyle=style, color="black", linewidth=1, label=label)
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(configs))], [f"D={d}\nB={b}" for d, b in configs])
        ax.set_ylabel("GB/s")
        ax.set_title(f"{kernel} ({result['device']})")
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clara.kernels.bench_gpu", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/bench", help="directory for bench_gpu.json and bench_gpu.png (default %(default)s)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 10 on CUDA, 3 on CPU)")
    p.add_argument("--n", type=int, default=None, help="top-k bank rows (default 10^7 on CUDA, 20000 on CPU)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = run(device, args.reps or (10 if device.type == "cuda" else 3), args.n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from clara.fileio import atomic_write_json

    atomic_write_json(out / "bench_gpu.json", result)
    plot(result, out / "bench_gpu.png")
    print(f"device: {result['device']}; peak {result['peak_gbps'] or 'unknown'} GB/s; copy {result['copy_gbps']:.1f} GB/s")
    for r in result["rows"]:
        shape = " ".join(f"{k}={r[k]}" for k in ("n", "d", "b") if k in r)
        share = f"{r['of_peak']:.0%} of peak" if r["of_peak"] else f"{r['of_copy']:.0%} of copy"
        print(f"{r['kernel']:22s} {shape:24s} {r['backend']:18s} {r['median_ms']:9.2f} ms {r['GB/s']:8.1f} GB/s  {share}")
    print(f"wrote {out / 'bench_gpu.json'} and {out / 'bench_gpu.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
