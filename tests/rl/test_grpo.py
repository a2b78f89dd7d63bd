"""GRPO objective against hand-computed values (joint/grpo.py)."""

import math

import pytest
import torch

from clara.rl.grpo import Aggregation, aggregate, full_kl, group_advantages, k3_kl, policy_loss


def test_group_advantages_population_std_and_zero_variance_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv, zero_var = group_advantages(rewards, group_size=4, eps=0.0)
    std = math.sqrt(0.25 * 0.75)  # population std of {1, 0, 0, 0}
    expected = [0.75 / std, -0.25 / std, -0.25 / std, -0.25 / std, 0.0, 0.0, 0.0, 0.0]
    assert adv.tolist() == pytest.approx(expected, abs=1e-6)
    assert zero_var.tolist() == [False, True]
    adv2, _ = group_advantages(torch.tensor([2.0, 0.0]), group_size=2, eps=1e-6)
    assert adv2.tolist() == pytest.approx([1 / (1 + 1e-6), -1 / (1 + 1e-6)], abs=1e-7)
    with pytest.raises(ValueError):
        group_advantages(torch.ones(5), group_size=2)


def _two_rows():
    # row 0: two generated tokens; row 1: one; logp = old_logp -> ratio 1, loss per token = -A
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logp = torch.zeros(2, 3)
    return logp, mask, torch.tensor([2.0, -1.0])


@pytest.mark.parametrize("mode,max_len,expected", [
    (Aggregation.GRPO, None, (-2.0 + 1.0) / 2),         # per-sequence means -2 and 1, then mean
    (Aggregation.DAPO, None, (-2 - 2 + 1) / 3),          # token sum / 3 tokens
    (Aggregation.DR_GRPO, 4, (-2 - 2 + 1) / (2 * 4)),   # token sum / (2 sequences x max_len 4)
    (Aggregation.DR_GRPO, None, (-2 - 2 + 1) / (2 * 3)),
])
def test_aggregation_modes(mode, max_len, expected):
    logp, mask, adv = _two_rows()
    loss, _ = policy_loss(logp, logp.clone(), adv, mask, mode=mode, max_len=max_len)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    assert Aggregation(mode.value) is mode


def test_clipped_ratio_eps_0_2():
    old = torch.zeros(4, 1)
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))  # ratios 1.5, 1.5, 0.5, 0.5
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    mask = torch.ones(4, 1)
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2, mode="dapo")
    # -min(rA, clip(r)A): -1.2 (clipped), +1.5, -0.5, +0.8 (clipped)
    assert float(loss) == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4, abs=1e-6)
    assert stats["clip_frac"] == pytest.approx(0.5)


def test_k3_kl_and_beta_term():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    expected = 0.5 - math.log(0.5) - 1.0  # r = ref/p = 0.5: r - log r - 1
    assert float(k3_kl(logp, ref)) == pytest.approx(expected, abs=1e-6)
    assert float(k3_kl(logp, logp)) == 0.0
    mask = torch.ones(1, 1)
    loss, stats = policy_loss(logp[None], logp[None], torch.zeros(1), mask, ref_logp=ref[None], beta=0.1)
    assert float(loss) == pytest.approx(0.1 * expected, abs=1e-6)
    assert stats["kl"] == pytest.approx(expected, abs=1e-6)


def test_full_kl_matches_definition():
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    expected = float((p * (p / q).log()).sum())
    assert float(full_kl(p.log(), q.log())) == pytest.approx(expected, abs=1e-6)


def test_dgpo_teacher_kl_only_on_failed_rows():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    teacher = torch.log(torch.tensor([[0.25, 0.5], [0.25, 0.25]]))
    mask = torch.ones(2, 2)
    failed = torch.tensor([True, False])
    loss, stats = policy_loss(logp, logp.clone(), torch.zeros(2), mask, teacher_logp=teacher,
                              teacher_rows=failed, beta_teacher=0.5, mode="dapo")
    k = 0.5 - math.log(0.5) - 1.0  # row 0, token 0; token 1 agrees with the teacher (0); row 1 not failed
    assert float(loss) == pytest.approx(0.5 * k / 4, abs=1e-6)
    assert stats["teacher_kl"] == pytest.approx(k / 2, abs=1e-6)


@pytest.mark.parametrize("mode", list(Aggregation))
def test_masked_positions_get_exactly_zero_gradient(mode):
    g = torch.Generator().manual_seed(0)
    logp = (-torch.rand(3, 5, generator=g)).requires_grad_()
    old = logp.detach() + 0.1 * torch.randn(3, 5, generator=g)
    ref = logp.detach() - 0.2
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 1, 0]])  # prompt / memory / pad = 0
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -0.5, 0.3]), mask, ref_logp=ref, beta=0.05,
                          teacher_logp=ref, teacher_rows=torch.tensor([True, True, False]), beta_teacher=0.1,
                          mode=mode)
    loss.backward()
    assert bool((logp.grad[mask == 0] == 0).all())
    assert bool((logp.grad[mask == 1] != 0).all())


def test_aggregate_ignores_non_finite_values_only_if_masked_values_finite():
    # masked positions must hold finite values (rl fills pads with 0); the mask multiplies them out
    values = torch.tensor([[5.0, 1.0], [7.0, 3.0]])
    assert float(aggregate(values, torch.tensor([[0, 1], [0, 1]]), "grpo")) == pytest.approx(2.0)
