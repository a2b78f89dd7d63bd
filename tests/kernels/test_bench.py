"""The benchmarks run on CPU at small sizes: the CPU roofline table and make bench-gpu's fallback."""

import json

import pytest

from clara.kernels import bench, bench_gpu
from clara.kernels.dispatch import faiss_available


def test_cpu_roofline_table_has_every_method_and_its_floor(tmp_path, capsys):
    out = tmp_path / "roofline.json"
    assert bench.main(["--cpu-roofline", "--shapes", "9000x48,3000x40", "--batches", "1,8", "--stored", "bf16",
                       "--reps", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    methods = {(r["n"], r["b"], r["method"], r["dtype"]) for r in rows}
    per_dtype = {"read", "ours", "ours-torch", "torch"}
    want = per_dtype | ({"faiss"} if faiss_available() else set())
    for n in (9000, 3000):
        for b in (1, 8):
            assert {(m, dt) for (nn, bb, m, dt) in methods if (nn, bb) == (n, b)} >= (
                {(m, "fp32") for m in want} | {(m, "bf16") for m in per_dtype})
    for r in rows:
        nbytes = r["n"] * r["d"] * (4 if r["dtype"] == "fp32" else 2)
        assert r["floor_ms"] == pytest.approx(nbytes / (r["copy_gbps"] * 1e9) * 1e3)
        assert r["x_floor"] == pytest.approx(r["ms"] / r["floor_ms"]) and r["GB/s"] > 0
        if r["method"] == "ours":
            same = {t["method"]: t["ms"] for t in rows if (t["n"], t["b"], t["dtype"]) == (r["n"], r["b"], r["dtype"])}
            assert r["torch_x"] == pytest.approx(same["torch"] / r["ms"])
            assert r["x_read"] == pytest.approx(r["ms"] / same["read"])
    assert set(result["cpu_flags"]) >= {"avx512f", "avx512_bf16", "amx_bf16", "native_products"}
    printed = capsys.readouterr().out
    assert "x floor" in printed and "x read" in printed and "threads" in printed


def _check_fallback(out, interpreted: bool):
    result = json.loads((out / "bench_gpu.json").read_text())
    assert result["device"] == "cpu" and result["copy_gbps"] > 0
    topk = {(r["d"], r["b"], r["backend"]) for r in result["rows"] if r["kernel"] == "cosine_topk"}
    assert topk >= {(d, b, backend) for d in (576, 1024) for b in (1, 16, 64) for backend in ("cpu", "torch")}
    scores = {r["backend"] for r in result["rows"] if r["kernel"] == "cosine_scores fwd+bwd"}
    assert "torch" in scores and ("triton-interpreter" in scores) == interpreted
    assert any(b == "triton-interpreter" for _, _, b in topk) == interpreted
    assert all(r["median_ms"] > 0 and r["GB/s"] > 0 and r["of_copy"] > 0 for r in result["rows"])
    assert (out / "bench_gpu.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_gpu_falls_back_to_cpu_sizes(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_gpu, "triton_usable", lambda device: False)
    assert bench_gpu.main(["--out", str(tmp_path), "--n", "3000", "--reps", "1"]) == 0
    _check_fallback(tmp_path, interpreted=False)


def test_bench_gpu_fallback_runs_the_triton_kernels_interpreted(interpret, tmp_path):
    assert bench_gpu.main(["--out", str(tmp_path), "--n", "3000", "--reps", "1"]) == 0
    _check_fallback(tmp_path, interpreted=True)
