"""Decoding from ``inputs_embeds`` with a KV cache: greedy or temperature/top-p sampling.

The prompt (with spliced memory) is run once through the model, filling a ``DynamicCache``;
each later step feeds only the new token. Batches are left-padded; position ids follow the
attention mask so a padded row decodes exactly as it would alone. Rows stop at an
end-of-sequence token, at a stop string, or at ``max_new_tokens``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

import torch

from clara.memory import position_ids_for


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()  # the text is cut before the first stop string
    seed: int | None = None  # sampling RNG; None uses torch's global generator
    eos_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = field(default=())  # never emitted (memory/slot tokens)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def _cache_kwarg(lm) -> str:
    """transformers 5.x calls the KV cache argument ``cache``; 4.x ``past_key_values``."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def pick_next_token(logits: torch.Tensor, params: SamplingParams, rng: torch.Generator | None) -> torch.Tensor:
    """logits (B, V) -> token ids (B,): argmax, or a sample from the top-p nucleus."""
    if params.banned_ids:
        logits = logits.index_fill(-1, torch.tensor(params.banned_ids, device=logits.device), float("-inf"))
    if params.temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)  # (B, V)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)  # (B, V)
        # drop a token when the tokens ranked above it already cover top_p (the first always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=rng).squeeze(-1)


def _stop_index(text: str, stops: tuple[str, ...]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


@torch.no_grad()
def generate_from_embeds(
    lm,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    decode: Callable[[list[int]], str] | None = None,
) -> list[list[int]]:
    """Decode from a left-padded prompt given as embeddings; returns new token ids per row.

    inputs_embeds (B, T, H), attention_mask (B, T). ``lm`` is a causal LM (``forward`` takes
    ``inputs_embeds``/``input_ids``, ``attention_mask``, ``position_ids``, a cache, and
    ``logits_to_keep``). ``decode`` turns ids into text; it is needed for stop strings.
    """
    from transformers import DynamicCache

    if params.stop and decode is None:
        raise ValueError("stop strings need a decode function")
    B = inputs_embeds.shape[0]
    device = inputs_embeds.device
    rng = None
    if params.seed is not None:
        rng = torch.Generator(device=device).manual_seed(params.seed)
    eos = torch.tensor(params.eos_ids or (-1,), device=device)
    cache_kw = _cache_kwarg(lm)
    cache = DynamicCache(config=lm.config) if "config" in inspect.signature(DynamicCache).parameters else DynamicCache()

    mask = attention_mask.to(device)  # (B, T)
    positions = position_ids_for(mask)  # (B, T)
    out = lm(inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions,
             use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    logits = out.logits[:, -1]  # (B, V)
    next_pos = positions[:, -1:] + 1  # (B, 1)

    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []
    for _ in range(params.max_new_tokens):
        token = pick_next_token(logits, params, rng)  # (B,)
        steps.append(token)
        done |= torch.isin(token, eos)
        if params.stop:
            done |= _rows_hitting_stop(steps, done, params.stop, decode, device)
        if bool(done.all()) or len(steps) == params.max_new_tokens:
            break
        mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)  # (B, T+t)
        out = lm(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                 use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1]  # (B, V)
        next_pos = next_pos + 1
    return _trim_rows(torch.stack(steps, dim=1).tolist(), params)  # (B, t) -> ragged


def _rows_hitting_stop(steps, done, stops, decode, device) -> torch.Tensor:
    """Rows (not yet done) whose decoded text so far contains a stop string."""
    ids = torch.stack(steps, dim=1).tolist()  # (B, t)
    hit = [not d and _stop_index(decode(row), stops) is not None for row, d in zip(ids, done.tolist())]
    return torch.tensor(hit, dtype=torch.bool, device=device)


def _trim_rows(rows: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """Cut each row after its first end-of-sequence token (the eos itself is dropped)."""
    eos = set(params.eos_ids)
    trimmed = []
    for row in rows:
        cut = next((i for i, t in enumerate(row) if t in eos), len(row))
        trimmed.append(row[:cut])
    return trimmed


def finish_text(text: str, stops: tuple[str, ...]) -> str:
    """Cut ``text`` before its first stop string."""
    i = _stop_index(text, stops) if stops else None
    return text if i is None else text[:i]
