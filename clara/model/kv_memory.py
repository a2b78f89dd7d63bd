"""Memory read as every layer's keys and values (``model.memory_readout: kv``, issue 28's lever b).

Besides its last-layer state, each memory token leaves a key and a value at every layer of the
compressor. With ``kv`` readout the generator attends to those directly, as a cached prefix before its
prompt (as in 500xCompressor and gist tokens), instead of reading the last-layer states spliced in as
input embeddings. Retrieval still scores the last-layer states.

A document's memory stays one vector per memory slot, (m, W) with W = H + L·2·h_kv·d: the last-layer
state first (``[..., :H]``, what retrieval and SCP's alignment term read), then each layer's key and
value of that slot. So memory blocks (B, k, m, W) pass through every caller unchanged.

Keys carry their rotary position. The compressor places each document so that its memory tokens sit
at positions chunk_len … chunk_len+m-1 whatever the document's length (attention scores depend only on
distances, so the states equal those of the plain layout), and the generator's prompt starts at
position chunk_len + m. The k memories of one prompt all sit at those positions, side by side.

Bank bytes per document: m·W values instead of m·H (SmolLM2-135M, L = 30, h_kv = 3, d = 64:
W = 576 + 11,520, 21× the states).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clara.errors import ConfigError
from clara.model.generation import Prefix


@dataclass(frozen=True)
class KvShape:
    """The backbone's key/value layout: layers, key-value heads, head size."""

    layers: int
    kv_heads: int
    head_dim: int

    @property
    def width(self) -> int:
        """Values per memory slot: a key and a value at every layer."""
        return self.layers * 2 * self.kv_heads * self.head_dim


def kv_shape(config) -> KvShape:
    """The key/value layout of a causal LM's config."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return KvShape(cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", None) or heads, head_dim)


def fixed_end_positions(attention_mask: torch.Tensor, end: int) -> torch.Tensor:
    """Position ids (B, T) for left-padded rows whose last token sits at ``end - 1`` on every row
    (padding gets 0; it is masked). ``end`` must be at least T."""
    T = attention_mask.shape[1]
    if T > end:
        raise ValueError(f"{T} columns do not fit before position {end}")
    positions = torch.arange(T, device=attention_mask.device) + (end - T)  # (T,)
    return (positions * attention_mask.long()).long()  # (B, T)


def pack_kv(cache, columns: torch.Tensor) -> torch.Tensor:
    """A filled ``DynamicCache`` -> (B, m, L·2·h_kv·d): each layer's key and value at each row's m memory
    ``columns`` (B, m)."""
    parts = []
    for layer in cache.layers:
        for t in (layer.keys, layer.values):  # (B, h_kv, T, d)
            B, h, _, d = t.shape
            picked = t.gather(2, columns[:, None, :, None].expand(B, h, columns.shape[1], d))  # (B, h_kv, m, d)
            parts.append(picked.transpose(1, 2).flatten(2))  # (B, m, h_kv·d)
    return torch.cat(parts, dim=-1)


def prefix_from_memory(kv_memory: torch.Tensor, shape: KvShape, start: int) -> Prefix:
    """Memory (B, S, L·2·h_kv·d) (the k·m slots of each row, in order) -> a :class:`Prefix` whose prompt
    starts at position ``start``."""
    B, S, W = kv_memory.shape
    if W != shape.width:
        raise ValueError(f"key/value memory has width {W}, the backbone needs {shape.width}")
    x = kv_memory.reshape(B, S, shape.layers, 2, shape.kv_heads, shape.head_dim)
    x = x.permute(2, 3, 0, 4, 1, 5)  # (L, 2, B, h_kv, S, d)
    return Prefix(kv=tuple((x[i, 0], x[i, 1]) for i in range(shape.layers)), start=start)


def require_states_readout(model, what: str) -> None:
    """Refuse a kv-readout model where ``what`` stores or splices memory as last-layer states only."""
    if getattr(model, "kv_shape", None) is not None:
        raise ConfigError(f"{what} holds memory as last-layer states (m, H), but this model reads memory as keys "
                          "and values (model.memory_readout=kv, a stage-1 option; docs/DESIGN.md §3)")
