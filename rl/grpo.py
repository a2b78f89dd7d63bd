"""GRPO objective for the search agent (DESIGN §8): advantages, clipped ratio, k3 KL, DGPO.

    adv, zero_var = group_advantages(rewards, group_size=G)              # (B,), (B/G,)
    loss, stats = policy_loss(logp, old_logp, adv, mask, ref_logp=ref, beta=0.01,
                              mode=Aggregation.DAPO)

Conventions (all tested against hand-computed values in tests/rl/test_grpo.py):

- Rollouts of one question are contiguous: rows ``g·G … g·G+G-1`` form group ``g``.
- ``std_g`` is the *population* standard deviation (divide by G, not G-1), so a group of two
  rewards {0, 1} gives advantages ±1/(0.5+ε). A group whose rewards are all equal has
  ``std_g = 0`` and advantage exactly 0 everywhere: it carries no policy-gradient signal and is
  counted as a zero-variance group.
- Token tensors are (B, L) over positions; ``mask`` is 1 only on tokens the policy *generated*.
  Prompt tokens, ``<information>`` markup and spliced memory positions have mask 0 and the loss
  does not depend on their log-probs at all (multiplied out, not just down-weighted).
- KL to the reference uses the k3 estimator on the sampled tokens:
  ``k3 = exp(ref − logp) − (ref − logp) − 1 ≥ 0``, unbiased for KL(π‖π_ref) under samples of π.
- DGPO's teacher term uses the same k3 estimator with the teacher's log-probs of the sampled
  tokens: the rollouts are sampled from π, so E_π[k3] = KL(π‖π_teacher) exactly as written in
  the design, at the cost of one log-prob per token instead of a full-vocabulary distribution.
  ``full_kl`` gives the full-distribution KL for callers that keep both logit tensors.
"""

from __future__ import annotations

from typing import Any

import torch

from clara.config import Aggregation  # grpo | dapo | dr_grpo, documented in clara.config

__all__ = ["Aggregation", "aggregate", "clipped_surrogate", "full_kl", "group_advantages", "k3_kl", "policy_loss"]


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards (B,) -> advantages (B,) = (r − mean_g) / (std_g + eps) with population std; zero-variance flags (B/G,)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be (B,) with B a multiple of group_size={group_size}, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)  # (B/G, G)
    mean = r.mean(1, keepdim=True)  # (B/G, 1)
    std = r.std(1, unbiased=False, keepdim=True)  # (B/G, 1), population std
    zero_var = (r == r[:, :1]).all(1)  # (B/G,) exact equality: no float noise counts as signal
    adv = (r - mean) / (std + eps)  # (B/G, G)
    adv = adv.masked_fill(zero_var[:, None], 0.0)
    return adv.view(-1), zero_var


def k3_kl(logp: torch.Tensor, other_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π‖π_other) from the sampled tokens' log-probs (same shape)."""
    log_ratio = other_logp - logp
    return torch.exp(log_ratio) - log_ratio - 1.0


def full_kl(logits: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """Exact per-position KL(p‖q) over the vocabulary: logits (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), -1)
    logq = torch.log_softmax(other_logits.float(), -1)
    return (logp.exp() * (logp - logq)).sum(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: Aggregation | str, max_len: int | None = None) -> torch.Tensor:
    """values, mask (B, L) -> scalar under ``mode``; only mask=1 positions contribute.

    A row with no generated token counts as a sequence with loss 0 under ``grpo`` (its mean is
    taken as 0) so the divisor is always B, matching ``dr_grpo``. ``max_len`` (dr_grpo) is the
    constant generation budget; it defaults to L.
    """
    mode = Aggregation(mode)
    mask = mask.to(values.dtype)
    masked = values * mask  # (B, L); zero where mask = 0, and its gradient there is zero too
    if mode == Aggregation.GRPO:
        per_seq = masked.sum(1) / mask.sum(1).clamp(min=1.0)  # (B,)
        return per_seq.mean()
    if mode == Aggregation.DAPO:
        return masked.sum() / mask.sum().clamp(min=1.0)
    denom = values.shape[0] * (max_len if max_len is not None else values.shape[1])
    return masked.sum() / denom


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO/GRPO surrogate loss −min(ρA, clip(ρ, 1−ε, 1+ε)A) and whether it was clipped; (B, L) each."""
    ratio = torch.exp(logp - old_logp)  # (B, L)
    a = adv[:, None].to(ratio.dtype)  # (B, 1): one advantage per rollout, broadcast to its tokens
    unclipped = ratio * a
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * a
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    ref_logp: torch.Tensor | None = None,
    beta: float = 0.0,
    teacher_logp: torch.Tensor | None = None,
    teacher_rows: torch.Tensor | None = None,
    beta_teacher: float = 0.0,
    mode: Aggregation | str = Aggregation.GRPO,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The RL loss on generated tokens.

    logp (B, L) with gradient; old_logp, ref_logp, teacher_logp (B, L) detached; adv (B,);
    mask (B, L) 1 on generated tokens; teacher_rows (B,) bool: rollouts under the DGPO threshold.
    Per token: surrogate + β·k3(π, π_ref) + β_t·[row failed]·k3(π, π_teacher), aggregated by ``mode``.
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape or adv.shape != logp.shape[:1]:
        raise ValueError(f"shape mismatch: logp {tuple(logp.shape)}, old {tuple(old_logp.shape)}, "
                         f"mask {tuple(mask.shape)}, adv {tuple(adv.shape)}")
    per_token, was_clipped = clipped_surrogate(logp, old_logp.detach(), adv, clip_eps)  # (B, L)
    stats: dict[str, Any] = {}
    fmask = mask.to(logp.dtype)
    n_tok = fmask.sum().clamp(min=1.0)
    stats["clip_frac"] = float((was_clipped.to(logp.dtype) * fmask).sum() / n_tok)
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp.detach())  # (B, L)
        stats["kl"] = float((kl.detach() * fmask).sum() / n_tok)
        if beta:
            per_token = per_token + beta * kl
    if teacher_logp is not None and teacher_rows is not None and beta_teacher:
        tkl = k3_kl(logp, teacher_logp.detach()) * teacher_rows[:, None].to(logp.dtype)  # (B, L)
        t_mask = fmask * teacher_rows[:, None].to(logp.dtype)
        stats["teacher_kl"] = float((tkl.detach() * t_mask).sum() / t_mask.sum().clamp(min=1.0))
        per_token = per_token + beta_teacher * tkl
    return aggregate(per_token, mask, mode, max_len), stats
