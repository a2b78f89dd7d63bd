"""Decoding from ``inputs_embeds`` with a KV cache: greedy or temperature/top-p sampling.

:func:`decode` is the one decoding loop (the RL agent's turns use it too): the prompt (with spliced
memory) is run once through the model, filling a ``DynamicCache``; each later step feeds only the new token. Batches are left-padded; position ids follow the
attention mask so a padded row decodes exactly as it would alone. Rows stop at an
end-of-sequence token, at a stop string, or at ``max_new_tokens``.

Inside :func:`yield_points` (the server's model thread, DESIGN §9) the loop calls back after every
forward and runs a long prompt in chunks, so short work can run between them in the same thread.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from clara.model.memory import position_ids_for


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


def new_kv_cache(lm) -> tuple[str, object]:
    """(the forward's cache argument name, an empty ``DynamicCache``): transformers 5.x calls the argument
    ``cache`` and builds the cache from the config; 4.x calls it ``past_key_values``."""
    from transformers import DynamicCache

    kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
    cache = DynamicCache(config=lm.config) if "config" in inspect.signature(DynamicCache).parameters else DynamicCache()
    return kw, cache


@dataclass(frozen=True)
class Prefix:
    """Keys and values already computed for positions before the prompt, as a cached prefix: per layer
    (key, value), each (B, h_kv, S, d), all S positions attended by every row; the prompt's first real
    token sits at position ``start`` (:mod:`clara.model.kv_memory`)."""

    kv: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    start: int

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[2]

    def cache(self, lm) -> tuple[str, object]:
        """(the forward's cache argument name, a ``DynamicCache`` holding the prefix). Under autocast the
        prefix takes the autocast dtype, as the prompt's own keys will have it."""
        from transformers import DynamicCache

        kw, _ = new_kv_cache(lm)
        device = self.kv[0][0].device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        layers = [(k.to(dtype or k.dtype), v.to(dtype or v.dtype)) for k, v in self.kv]
        if "config" in inspect.signature(DynamicCache).parameters:
            return kw, DynamicCache(ddp_cache_data=layers, config=lm.config)
        return kw, DynamicCache(layers)

    def mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The prompt's mask (B, T) -> the mask over prefix and prompt (B, S + T)."""
        return torch.cat([attention_mask.new_ones(attention_mask.shape[0], self.length), attention_mask], dim=1)

    def positions(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The prompt's position ids (B, T), from ``start`` on each row's first real token."""
        return position_ids_for(attention_mask) + self.start


def prompt_context(lm, attention_mask: torch.Tensor, prefix: Prefix | None, cache: bool = False) -> dict:
    """The forward's keyword arguments for a left-padded prompt (B, T) after ``prefix`` (or none): its
    attention mask (over prefix and prompt), position ids (B, T), and the cache that holds the prefix
    (without one: an empty cache if ``cache``, else none)."""
    if prefix is None:
        context = {"attention_mask": attention_mask, "position_ids": position_ids_for(attention_mask)}
        if cache:
            context.update([new_kv_cache(lm)])
        return context
    kw, cache = prefix.cache(lm)
    return {"attention_mask": prefix.mask(attention_mask), "position_ids": prefix.positions(attention_mask), kw: cache}


_yield_hook = threading.local()


@contextlib.contextmanager
def yield_points(callback: Callable[[], None], prefill_tokens: int = 2048) -> Iterator[None]:
    """In this thread, within the context, :func:`decode` calls ``callback()`` after each forward and runs
    the prompt in chunks of about ``prefill_tokens`` tokens over the whole batch, so no forward is long.

    The server's model thread runs answers this way: retrieval waits for one chunk or one decoding step,
    not a whole answer batch, and a callback that raises stops the batch (a drain deadline). A chunked
    prompt fills the same cache as one forward does (equal up to float rounding); outside this context
    the prompt runs in one forward, as always.
    """
    if prefill_tokens < 1:
        raise ValueError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
    previous = getattr(_yield_hook, "current", None)
    _yield_hook.current = (callback, prefill_tokens)
    try:
        yield
    finally:
        _yield_hook.current = previous


@dataclass
class KvState:
    """A running decode: the cache argument's name and the cache, the mask so far (B, T+i) and the next
    position ids (B, 1)."""

    kw: str
    cache: object
    mask: torch.Tensor
    next_pos: torch.Tensor


@torch.no_grad()
def prefill(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
            prefix: Prefix | None = None) -> tuple[torch.Tensor, KvState]:
    """Run the left-padded prompt once, filling a KV cache -> (the last position's logits (B, V), state).
    Inside :func:`yield_points` it runs in chunks and calls back after each. ``prefix``: keys and values
    that come before the prompt (the cache starts with them)."""
    hook = getattr(_yield_hook, "current", None)  # (callback, prefill tokens per chunk) or None
    mask = attention_mask.to(inputs_embeds.device)  # (B, T)
    context = prompt_context(lm, mask, prefix, cache=True)
    positions, mask = context.pop("position_ids"), context.pop("attention_mask")  # (B, T), (B, S + T)
    ((kw, cache),) = context.items()  # what is left: the cache argument
    before = 0 if prefix is None else prefix.length
    batch, length = positions.shape
    chunk = length if hook is None else max(1, hook[1] // batch)
    for start in range(0, length, chunk):  # one forward unless yield points are on
        end = min(length, start + chunk)
        logits = lm(inputs_embeds=inputs_embeds[:, start:end], attention_mask=mask[:, :before + end],
                    position_ids=positions[:, start:end], use_cache=True, logits_to_keep=1,
                    **{kw: cache}).logits[:, -1]  # (B, V)
        if hook is not None:
            hook[0]()
    return logits, KvState(kw, cache, mask, positions[:, -1:] + 1)


@torch.no_grad()
def decode_step(lm, token: torch.Tensor, state: KvState) -> torch.Tensor:
    """Feed each row's new token (B,) after the cached sequence -> the next logits (B, V); grows ``state``."""
    hook = getattr(_yield_hook, "current", None)
    state.mask = torch.cat([state.mask, state.mask.new_ones(state.mask.shape[0], 1)], dim=1)  # (B, T+i+1)
    logits = lm(input_ids=token[:, None].to(state.mask.device), attention_mask=state.mask, position_ids=state.next_pos,
                use_cache=True, **{state.kw: state.cache}).logits[:, -1]  # (B, V)
    state.next_pos = state.next_pos + 1
    if hook is not None:
        hook[0]()
    return logits


@torch.no_grad()
def decode(lm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           step: Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]], prefix: Prefix | None = None) -> None:
    """The one decoding loop (generation, the RL agent's turns): :func:`prefill` runs the left-padded prompt
    once, filling a KV cache; then each :func:`decode_step` feeds only the new tokens.

    inputs_embeds (B, T, H), attention_mask (B, T). ``step(logits (B, V), i) -> (tokens (B,), done (B,))``
    picks every row's next token and says which rows have finished; the loop ends when all have, or
    after ``max_new_tokens`` steps. Position ids follow the mask, so a padded row decodes as it would alone.
    """
    logits, state = prefill(lm, inputs_embeds, attention_mask, prefix)
    for i in range(max_new_tokens):
        token, done = step(logits, i)  # (B,), (B,)
        if bool(done.all()) or i == max_new_tokens - 1:
            return
        logits = decode_step(lm, token, state)


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


def generate_from_embeds(
    lm,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    params: SamplingParams,
    decode_text: Callable[[list[int]], str] | None = None,
    prefix: Prefix | None = None,
) -> list[list[int]]:
    """Decode from a left-padded prompt given as embeddings; returns new token ids per row.

    inputs_embeds (B, T, H), attention_mask (B, T). ``lm`` is a causal LM (``forward`` takes
    ``inputs_embeds``/``input_ids``, ``attention_mask``, ``position_ids``, a cache, and
    ``logits_to_keep``). ``decode_text`` turns ids into text; it is needed for stop strings. ``prefix``: keys
    and values before the prompt (:class:`Prefix`).
    """
    if params.stop and decode_text is None:
        raise ValueError("stop strings need a decode function")
    device = inputs_embeds.device
    rng = None
    if params.seed is not None:
        rng = torch.Generator(device=device).manual_seed(params.seed)
    eos = torch.tensor(params.eos_ids or (-1,), device=device)
    done = torch.zeros(inputs_embeds.shape[0], dtype=torch.bool, device=device)
    steps: list[torch.Tensor] = []

    def step(logits: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal done
        token = pick_next_token(logits, params, rng)  # (B,)
        steps.append(token)
        done = done | torch.isin(token, eos)
        if params.stop:
            done = done | _rows_hitting_stop(steps, done, params.stop, decode_text, device)
        return token, done

    decode(lm, inputs_embeds, attention_mask, params.max_new_tokens, step, prefix)
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
