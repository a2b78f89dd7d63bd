"""Memory tokens: names, batching with left padding, and splicing memory into embeddings.

Layouts (DESIGN §0, §3), all left-padded so the memory positions of an encoder input are
always the last ``m`` columns and a generator prompt ends where generation starts:

    encoder    [pad … pad | text tokens (≤ chunk_len) | <MEM0> … <MEM{m-1}>]
    generator  [pad … pad | prompt with k·m <MEMSLOT> placeholders | answer tokens]

Spliced memory is rescaled: each memory vector is set to the mean RMS of the base
vocabulary's embedding rows (``embedding_rms``). Compressor states are ~45× larger than
token embeddings (DESIGN §11); unscaled they swamp the prompt. Only the direction of a
memory vector reaches the generator; scores (cosine) are scale-free anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

MEM_TOKEN = "<MEM{}>"
SLOT_TOKEN = "<MEMSLOT>"
# Fences user text inside a prompt string (a private-use character, removed from the user text itself):
# ClaraModel tokenises what it fences as plain text, so no user string becomes a reserved token.
USER_FENCE = "\ue000"


def fence(user_text: str) -> str:
    """``user_text`` fenced for :meth:`ClaraModel._template_ids` (any fence characters in it dropped)."""
    return f"{USER_FENCE}{user_text.replace(USER_FENCE, '')}{USER_FENCE}"


@dataclass(frozen=True)
class MemoryTokens:
    """Token ids of the memory tokens and of the generator's placeholder slot."""

    mem_ids: tuple[int, ...]  # <MEM0> … <MEM{m-1}>
    slot_id: int  # <MEMSLOT>: a generator position whose embedding is replaced by memory

    @property
    def num_mem(self) -> int:
        return len(self.mem_ids)

    @property
    def all_ids(self) -> tuple[int, ...]:
        return (*self.mem_ids, self.slot_id)


def add_memory_tokens(tokenizer, num_mem: int) -> MemoryTokens:
    """Register ``<MEM0>…<MEM{m-1}>`` and ``<MEMSLOT>`` as special tokens (idempotent)."""
    names = [MEM_TOKEN.format(i) for i in range(num_mem)] + [SLOT_TOKEN]
    tokenizer.add_tokens(names, special_tokens=True)  # never split by BPE, stable across versions
    ids = tokenizer.convert_tokens_to_ids(names)
    if len(set(ids)) != len(ids) or any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise RuntimeError(f"tokenizer did not give distinct ids to the memory tokens: {ids}")
    return MemoryTokens(mem_ids=tuple(ids[:-1]), slot_id=ids[-1])


