"""Straight-through top-k (DESIGN §5): forward is the hard pick, gradient is the soft one."""

import pytest
import torch

from clara.kernels.straight_through import StraightThroughTopK, select_topk, straight_through_topk
from clara.kernels.straight_through import soft_and_hard_picks


def _soft_relaxation(scores, picks, tau):
    """Independent restatement of the masked softmax given the hard picks [B, k]."""
    taken = torch.zeros_like(scores)
    softs = []
    for j in range(picks.shape[1]):
        softs.append(torch.softmax((scores + torch.log(1 - taken + 1e-8)) / tau, dim=-1))
        taken = taken + torch.nn.functional.one_hot(picks[:, j], scores.shape[1]).to(scores.dtype)
    return torch.stack(softs, 1)  # (B, k, N)


@pytest.mark.parametrize("k", [1, 3, 11])
def test_forward_is_exactly_the_hard_topk(k):
    scores = torch.randn(4, 11, generator=torch.Generator().manual_seed(k))
    z, indices = straight_through_topk(scores, k, temperature=0.02)
    assert z.shape == (4, k, 11) and indices.shape == (4, k)
    assert torch.equal(indices, scores.topk(k, dim=1).indices)
    one_hot = torch.nn.functional.one_hot(indices, 11).float()
    assert torch.equal(z, one_hot)  # bitwise: no 0.99999994 from the straight-through trick


@pytest.mark.parametrize("tau", [0.02, 0.5])
def test_gradient_is_the_soft_relaxation_gradient(tau):
    scores = torch.randn(3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.1
    weights = torch.randn(3, 4, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    s = scores.clone().requires_grad_()
    z, picks = straight_through_topk(s, 4, temperature=tau)
    (grad_z,) = torch.autograd.grad((z * weights).sum(), s)

    def loss(x):
        return (_soft_relaxation(x, picks, tau) * weights).sum()

    (grad_soft,) = torch.autograd.grad(loss(s), s)
    torch.testing.assert_close(grad_z, grad_soft, atol=1e-12, rtol=0)
    # and against central finite differences of the soft relaxation
    h = 1e-6
    numeric = torch.zeros_like(scores)
    for idx in torch.cartesian_prod(torch.arange(3), torch.arange(9)):
        e = torch.zeros_like(scores)
        e[idx[0], idx[1]] = h
        numeric[idx[0], idx[1]] = (loss(scores + e) - loss(scores - e)) / (2 * h)
    torch.testing.assert_close(grad_z, numeric, atol=1e-6 * max(1.0, numeric.abs().max().item()), rtol=1e-5)
    assert grad_z.abs().max() > 0  # a gradient actually flows


def test_taken_candidates_get_no_soft_mass():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    z, indices = straight_through_topk(scores.requires_grad_(), 2, temperature=0.02)
    assert indices.tolist() == [[0, 2]]
    soft, hard, _ = soft_and_hard_picks(scores.detach(), 2, 0.02)
    assert soft[0, 1, 0] < 1e-30  # the first pick is masked out of the second softmax
    assert soft[0, 1, 2] > 0.99 and torch.equal(hard.sum(1), torch.tensor([[1.0, 0.0, 1.0, 0.0]]))


def test_select_topk_triton_matches_torch_with_gradients(interpret):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 45, generator=g, dtype=torch.float64).float()
    docs = torch.randn(2, 7, 45, generator=g)
    outs = {}
    for backend in ("triton", "torch"):
        qq, dd = q.clone().requires_grad_(), docs.clone().requires_grad_()
        z, idx, s = StraightThroughTopK(3, temperature=0.1, backend=backend)(qq, dd)
        selected = torch.einsum("bkn,bnd->bkd", z, dd)  # (B, k, D): forward = hard pick
        selected.square().sum().backward()
        outs[backend] = (z, idx, s, qq.grad, dd.grad, selected)
    for a, b in zip(outs["triton"], outs["torch"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    z, idx, _, gq, _, selected = outs["triton"]
    assert torch.equal(selected, docs.gather(1, idx[..., None].expand(-1, -1, 45)))
    assert gq.abs().max() > 0  # the query gets a signal through the soft picks


def test_select_topk_function_shapes():
    z, idx, s = select_topk(torch.randn(2, 8), torch.randn(2, 5, 8), 5)
    assert z.shape == (2, 5, 5) and idx.shape == (2, 5) and s.shape == (2, 5)
