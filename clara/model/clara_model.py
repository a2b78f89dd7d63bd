"""ClaraModel: one causal-LM backbone, three LoRA adapters, memory tokens (DESIGN §0, §3).

    model = ClaraModel.from_config(cfg.model)                 # tiny, HF dir or GGUF backbone
    mem = model.compress(docs)                               # (B, m, H)  compressor adapter
    q = model.encode_query(questions)                        # (B, m, H)  query adapter
    loss = model.generator_loss(questions, mem[:, None], answers)   # mem blocks (B, k, m, H)
    texts = model.generate(questions, mem[:, None], max_new_tokens=32)
    model.save_adapters("out/run/adapters"); model.load_adapters("out/run/adapters")

Every forward runs under one adapter (``with model.using("query"): …``); switching never
changes which adapters are trained (see :mod:`clara.model.adapters`). The base weights are frozen;
the trainable tensors are the LoRA weights of the trained adapters and ``mem_embed``, the
embeddings of ``<MEM0>…<MEM{m-1}>`` kept as their own parameter so no row of the base
embedding matrix ever receives a gradient.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from clara.model.adapters import AdapterSet
from clara.config import BackboneKind, LoraConfig, MemoryLayout, MemoryReadout, ModelConfig, Precision, SelectDetach
from clara.devices import precision_autocast
from clara.model.inference_weights import cast_linears, restore_linears
from clara.model.generation import new_kv_cache
from clara.model.kv_memory import fixed_end_positions, kv_shape, pack_kv
from clara.model.memory import (
    MEMORY_NORMS,
    USER_FENCE,
    add_memory_tokens,
    embedding_rms,
    encoder_row,
    init_memory_stats,
    left_pad,
    normalize_memory,
    pad_id_of,
    position_ids_for,
    rescale_to_rms,
    update_memory_stats,
)
from clara.model.generator import GeneratorSide
from clara.model.select import MemorySelector
from clara.model.storage import AdapterStorage

log = logging.getLogger(__name__)



class ClaraModel(GeneratorSide, AdapterStorage, nn.Module):
    def __init__(
        self,
        lm: nn.Module,
        tokenizer,
        *,
        chunk_len: int,
        num_mem: int,
        lora: LoraConfig,
        backbone_hash: str = "",
        rescale_memory: bool = True,
        seed: int = 0,
        memory_norm: str = "none",
        memory_readout: str = "states",
        memory_layout: str = "end",
        memory_select: int = 0,
        memory_select_detach: str = "none",
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.chunk_len = chunk_len
        self.backbone_hash = backbone_hash
        self.rescale_memory = rescale_memory
        # states: the generator reads last-layer states as embeddings; kv: every layer's keys and values
        self.memory_readout = MemoryReadout(memory_readout)
        self.kv_shape = kv_shape(lm.config) if self.memory_readout is MemoryReadout.KV else None
        self.memory_layout = MemoryLayout(memory_layout)
        # where the backbone came from (set by from_config; recorded with saved adapters)
        self.backbone_path = str(getattr(lm.config, "_name_or_path", ""))
        self.backbone_kind = ""
        self.backbone_recipe = ""  # how a derived backbone was made (clara.model.backbone.backbone_recipe)
        # the form the generator was trained to be asked in (clara.config.GeneratorPrompt), recorded with saved
        # adapters so evaluations ask it the same way; None = not known (bare backbone, older adapters)
        self.generator_prompt: str | None = None
        # fp32: forwards run as the caller's context says (the Trainer's autocast); bf16: every forward runs
        # under bf16 autocast (inference where the CPU has it: set_inference_precision, load_trained_model)
        self.inference_precision = Precision.FP32
        self._fp32_linears: dict | None = None  # bf16 inference: the linear layers' fp32 weights, if kept
        base_rows = lm.get_input_embeddings().weight.shape[0]
        self.tokens = add_memory_tokens(tokenizer, num_mem)
        # the fixed scale spliced memory is set to: mean RMS of the backbone's own token rows
        self.embed_rms = embedding_rms(lm.get_input_embeddings().weight, base_rows)
        self.mem_embed = nn.Parameter(self._init_mem_embed(lm, num_mem, seed))  # (m, H)
        self._set_memory_norm(str(getattr(memory_norm, "value", memory_norm)))
        # the first memory_select memory vectors select text states (clara.model.select); None when 0
        self.memory_select = memory_select
        self.selector = (MemorySelector(self.hidden_size, memory_select, seed=seed, detach=memory_select_detach)
                         if memory_select else None)
        self.select_attention: torch.Tensor | None = None  # the last compression's (B, p, chunk_len), token order
        if len(tokenizer) > base_rows:
            _grow_vocab(lm, len(tokenizer), base_rows)
        self.adapters = AdapterSet(lm, lora)  # freezes every base weight
        self.peft_model = self.adapters.peft  # registered, so .parameters()/.to()/.train() reach it
        self.pad_id = pad_id_of(tokenizer)
        self.eos_ids = _eos_ids(lm, tokenizer)

    @staticmethod
    def _init_mem_embed(lm, num_mem: int, seed: int) -> torch.Tensor:
        """Mean token embedding plus noise of the per-dimension spread, seeded."""
        rows = lm.get_input_embeddings().weight.detach().float()  # (V, H)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(num_mem, rows.shape[1], generator=g)  # (m, H)
        init = rows.mean(0) + noise * rows.std(0)
        return init.to(device=rows.device, dtype=lm.get_input_embeddings().weight.dtype)

    @classmethod
    def from_config(cls, model_cfg: ModelConfig, backbone_dir: str | Path | None = None, seed: int = 0) -> ClaraModel:
        """Load the backbone named by ``model_cfg`` (or ``backbone_dir``) and attach the adapters."""
        from clara.model.backbone import backbone_hash, backbone_recipe, load_backbone
        from clara.devices import default_device

        path = Path(backbone_dir or model_cfg.backbone)
        lm, tok = load_backbone(path, model_cfg.kind)
        model = cls(
            lm, tok,
            chunk_len=model_cfg.chunk_len,
            num_mem=model_cfg.num_mem_tokens,
            lora=model_cfg.lora,
            backbone_hash=backbone_hash(path),
            rescale_memory=model_cfg.rescale_memory,
            seed=seed,
            memory_norm=model_cfg.memory_norm,
            memory_readout=model_cfg.memory_readout,
            memory_layout=model_cfg.memory_layout,
            memory_select=model_cfg.memory_select,
            memory_select_detach=model_cfg.memory_select_detach,
        )
        model.backbone_path, model.backbone_kind = str(path), BackboneKind(model_cfg.kind).value
        model.backbone_recipe = backbone_recipe(path)
        return model.to(default_device())

    # ------------------------------------------------------------------ basics

    @property
    def lm(self) -> nn.Module:
        """The causal LM with LoRA layers; its forward runs the active adapter."""
        return self.adapters.lm

    @property
    def num_mem(self) -> int:
        return self.tokens.num_mem

    @property
    def hidden_size(self) -> int:
        return self.mem_embed.shape[1]

    @property
    def memory_width(self) -> int:
        """Values per memory slot: H (states readout), or H and every layer's key and value (kv readout)."""
        return self.hidden_size + (self.kv_shape.width if self.kv_shape else 0)

    @property
    def device(self) -> torch.device:
        return self.mem_embed.device

    @contextlib.contextmanager
    def using(self, adapter: str | None) -> Iterator[None]:
        """Context in which forwards run under ``adapter`` (None: the bare backbone), in the model's
        inference precision."""
        with self.adapters.using(adapter), precision_autocast(self.inference_precision, self.device):
            yield

    def set_inference_precision(self, precision: Precision | str, keep_fp32: bool = False) -> None:
        """Run every forward in ``precision``, already resolved (:func:`clara.devices.resolve_precision`):
        bf16 autocast, or fp32 as the weights are. Returned states stay in the weights' dtype either way.

        bf16 also casts the backbone's linear weights to bf16 once and keeps the LoRA factors fp32
        (:mod:`clara.model.inference_weights`). For inference only: the model must not train afterwards.
        ``keep_fp32`` keeps the fp32 weights, so that fp32 can be set again."""
        precision = Precision(getattr(precision, "value", precision))
        if precision is Precision.AUTO:
            raise ValueError("resolve precision auto first (clara.devices.resolve_precision)")
        if precision is Precision.BF16 and self._fp32_linears is None:
            self._fp32_linears = cast_linears(self.lm, torch.bfloat16, keep_fp32)
        elif precision is Precision.FP32 and self._fp32_linears is not None:
            if not self._fp32_linears:
                raise ValueError("the linear weights were cast to bf16 without keep_fp32; load the model again for fp32")
            restore_linears(self.lm, self._fp32_linears)
            self._fp32_linears = None
        self.inference_precision = precision

    def _own_dtype(self, states: torch.Tensor) -> torch.Tensor:
        """States out of a forward, in the weights' dtype when our own bf16 autocast made them bf16."""
        return states.to(self.mem_embed.dtype) if self.inference_precision is Precision.BF16 else states

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text as :meth:`encode` reads it, before the cut at ``chunk_len``."""
        ids = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]
        return [len(row) for row in ids]

    def set_trainable(self, adapters: Iterable[str], mem_embed: bool = True) -> None:
        """Train exactly these adapters (and the memory-token embeddings unless mem_embed=False)."""
        self.adapters.set_trainable(adapters)
        self.mem_embed.requires_grad_(mem_embed)
        if self.selector is not None:  # part of the compressor
            for param in (self.selector.keys, self.selector.queries):
                param.requires_grad_("compressor" in self.adapters.trainable)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)  # (B, T, H)

    def _ids(self, text: str) -> list[int]:
        """Token ids of user text (documents, questions, answers): a reserved token's string in it (a
        memory slot, a chat-template marker) is read as plain text, never as that token."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def char_tokens(self, text: str, chars: Sequence[int]) -> tuple[list[int | None], int]:
        """(index of the token of ``text`` that holds each character of ``chars``, None for one no token holds;
        the number of tokens), tokenised as :meth:`_ids` reads user text. Indices are not cut at chunk_len."""
        enc = self.tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        spans = enc["offset_mapping"]
        found = [next((j for j, (a, b) in enumerate(spans) if a <= c < b), None) for c in chars]
        return found, len(enc["input_ids"])

    def token_counter(self) -> Callable[[str], int]:
        """Counts user text's tokens as :meth:`_ids` does, with its own copy of the tokenizer, so it is safe
        in a thread other than the model's: a fast tokenizer switches its special-token splitting per call,
        and a call in another thread could switch it under the model's own tokenizing."""
        tokenizer = copy.deepcopy(self.tokenizer)
        return lambda text: len(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def _template_ids(self, text: str) -> list[int]:
        """Token ids of prompt text that holds our own markup (slot placeholders, chat-template tokens)
        around user text fenced by :data:`USER_FENCE`: the markup becomes its reserved tokens, the
        fenced text never does. Each user span starts at a word boundary (after a space or newline),
        where byte-level BPE starts a new piece, so the ids equal those of the unfenced whole."""
        ids: list[int] = []
        for i, part in enumerate(text.split(USER_FENCE)):
            if i % 2:
                ids += self._ids(part)
            elif part:
                ids += self.tokenizer(part, add_special_tokens=False)["input_ids"]
        return ids

    # ------------------------------------------------------------------ encoders

    def encode(
        self, texts: Sequence[str], adapter: str, *, return_text_mean: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Text (≤ chunk_len tokens) + m memory tokens -> last-layer states at the memory positions.

        Returns mem (B, m, H); with ``return_text_mean`` also the mean state over the text
        tokens (B, H), used by SCP's alignment term. The compressor under kv readout returns
        (B, m, :attr:`memory_width`): each slot's state, then its keys and values (:mod:`clara.model.kv_memory`).
        """
        m = self.num_mem
        interleaved = self.memory_layout is MemoryLayout.INTERLEAVED
        rows = [encoder_row(self._ids(t)[: self.chunk_len], self.tokens.mem_ids, interleaved) for t in texts]
        ids, mask = left_pad(rows, self.pad_id)  # (B, T)
        ids, mask = ids.to(self.device), mask.to(self.device)
        # each row's memory columns, in order <MEM0> … (user text never yields these ids), whatever the layout
        is_mem = torch.isin(ids, torch.tensor(self.tokens.mem_ids, device=ids.device))  # (B, T)
        where = is_mem.nonzero(as_tuple=True)  # row-major: each row's m columns in order
        columns = where[1].view(len(rows), m)  # (B, m)
        embeds = self._embed(ids)  # (B, T, H)
        embeds = embeds.index_put(where, self.mem_embed.to(embeds.dtype).repeat(len(rows), 1))
        kv = self.kv_shape is not None and adapter == "compressor"
        kw, cache = new_kv_cache(self.lm) if kv else ("cache", None)
        positions = fixed_end_positions(mask, self.chunk_len + m) if kv else position_ids_for(mask)
        with self.using(adapter):
            hidden = self.lm.get_decoder()(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                **({kw: cache, "use_cache": True} if kv else {}),
            ).last_hidden_state  # (B, T, H)
        hidden = self._own_dtype(hidden)
        mem = hidden.gather(1, columns[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, m, H)
        if self.selector is not None and adapter == "compressor":
            base = None
            if self.selector.detach is SelectDetach.BASE:  # the bare backbone's states, never reshaped
                with torch.no_grad(), self.using(None):
                    base = self._own_dtype(self.lm.get_decoder()(
                        inputs_embeds=embeds.detach(), attention_mask=mask, position_ids=positions).last_hidden_state)
            mem = self._select(mem, hidden, mask.bool() & ~is_mem, base)
        if kv:
            mem = torch.cat([mem, self._own_dtype(pack_kv(cache, columns))], dim=-1)  # (B, m, H + L·2·h_kv·d)
        if not return_text_mean:
            return mem
        text_mask = mask.masked_fill(is_mem, 0)
        weights = text_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        text_mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return mem, text_mean

    def _select(self, mem: torch.Tensor, hidden: torch.Tensor, text_mask: torch.Tensor,
                values: torch.Tensor | None = None) -> torch.Tensor:
        """Memory (B, m, H) with its first p vectors replaced by the selector's slots over the text states
        (pooling ``values`` where given); keeps their attention in token order as :attr:`select_attention`
        (B, p, chunk_len)."""
        slots, attn = self.selector(hidden, text_mask, values)  # (B, p, H), (B, p, T)
        B, p, T = attn.shape
        token = (text_mask.long().cumsum(-1) - 1).clamp(min=0)[:, None, :].expand(B, p, T)  # column -> token index
        ordered = attn.new_zeros(B, p, self.chunk_len).scatter_add(2, token, attn * text_mask[:, None, :])
        self.select_attention = ordered
        return torch.cat([slots.to(mem.dtype), mem[:, p:]], dim=1)

    def compress(self, texts: Sequence[str], adapter: str = "compressor", **kw):
        """Documents -> memory (B, m, H) with the compressor adapter."""
        return self.encode(texts, adapter, **kw)

    def encode_query(self, questions: Sequence[str], adapter: str = "query", **kw):
        """Questions -> query vectors (B, m, H) with the query adapter, in the space of ``compress``."""
        return self.encode(questions, adapter, **kw)

    def _set_memory_norm(self, mode: str) -> None:
        """Splice-side normalisation; its running stats (2, m, H) exist only when it is on, so default
        models keep exactly their old parameters. The stats are a Parameter (so checkpoints keep them)
        that never gets a gradient: they are used detached and updated by a running average."""
        if mode not in MEMORY_NORMS:
            raise ValueError(f"memory_norm must be one of {MEMORY_NORMS}, got {mode!r}")
        self.memory_norm = mode
        if mode == "none":
            self.register_parameter("mem_stats", None)
        elif getattr(self, "mem_stats", None) is None:
            stats = init_memory_stats(self.num_mem, self.hidden_size).to(self.mem_embed.device)
            self.mem_stats = nn.Parameter(stats)

    def prepare_memory(self, mem_blocks: torch.Tensor, update_stats: bool = True) -> torch.Tensor:
        """Memory blocks (B, k, m, H) -> the vectors spliced into generator slots (B, k·m, H).

        With ``memory_norm`` on, a training forward (grad enabled) that trains the compressor first
        folds the batch into the stats; they follow the compressor, so with it frozen (joint, RL) or
        ``update_stats=False`` they stay as trained."""
        B, k, m, H = mem_blocks.shape
        if self.mem_stats is not None:
            compressor_trains = "compressor" in self.adapters.trainable
            if update_stats and compressor_trains and self.training and torch.is_grad_enabled():
                update_memory_stats(self.mem_stats.data, mem_blocks)
            mem_blocks = normalize_memory(mem_blocks, self.mem_stats, self.memory_norm, standardize_first=self.memory_select)
        memory = mem_blocks.reshape(B, k * m, H)  # (B, k·m, H)
        if self.rescale_memory:
            memory = rescale_to_rms(memory, self.embed_rms)
        return memory

    def retrieval_memory(self, states: torch.Tensor) -> torch.Tensor:
        """Document memory or query states (..., m, H) in the space retrieval scores in: normalised
        as the generator reads memory (``memory_norm``), without the scalar rescale. Raw last-layer
        states share one large direction (measured: cosine 0.97 between any two documents after SCP),
        so raw cosines between a query and its candidates differ by ~0.004 — a near-uniform softmax
        at temperature 0.02; centring removes that shared direction. Identity when memory_norm is off.
        Memory under kv readout is scored by its states (:meth:`memory_states`)."""
        return normalize_memory(self.memory_states(states), self.mem_stats, self.memory_norm,
                                standardize_first=self.memory_select)

    def memory_states(self, mem: torch.Tensor) -> torch.Tensor:
        """Memory (..., m, W) -> its last-layer states (..., m, H): all of it, or under kv readout the
        first H values of each slot (the rest are keys and values)."""
        return mem[..., : self.hidden_size]



def _grow_vocab(lm, new_rows: int, base_rows: int) -> None:
    """Resize the (possibly tied) embeddings; new rows = mean base row, so every build is identical.

    Memory positions never read these rows (``mem_embed`` and spliced memory replace them);
    they matter only as output logits, where generation bans them.
    """
    lm.resize_token_embeddings(new_rows, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None}.values():
            emb.weight[base_rows:] = emb.weight[:base_rows].mean(0)


def _eos_ids(lm, tokenizer) -> tuple[int, ...]:
    """End-of-sequence ids: the tokenizer's eos first, then any the generation config adds."""
    ids = [tokenizer.eos_token_id]
    extra = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    ids += extra if isinstance(extra, list) else [extra]
    return tuple(dict.fromkeys(i for i in ids if i is not None))
