"""Triton cosine scores (forward + hand-written backward) against the torch reference."""

import pytest
import torch

from clara.kernels.dispatch import cosine_scores
from clara.kernels.reference import cosine_scores_reference
from clara.kernels import triton_scores

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(b, n, d, dtype, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    docs = torch.randn(b, n, d, generator=g).to(device=device, dtype=dtype).requires_grad_()
    return q, docs


def _check_against_reference(q, docs, kc, **kw):
    s = cosine_scores(q, docs, backend="triton", **kw)
    ref = cosine_scores_reference(q, docs)
    assert s.dtype == torch.float32 and s.shape == ref.shape
    torch.testing.assert_close(s, ref, atol=kc.SCORE_ATOL, rtol=0)
    grad_s = torch.randn_like(ref)
    gq, gd = torch.autograd.grad(s, (q, docs), grad_s)
    rq, rd = torch.autograd.grad(ref, (q, docs), grad_s)
    assert gq.dtype == q.dtype and gd.dtype == docs.dtype
    kc.assert_close_scaled(gq, rq, kc.GRAD_RTOL[q.dtype])
    kc.assert_close_scaled(gd, rd, kc.GRAD_RTOL[q.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d", [(3, 13, 77), (1, 1, 5), (2, 37, 600)])
def test_matches_reference_irregular_shapes(interpret, kc, dtype, b, n, d):
    _check_against_reference(*_inputs(b, n, d, dtype), kc)


def test_split_d_partials(interpret, kc, monkeypatch):
    # On a GPU, D is split across programs; pretend the device is wide to cover that path.
    monkeypatch.setattr(triton_scores, "_device_programs", lambda device: 64)
    _check_against_reference(*_inputs(2, 5, 1100, torch.float32), kc)


def test_flattened_memory_width_64k(interpret, kc):
    _check_against_reference(*_inputs(1, 3, 65536, torch.bfloat16), kc)


def test_non_contiguous_inputs_are_copied(interpret, kc):
    q, docs = _inputs(4, 9, 33, torch.float32)
    q_t = q.detach().t().contiguous().t().requires_grad_()  # same values, column-major
    docs_t = docs.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
    assert not q_t.is_contiguous() and not docs_t.is_contiguous()
    _check_against_reference(q_t, docs_t, kc)


def test_zero_vectors_score_zero_with_finite_gradients(interpret):
    q, docs = _inputs(2, 4, 19, torch.float32)
    with torch.no_grad():
        docs[0, 1] = 0
        q[1] = 0
    s = cosine_scores(q, docs, backend="triton")
    assert s[0, 1] == 0 and torch.all(s[1] == 0)
    s.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(docs.grad).all()
    # a zero query still steers the documents' gradient toward it: d/dd (q.d/(eps|d|)) = q/(eps|d|) = 0
    assert torch.all(docs.grad[1] == 0)


def test_backends_agree(interpret):
    q, docs = _inputs(2, 7, 31, torch.float32)
    torch.testing.assert_close(
        cosine_scores(q, docs, backend="triton"), cosine_scores(q, docs, backend="torch"), atol=1e-5, rtol=0
    )
    assert cosine_scores(q, docs).grad_fn is not None  # auto on CPU: torch reference, differentiable


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,d", [(8, 20, 65536), (5, 301, 1000), (3, 13, 77)])
def test_compiled_matches_reference(cuda, kc, dtype, b, n, d):
    _check_against_reference(*_inputs(b, n, d, dtype, device=cuda), kc)
