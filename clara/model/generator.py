"""The generator side of a ClaraModel: its prompt, its loss, and answering from memory (DESIGN §3, §4).

A mixin of :class:`clara.model.clara_model.ClaraModel` (it reads the model's tokenizer, adapters, memory
tokens and memory preparation). Memory blocks (B, k, m, W) go into a prompt of k slots of m placeholders:
spliced in as input embeddings (states readout), or under kv readout a cached prefix of keys and values
before a prompt that holds no slots (:mod:`clara.model.kv_memory`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from clara.model.generation import Prefix, SamplingParams, finish_text, generate_from_embeds, prompt_context
from clara.model.kv_memory import prefix_from_memory
from clara.model.memory import SLOT_TOKEN, fence, left_pad, splice_memory
from clara.model.prompts import documents_per_row


class GeneratorSide:
    """Prompts, the teacher-forced generator pass and decoding, for :class:`ClaraModel`."""

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
            context = prompt_context(self.lm, mask, prefix)  # kv readout: the memory's keys and values first
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
