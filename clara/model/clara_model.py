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
from clara.config import BackboneKind, LoraConfig, MemoryLayout, MemoryReadout, ModelConfig, Precision
from clara.devices import precision_autocast
from clara.model.inference_weights import cast_linears, restore_linears
from clara.model.generation import Prefix, SamplingParams, finish_text, generate_from_embeds, new_kv_cache
from clara.model.kv_memory import fixed_end_positions, kv_shape, pack_kv, prefix_from_memory
from clara.model.memory import (
    MEMORY_NORMS,
    SLOT_TOKEN,
    USER_FENCE,
    add_memory_tokens,
    embedding_rms,
    encoder_row,
    fence,
    init_memory_stats,
    left_pad,
    normalize_memory,
    pad_id_of,
    position_ids_for,
    rescale_to_rms,
    splice_memory,
    update_memory_stats,
)
from clara.model.prompts import documents_per_row
from clara.model.storage import AdapterStorage

log = logging.getLogger(__name__)



class ClaraModel(AdapterStorage, nn.Module):
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
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.chunk_len = chunk_len
        self.backbone_hash = backbone_hash
        self.rescale_memory = rescale_memory
        # states: the generator reads last-layer states as embeddings; kv: every layer's keys and values
        self.memory_readout = MemoryReadout(getattr(memory_readout, "value", memory_readout))
        self.kv_shape = kv_shape(lm.config) if self.memory_readout is MemoryReadout.KV else None
        self.memory_layout = MemoryLayout(getattr(memory_layout, "value", memory_layout))
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

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(input_ids)  # (B, T, H)

    def _ids(self, text: str) -> list[int]:
        """Token ids of user text (documents, questions, answers): a reserved token's string in it (a
        memory slot, a chat-template marker) is read as plain text, never as that token."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

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
        if kv:
            mem = torch.cat([mem, self._own_dtype(pack_kv(cache, columns))], dim=-1)  # (B, m, H + L·2·h_kv·d)
        if not return_text_mean:
            return mem
        text_mask = mask.masked_fill(is_mem, 0)
        weights = text_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        text_mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)
        return mem, text_mean

    def compress(self, texts: Sequence[str], adapter: str = "compressor", **kw):
        """Documents -> memory (B, m, H) with the compressor adapter."""
        return self.encode(texts, adapter, **kw)

    def encode_query(self, questions: Sequence[str], adapter: str = "query", **kw):
        """Questions -> query vectors (B, m, H) with the query adapter, in the space of ``compress``."""
        return self.encode(questions, adapter, **kw)

    # ------------------------------------------------------------------ generator

    def prompt_ids(self, question: str, k: int, document: str | None = None) -> list[int]:
        """Token ids of the generator prompt with ``k`` slots of m placeholders, ready to answer.

        ``document`` (with k = 0): the same prompt with the document's text where the slots would be."""
        if document is not None and k:
            raise ValueError("a prompt holds either memory slots or a document's text, not both")
        slots = "".join(SLOT_TOKEN * self.num_mem + "\n" for _ in range(k))
        if document is not None:
            slots = f"{fence(document)}\n"
        question = fence(f" {question}")
        content = f"Background:\n{slots}\nQuestion:{question}" if slots else f"Question:{question}"
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"{content}\nAnswer:"
        return self._template_ids(text)

    def _answer_ids(self, answer: str, max_answer_len: int) -> list[int]:
        prefix = "" if getattr(self.tokenizer, "chat_template", None) else " "
        return self._ids(prefix + answer)[:max_answer_len] + [self.eos_ids[0]]

    def _prefixed_answer_ids(self, reply_prefix: str, answer: str, max_answer_len: int) -> tuple[list[int], list[int]]:
        """(prefix ids, answer ids + eos) of the reply ``reply_prefix + " " + answer``, tokenised as one text
        (as SCP trains ``Question: q\nAnswer: a``); the answer starts where the prefix's own ids stop matching."""
        whole, alone = self._ids(f"{reply_prefix} {answer}"), self._ids(reply_prefix)
        n = 0
        while n < min(len(alone), len(whole)) and alone[n] == whole[n]:
            n += 1
        return whole[:n], whole[n:][:max_answer_len] + [self.eos_ids[0]]

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
            mem_blocks = normalize_memory(mem_blocks, self.mem_stats, self.memory_norm)
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
        return normalize_memory(self.memory_states(states), self.mem_stats, self.memory_norm)

    def memory_states(self, mem: torch.Tensor) -> torch.Tensor:
        """Memory (..., m, W) -> its last-layer states (..., m, H): all of it, or under kv readout the
        first H values of each slot (the rest are keys and values)."""
        return mem[..., : self.hidden_size]

    def _splice(self, ids: torch.Tensor, mem_blocks: torch.Tensor | None) -> torch.Tensor:
        embeds = self._embed(ids)  # (B, T, H)
        if mem_blocks is None or mem_blocks.shape[1] == 0 or self.kv_shape is not None:
            return embeds
        return splice_memory(embeds, ids, self.tokens.slot_id, self.prepare_memory(mem_blocks))

    def _check_blocks(self, questions: Sequence[str], mem_blocks: torch.Tensor | None) -> int:
        if mem_blocks is None:
            return 0
        if mem_blocks.dim() != 4 or mem_blocks.shape[0] != len(questions) or mem_blocks.shape[2:] != (
            self.num_mem, self.memory_width,
        ):
            raise ValueError(
                f"mem_blocks must be (B={len(questions)}, k, m={self.num_mem}, W={self.memory_width}), "
                f"got {tuple(mem_blocks.shape)}"
            )
        return mem_blocks.shape[1]

    def _slots(self, k: int) -> int:
        """Memory slots a prompt holds for k blocks: none under kv readout (the memory is a prefix)."""
        return 0 if self.kv_shape is not None else k

    def memory_prefix(self, mem_blocks: torch.Tensor | None) -> Prefix | None:
        """Under kv readout, memory blocks (B, k, m, W) -> the keys and values before the prompt; else None."""
        if self.kv_shape is None or mem_blocks is None or mem_blocks.shape[1] == 0:
            return None
        B, k, m, _ = mem_blocks.shape
        kv = mem_blocks[..., self.hidden_size :].reshape(B, k * m, -1)  # (B, k·m, L·2·h_kv·d)
        return prefix_from_memory(kv, self.kv_shape, start=self.chunk_len + m)

    def build_generator_inputs(
        self, questions: Sequence[str], mem_blocks: torch.Tensor | None, reply_prefixes: Sequence[str] | None = None,
        documents: Sequence[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts with memory spliced in -> (inputs_embeds (B, T, H), attention_mask (B, T)), left-padded.
        Under kv readout nothing is spliced: decode with :meth:`memory_prefix` of the same blocks as the prefix.

        ``reply_prefixes`` forces the start of each reply (e.g. ``"Question: q\nAnswer:"``). ``documents``
        (no ``mem_blocks``): each row's text where the memory would go, as raw-text RAG reads it."""
        k = self._check_blocks(questions, mem_blocks)
        docs = documents_per_row(questions, k, documents)
        prefixes = reply_prefixes or [""] * len(questions)
        rows = [self.prompt_ids(q, self._slots(k), d) + (self._ids(p) if p else [])
                for q, p, d in zip(questions, prefixes, docs)]
        ids, mask = left_pad(rows, self.pad_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        return self._splice(ids, mem_blocks), mask

    def generator_loss(
        self,
        questions: Sequence[str],
        mem_blocks: torch.Tensor | None,
        answers: Sequence[str],
        *,
        adapter: str = "generator",
        max_answer_len: int = 128,
        reduction: str = "mean",
        reply_prefixes: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Next-token cross-entropy on the answer tokens (and the closing eos) only.

        ``reduction="none"`` gives one mean loss per row (B,), e.g. for right-vs-wrong-memory ablations;
        ``"sum"`` one summed loss per row (B,), the negative log-likelihood of the whole answer.
        ``reply_prefixes`` start each reply (as in :meth:`generate`) and carry no loss: the answer is
        scored as their continuation (``"Question: q\nAnswer:"`` -> the answer after it).
        """
        if reduction not in ("mean", "none", "sum"):
            raise ValueError(f"reduction must be mean, none or sum, got {reduction!r}")
        token_loss, rows, _ = self.generator_pass(questions, mem_blocks, answers, adapter=adapter,
                                                  max_answer_len=max_answer_len, reply_prefixes=reply_prefixes)
        if reduction == "mean":
            return token_loss.mean()
        per_row = torch.zeros(len(questions), device=self.device).index_add(0, rows, token_loss)
        if reduction == "sum":
            return per_row
        return per_row / torch.bincount(rows, minlength=len(questions)).clamp(min=1)  # (B,)

    def generator_pass(
        self,
        questions: Sequence[str],
        mem_blocks: torch.Tensor | None,
        answers: Sequence[str],
        *,
        adapter: str | None = "generator",
        max_answer_len: int = 128,
        reply_prefixes: Sequence[str] | None = None,
        documents: Sequence[str] | None = None,
        states_at: Sequence[int] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """One teacher-forced generator forward -> (token_loss (N,), row of each answer token (N,), states).

        N counts the answer tokens of all rows, row-major. ``documents`` puts each row's document as text
        where memory would go (no ``mem_blocks``): the open-book view of the same prompt. ``states_at``:
        hidden-state indices (0 = embeddings, L = the last layer's output, after the final norm); for each,
        the (N, H) states at the positions that predict the answer tokens, in the order of ``token_loss``.
        Two passes over the same answers, whatever their prompts, give states that align row for row.
        """
        k = self._check_blocks(questions, mem_blocks)
        docs = documents_per_row(questions, k, documents)
        prompts = [self.prompt_ids(q, self._slots(k), d) for q, d in zip(questions, docs)]
        if reply_prefixes is None:
            prefixes, targets = [[]] * len(answers), [self._answer_ids(a, max_answer_len) for a in answers]
        else:
            prefixes, targets = zip(*(self._prefixed_answer_ids(p, a, max_answer_len)
                                      for p, a in zip(reply_prefixes, answers)))  # fmt: skip
        ids, mask = left_pad([p + f + t for p, f, t in zip(prompts, prefixes, targets)], self.pad_id)  # (B, T)
        labels = torch.full_like(ids, -100)
        for i, t in enumerate(targets):
            labels[i, ids.shape[1] - len(t) :] = torch.tensor(t)
        ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
        embeds = self._splice(ids, mem_blocks)  # (B, T, H)
        prefix = self.memory_prefix(mem_blocks)
        with self.using(adapter):
            if prefix is None:
                context = {"attention_mask": mask, "position_ids": position_ids_for(mask)}
            else:  # kv readout: the memory's keys and values come before the prompt
                kw, cache = prefix.cache(self.lm)
                context = {"attention_mask": prefix.mask(mask), "position_ids": prefix.positions(mask), kw: cache}
            out = self.lm.get_decoder()(inputs_embeds=embeds, output_hidden_states=bool(states_at), **context)
            # the state at t predicts token t+1; project only answer positions (vocab is large)
            target = labels[:, 1:]  # (B, T-1)
            keep = target != -100
            logits = self.lm.get_output_embeddings()(out.last_hidden_state[:, :-1][keep])  # (N, V)
        token_loss = nn.functional.cross_entropy(logits.float(), target[keep], reduction="none")  # (N,)
        states = [self._own_dtype(out.hidden_states[i][:, :-1][keep]) for i in states_at]  # each (N, H)
        return token_loss, keep.nonzero(as_tuple=True)[0], states

    @torch.no_grad()
    def generate(
        self,
        questions: Sequence[str],
        mem_blocks: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        seed: int | None = None,
        adapter: str | None = "generator",
        reply_prefixes: Sequence[str] | None = None,
        documents: Sequence[str] | None = None,
    ) -> list[str]:
        """Answer each question from its memory blocks (B, k, m, H); greedy when temperature=0.
        The returned text continues after ``reply_prefixes`` (forced reply starts), if given. ``documents``
        (no ``mem_blocks``): each row's document as text where the memory would go."""
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=tuple(stop),
            seed=seed, eos_ids=self.eos_ids, banned_ids=self.tokens.all_ids,
        )
        embeds, mask = self.build_generator_inputs(questions, mem_blocks, reply_prefixes, documents)
        was_training = self.training
        self.eval()
        try:
            with self.using(adapter):
                rows = generate_from_embeds(self.lm, embeds, mask, params, decode_text=self._decode,
                                            prefix=self.memory_prefix(mem_blocks))
        finally:
            self.train(was_training)
        return [finish_text(self._decode(r), params.stop) for r in rows]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


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
