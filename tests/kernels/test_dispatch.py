"""Backend choice and the clear errors users get for bad kernel input."""

import pytest
import torch

from clara.errors import ClaraError
from clara.kernels.dispatch import Backend, KernelInputError, cosine_scores, cosine_topk
from clara.kernels.straight_through import straight_through_topk


def test_errors_are_clara_and_value_errors():
    assert issubclass(KernelInputError, ClaraError) and issubclass(KernelInputError, ValueError)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 8), 6), r"k=6 exceeds .* N=5"),
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 8), 0), r"k=0 must be at least 1"),
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 9), 1), r"dimension mismatch.*D=8.*D=9"),
        (lambda: cosine_topk(torch.randn(2, 8).double(), torch.randn(5, 8), 1), r"q has dtype torch.float64"),
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 8, device="meta"), 1), r"different devices"),
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 8), 1, inv_norms=torch.ones(4)), r"inv_norms"),
        (lambda: cosine_topk(torch.randn(2, 8), torch.randn(5, 8), 1, backend="cuda"), r"backend='cuda' is unknown"),
        (lambda: cosine_scores(torch.randn(2, 8), torch.randn(2, 3, 7)), r"expected \[2, N, 8\]"),
        (lambda: cosine_scores(torch.randn(2, 8), torch.randn(3, 8)), r"q \[B, D\] and docs \[B, N, D\]"),
        (lambda: cosine_scores(torch.randn(2, 8), torch.randn(2, 3, 8).half()), r"cast one to match"),
        (lambda: cosine_scores(torch.randint(0, 3, (2, 8)), torch.randn(2, 3, 8)), r"dtype torch.int64"),
        (lambda: cosine_scores(torch.randn(2, 8), torch.randn(2, 3, 8), backend="faiss"), r"only serves cosine_topk"),
        (lambda: cosine_scores(torch.randn(2, 8), torch.randn(2, 3, 8), backend="cpu"), r"only serves cosine_topk"),
        (lambda: straight_through_topk(torch.randn(2, 4), 5), r"k=5 exceeds"),
        (lambda: straight_through_topk(torch.randn(2, 4), 2, temperature=0.0), r"temperature=0.0 must be > 0"),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(KernelInputError, match=match):
        call()


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    from clara.kernels import dispatch

    monkeypatch.setattr(dispatch, "triton_interpreting", lambda: False)
    with pytest.raises(KernelInputError, match="needs CUDA tensors"):
        cosine_topk(torch.randn(2, 8), torch.randn(5, 8), 1, backend=Backend.TRITON)


def test_auto_resolution():
    from clara.kernels.dispatch import resolve_backend

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend("auto", cuda, topk=True) is Backend.TRITON
    assert resolve_backend("auto", cpu, topk=False) is Backend.TORCH
    assert resolve_backend(Backend.AUTO, cpu, topk=True) is Backend.CPU
    assert resolve_backend("faiss", cpu, topk=True) is Backend.FAISS
    assert resolve_backend("torch", cpu, topk=True) is Backend.TORCH
    with pytest.raises(KernelInputError, match="backend='cpu' runs on CPU tensors"):
        resolve_backend("cpu", cuda, topk=True)


def test_bench_runs_and_reports(tmp_path, capsys):
    import json

    from clara.kernels import bench

    out = tmp_path / "bench.json"
    assert bench.main(["--n", "3000", "--d", "32", "--scores-shape", "2,5,64", "--reps", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    backends = {(r["kernel"].split()[0], r["backend"]) for r in rows}
    assert ("cosine_topk", "torch") in backends and ("cosine_scores", "torch") in backends
    assert all(r["median_ms"] > 0 and r["GB/s"] > 0 for r in rows)
    assert "GB/s" in capsys.readouterr().out
