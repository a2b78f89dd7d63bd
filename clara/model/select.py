"""Memory slots that select text states (issue 28, lever f).

The compressor's memory vectors never hold an exact fact such as a year: a probe reads the year's last
digit from the compressor's state *at that digit* in the text (0.98) and not from its memory. A memory slot
that holds that state, standardised per dimension, is read by the generator at 0.88 EM on unseen documents
(``clara.eval.oracle_slot``). A selector makes such slots without being told where the fact is: each of
its ``p`` slots is an attention pooling over the compressor's final-norm text states,

    z_t   = (h_t - mean) / std                  per dimension, over text tokens (running statistics)
    a_jt  = softmax_t( q_j · W_k z_t / sqrt(d) ) over each row's text tokens
    slot_j = sum_t a_jt h_t                     (B, p, H)

with learned queries ``q`` (p, d) and key projection ``W_k`` (H -> d). ``ClaraModel`` puts the slots in the
first p memory positions and standardises them per position at the splice (``normalize_memory``'s
``standardize_first``), as the oracle was; the RMS rescale still applies. Learned from the generator's loss
alone, the selector did not find the year (its attention on the year's last digit stayed at 0.01); stage 1
also trains it to cover the trained answers' last tokens (``scp.select_weight``, :func:`span_loss`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clara.modes import SelectDetach
from clara.model.memory import STATS_MOMENTUM, memory_stats_ready, normalize_memory, update_memory_stats

KEY_DIM = 64
# The selector's parameters are stored divided by GAIN and used times GAIN, so that the one optimiser of a
# stage moves them GAIN times faster than the LoRA weights (Adam's step is ~lr per parameter whatever the
# gradient's scale): at SCP's lr 3e-4 the span term fell 0.08 in 10 steps without it.
GAIN = 30.0


class MemorySelector(nn.Module):
    """``p`` attention-pooling slots over text states (B, T, H) -> (B, p, H) pooled states, as they are (the
    splice standardises them); the keys read the states standardised by the selector's own statistics."""

    def __init__(self, hidden: int, slots: int, key_dim: int = KEY_DIM, seed: int = 0,
                 detach: SelectDetach | str = SelectDetach.NONE):
        super().__init__()
        # which reads of the text states carry no gradient (clara.modes.SelectDetach): keys, values, all (keys and
        # values), or base (the values are the bare backbone's states, given to forward)
        self.detach = SelectDetach(detach)
        gen = torch.Generator().manual_seed(seed)
        self.keys = nn.Parameter(torch.randn(hidden, key_dim, generator=gen) / math.sqrt(hidden) / GAIN)  # (H, d)
        # small queries: near-uniform attention at first (a random query of unit scale lands on one token)
        self.queries = nn.Parameter(torch.randn(slots, key_dim, generator=gen) * 1e-2 / GAIN)  # (p, d)
        stats = torch.zeros(2, hidden)  # [mean, variance] over text tokens; variance < 0: unset
        stats[1] = -1.0
        self.stats = nn.Parameter(stats, requires_grad=False)

    @property
    def num_slots(self) -> int:
        return self.queries.shape[0]

    def update_stats(self, states: torch.Tensor, mask: torch.Tensor, momentum: float = STATS_MOMENTUM) -> None:
        """Fold the text tokens of a batch (states (B, T, H), mask (B, T)) into the running statistics (the
        memory stats' running average, as one position)."""
        x = states.detach()[mask.bool()]  # (n, H)
        if len(x) >= 2:
            update_memory_stats(self.stats.data[:, None], x[:, None], momentum)

    def standardize(self, states: torch.Tensor) -> torch.Tensor:
        if not memory_stats_ready(self.stats[:, None]):
            raise RuntimeError("MemorySelector has no statistics yet: call update_stats on text states first")
        return normalize_memory(states[..., None, :], self.stats[:, None], "standardize")[..., 0, :]

    def forward(self, states: torch.Tensor, mask: torch.Tensor,
                values: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """states (B, T, H), mask (B, T) of text tokens -> slots (B, p, H), attention (B, p, T). In training
        the text tokens first update the statistics the keys are standardised with. ``values`` (B, T, H), for
        ``detach="base"``: the states the slots pool instead of ``states`` (never with a gradient)."""
        if (values is not None) != (self.detach == SelectDetach.BASE):
            raise ValueError(f"MemorySelector(detach={self.detach.value!r}) "
                             f"{'needs' if values is None else 'takes no'} separate values")
        if self.training and torch.is_grad_enabled() or not memory_stats_ready(self.stats[:, None]):
            self.update_stats(states, mask)
        keys_detached = self.detach in (SelectDetach.KEYS, SelectDetach.ALL)
        z = self.standardize(states.detach() if keys_detached else states)  # (B, T, H)
        keys = z @ (self.keys * GAIN).to(z.dtype)  # (B, T, d)
        scores = torch.einsum("pd,btd->bpt", (self.queries * GAIN).to(z.dtype), keys) / math.sqrt(keys.shape[-1])
        scores = scores.masked_fill(~mask.bool()[:, None, :], float("-inf"))  # (B, p, T)
        attn = scores.softmax(-1)
        if values is None:
            values = states.detach() if self.detach in (SelectDetach.ALL, SelectDetach.VALUES) else states
        else:
            values = values.detach().to(attn.dtype)
        return attn @ values, attn  # (B, p, H), (B, p, T)


def answer_token_index(model, text: str, answers) -> list[int]:
    """Token index (as the compressor reads ``text``, below its chunk_len) of the last token of each answer's
    first occurrence in ``text``; answers not found (or cut off) are skipped. ``a; b`` answers count as a and b."""
    parts = [a.strip() for ans in answers for a in ans.split(";") if a.strip()]
    ends = [text.find(a) + len(a) - 1 for a in parts if a in text]
    tokens, _ = model.char_tokens(text, ends)
    return list(dict.fromkeys(j for j in tokens if j is not None and j < model.chunk_len))


def span_loss(attention: torch.Tensor, targets, eps: float = 1e-6, one_slot: bool = False) -> torch.Tensor:
    """attention (B, p, T) over each row's text tokens in order; ``targets[b]``: token indices of row b to
    cover -> mean over targets of -log(min(1, the attention all p slots put on the target)), or with
    ``one_slot`` of the largest attention one slot puts on it. 0 with none."""
    cover = attention.amax(1) if one_slot else attention.sum(1)  # (B, T)
    picked = [cover[b, j] for b, js in enumerate(targets) for j in js]
    if not picked:
        return attention.sum() * 0.0
    return -torch.stack(picked).clamp(max=1.0).add(eps).log().mean()