def encoder_row(text_ids: list[int], mem_ids: Sequence[int], interleaved: bool = False) -> list[int]:
    """A compressor input row: the text's ids and the m memory tokens, all after the text (``end``) or
    ``interleaved``, one after each of m equal segments of the text (ceil(n / m) tokens; the last segments
    may be empty), so that each memory token has its own segment just before it."""
    if not interleaved:
        return list(text_ids) + list(mem_ids)
    m = len(mem_ids)
    seg = max(1, -(-len(text_ids) // m))
    row: list[int] = []
    for j, mem in enumerate(mem_ids):
        row += list(text_ids[j * seg : (j + 1) * seg]) + [mem]
    return row


def pad_id_of(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token-id rows -> (input_ids [B, T], attention_mask [B, T])."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


def embedding_rms(embed_weight: torch.Tensor, num_rows: int | None = None) -> float:
    """Mean over vocabulary rows of each row's RMS: the scale spliced memory is set to."""
    rows = embed_weight[:num_rows] if num_rows else embed_weight  # (V, H)
    return rows.detach().float().pow(2).mean(-1).sqrt().mean().item()


def rescale_to_rms(x: torch.Tensor, target_rms: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale each vector along the last dim to RMS ``target_rms`` (differentiable)."""
    rms = x.pow(2).mean(-1, keepdim=True).add(eps).sqrt()  # (..., 1)
    return x * (target_rms / rms)


def splice_memory(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, slot_id: int, memory: torch.Tensor
) -> torch.Tensor:
    """Replace the ``slot_id`` positions of each row, in order, with that row's memory vectors.

    inputs_embeds (B, T, H), input_ids (B, T), memory (B, S, H) where every row holds exactly
    S slots. Out-of-place, so gradients reach ``memory`` (and the embeddings elsewhere).
    """
    B, S, H = memory.shape
    is_slot = input_ids == slot_id  # (B, T)
    counts = is_slot.sum(-1)
    if not bool((counts == S).all()):
        raise ValueError(f"each row must hold {S} memory slots, found {counts.tolist()}")
    rows, cols = is_slot.nonzero(as_tuple=True)  # row-major: each row's slots in order
    values = memory.reshape(B * S, H).to(inputs_embeds.dtype)  # (B·S, H)
    return inputs_embeds.index_put((rows, cols), values)  # (B, T, H)


# ---------------------------------------------------------------------------- splice-side normalisation
#
# Last-layer states of every document share a large common direction (on SmolLM2 only ~6% of the
# memory's energy differs between documents, and 5 of 576 dimensions hold half of it), so after
# the RMS rescale the generator sees nearly the same vectors whatever the document. ``center``
# subtracts a running mean per memory position; ``standardize`` also divides by a running
# per-dimension std. Statistics: ``stats`` (2, m, H) = [mean, variance]; variance < 0 marks a
# position "not yet seen a batch" (normalisation is then the identity there). ``standardize_first``
# positions (selected slots, clara.model.select) are standardised whatever the mode.

MEMORY_NORMS = ("none", "center", "standardize")
STATS_MOMENTUM = 0.95  # running stats follow the compressor as it trains (~20-step memory)


def init_memory_stats(num_mem: int, hidden: int) -> torch.Tensor:
    stats = torch.zeros(2, num_mem, hidden)  # (2, m, H)
    stats[1] = -1.0  # unset marker
    return stats


def memory_stats_ready(stats: torch.Tensor) -> bool:
    """Whether any position has statistics."""
    return bool((stats[1, :, 0] >= 0).any())


def unset_memory_stats(stats: torch.Tensor, positions: slice) -> None:
    """Mark ``positions`` as not yet seen (their next training batch sets them), e.g. when a position
    that held a memory token's state now holds a selected text state."""
    with torch.no_grad():
        stats[0, positions] = 0.0
        stats[1, positions] = -1.0


@torch.no_grad()
def update_memory_stats(stats: torch.Tensor, memory: torch.Tensor, momentum: float = STATS_MOMENTUM) -> None:
    """Fold a batch of memory (..., m, H) into the running (2, m, H) stats in place; the first batch sets them."""
    m, H = stats.shape[1:]
    x = memory.detach().to(stats.dtype).reshape(-1, m, H)  # (N, m, H)
    mean, var = x.mean(0), x.var(0, unbiased=False)  # (m, H) each; var 0 for N = 1
    fresh = (stats[1, :, :1] < 0).to(stats.dtype)  # (m, 1): positions not yet seen take the batch as it is
    weight = fresh + (1 - fresh) * (1 - momentum)
    stats[0].lerp_(mean, weight)
    stats[1].lerp_(var, weight)


def normalize_memory(memory: torch.Tensor, stats: torch.Tensor | None, mode: str, eps: float = 1e-4,
                     standardize_first: int = 0) -> torch.Tensor:
    """memory (..., m, H) -> same shape, centred (``center``) or standardised per position and dimension;
    the first ``standardize_first`` positions standardised in any mode but ``none``."""
    if mode == "none" or stats is None or not memory_stats_ready(stats):
        return memory
    if mode not in MEMORY_NORMS:
        raise ValueError(f"memory norm must be one of {MEMORY_NORMS}, got {mode!r}")
    stats = stats.detach().to(memory.dtype)
    ready = stats[1, :, :1] >= 0  # (m, 1)
    out = memory - stats[0]  # (..., m, H)
    scale = stats[1].clamp(min=0).add(eps).sqrt()  # (m, H)
    if mode == "standardize":
        out = out / scale
    elif standardize_first:
        p = standardize_first
        out = torch.cat([out[..., :p, :] / scale[:p], out[..., p:, :]], dim=-2)
    return torch.where(ready, out, memory)
