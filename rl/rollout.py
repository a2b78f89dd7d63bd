"""Search-agent rollouts with latent retrieval (DESIGN §8).

    retriever = CandidateRetriever(cand_mem, k=2)              # or BankRetriever(bank, k=2)
    trajs = rollout(model, questions, group_size=4, retriever=retriever, policy=SamplingPolicy(seed=0))
    logp, mask = sequence_logprobs(model, trajs, adapter="generator")   # (B, L) each, exact replay

The generator writes plain-text markers (no new tokens): ``<think>…</think>``,
``<search>query</search>`` and ``<answer>…</answer>``. When a turn's text contains
``</search>`` the query goes through the query reasoner (``encode_query``), the retriever
returns k memory blocks (k, m, H), and ``\\n<information>`` + k·m ``<MEMSLOT>`` positions +
``</information>\\n`` are appended; the slot rows of the input embeddings are replaced by the
retrieved memory (rescaled like every spliced memory, see :mod:`clara.model.memory`). At most
``max_turns`` turns; a search in the last turn gets no information and ends the rollout.

Recorded exactly (:class:`Trajectory`): the full id sequence (prompt, generated tokens,
information markup with slot placeholders) with a per-position ``generated`` flag, and the
retrieved memory blocks in order. :func:`sequence_logprobs` rebuilds the same embeddings and
reproduces the sampling-time log-probs (tested to 1e-5 in fp32), so policy, reference and
teacher log-probs all come from one replay.

Cost: every turn re-runs its whole prefix once (prefill), then decodes with a KV cache inside
the turn. Keeping the cache across turns would save the re-prefill (O(turns·prefix)); the
re-run was chosen because it is the same computation as the replay, which keeps it exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from clara.model.generation import decode
from clara.model.kv_memory import require_states_readout
from clara.model.memory import left_pad, position_ids_for

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"

AGENT_INSTRUCTIONS = (
    "Answer the question. Think inside <think>...</think>. To look something up, write "
    "<search>your query</search>; the results appear inside <information>...</information>. "
    "You may search several times. Give the final short answer inside <answer>...</answer>."
)


@dataclass
class Trajectory:
    """One rollout, exactly as the policy saw and wrote it."""

    question: str
    group: int  # index of the question in the rollout batch (rollouts of a question share it)
    ids: list[int]  # prompt + generated + information markup; <MEMSLOT> at spliced positions
    generated: list[bool]  # per position of ``ids``: sampled by the policy (the loss mask)
    memory: list[torch.Tensor] = field(default_factory=list)  # retrieved blocks in order, (k, m, H) each
    logp: list[float] = field(default_factory=list)  # sampling-time log-prob per generated token
    queries: list[str] = field(default_factory=list)
    retrieved: list[list[int]] = field(default_factory=list)  # retrieved rows/candidates per search
    turns: list[str] = field(default_factory=list)  # generated text of each turn
    answer: str | None = None
    finished: bool = False
    sc_sum: float = 0.0  # sum over generated tokens of KL(U ‖ p_t) (self-certainty)

    @property
    def num_generated(self) -> int:
        return len(self.logp)

    @property
    def text(self) -> str:
        return "".join(self.turns)

    @property
    def self_certainty(self) -> float:
        return self.sc_sum / max(1, self.num_generated)


# ---------------------------------------------------------------- prompts and parsing


def agent_prompt_ids(model, question: str) -> list[int]:
    """The agent prompt: instructions + question, in the backbone's chat template if it has one."""
    content = f"{AGENT_INSTRUCTIONS}\nQuestion: {question}"
    tok = model.tokenizer
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    else:
        text = f"{content}\n"
    return text_ids(model, text)


def text_ids(model, text: str) -> list[int]:
    return model.tokenizer(text, add_special_tokens=False)["input_ids"]


def between(text: str, open_tag: str, close_tag: str) -> str | None:
    """The text inside the last ``open_tag … close_tag`` pair, stripped; None if there is none."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    return None if start < 0 else text[start + len(open_tag) : end].strip()


# ---------------------------------------------------------------- retrievers and policies


class Retriever(Protocol):
    k: int

    def retrieve(self, model, queries: Sequence[str], groups: Sequence[int]) -> tuple[torch.Tensor, list[list[int]]]:
        """Queries (with the question index of each) -> memory (B, k, m, H) and retrieved ids (B, k)."""


@dataclass
class CandidateRetriever:
    """Top-k over each question's own candidate memory (Q, N, m, H), cosine scores as in stage 2.

    With ``distractor_p > 0`` each retrieved block is replaced, with that probability, by a
    random candidate outside ``gold[q]`` (the distractor curriculum)."""

    cand_mem: torch.Tensor  # (Q, N, m, H)
    k: int
    scoring: str = "flattened"
    distractor_p: float = 0.0
    gold: Sequence[Sequence[int]] = ()
    seed: int = 0

    def __post_init__(self):
        self.rng = torch.Generator().manual_seed(self.seed)

    @torch.no_grad()
    def retrieve(self, model, queries, groups):
        from clara.model.scoring import model_scores

        query = model.encode_query(list(queries)).float()  # (B, m, H)
        cands = self.cand_mem[torch.tensor(list(groups))].to(query.device).float()  # (B, N, m, H)
        scores = model_scores(model, query, cands, self.scoring)  # (B, N)
        picked = scores.topk(self.k, dim=1).indices.cpu()  # (B, k)
        if self.distractor_p > 0:
            picked = self._distract(picked, groups)
        mem = torch.stack([cands[b, picked[b].to(cands.device)] for b in range(len(queries))])  # (B, k, m, H)
        return mem, picked.tolist()

    def _distract(self, picked: torch.Tensor, groups) -> torch.Tensor:
        n = self.cand_mem.shape[1]
        out = picked.clone()
        for b, g in enumerate(groups):
            gold = set(self.gold[g]) if self.gold else set()
            pool = [c for c in range(n) if c not in gold and c not in set(picked[b].tolist())]
            for j in range(out.shape[1]):
                if pool and float(torch.rand((), generator=self.rng)) < self.distractor_p:
                    out[b, j] = pool.pop(int(torch.randint(len(pool), (), generator=self.rng)))
        return out


@dataclass
class BankRetriever:
    """Latent top-k in a :class:`clara.serving.bank.MemoryBank`; ids are bank rows."""

    bank: object
    k: int

    @torch.no_grad()
    def retrieve(self, model, queries, groups):
        query = model.encode_query(list(queries)).detach().float().cpu()  # (B, m, H)
        _, rows = self.bank.search(query, self.k)  # (B, k)
        return self.bank.memory(rows), rows.tolist()  # (B, k, m, H)


class SamplingPolicy:
    """Samples each token from the policy's (tempered) distribution."""

    def __init__(self, seed: int | None = None):
        self.rng = None if seed is None else torch.Generator().manual_seed(seed)

    def pick(self, logprobs: torch.Tensor, rows: Sequence[int], turn: int, step: int) -> torch.Tensor:
        return torch.multinomial(logprobs.float().exp().cpu(), 1, generator=self.rng).squeeze(-1)


class ScriptedPolicy:
    """Teacher-forces a fixed text per rollout and turn (tests, and DGPO cold start on teacher text).

    ``scripts[row][turn]`` is the text written in that turn; after it the rollout emits eos."""

    def __init__(self, model, scripts: Sequence[Sequence[str]]):
        self.ids = [[text_ids(model, t) for t in turns] for turns in scripts]
        self.eos = model.eos_ids[0]

    def pick(self, logprobs, rows, turn, step):
        out = []
        for r in rows:
            turns = self.ids[r]
            script = turns[turn] if turn < len(turns) else []
            out.append(script[step] if step < len(script) else self.eos)
        return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------- embeddings and log-probs


def token_logprobs(logits: torch.Tensor, banned: Sequence[int], temperature: float) -> torch.Tensor:
    """logits (..., V) -> log-probs (..., V) of the distribution actually sampled from (banned ids excluded)."""
    logits = logits.float() / temperature
    if banned:
        logits = logits.index_fill(-1, torch.tensor(list(banned), device=logits.device), float("-inf"))
    return torch.log_softmax(logits, dim=-1)


def sequence_embeds(model, trajs: Sequence[Trajectory]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (ids (B, T), inputs_embeds (B, T, H), attention_mask (B, T)) with memory spliced in."""
    require_states_readout(model, "the agent's rollout")
    ids, mask = left_pad([t.ids for t in trajs], model.pad_id)  # (B, T)
    ids, mask = ids.to(model.device), mask.to(model.device)
    embeds = model.lm.get_input_embeddings()(ids)  # (B, T, H)
    # normalised and rescaled exactly as the generator's splice does; RL never moves the memory stats
    blocks = [model.prepare_memory(blk[None].to(embeds.device), update_stats=False)[0] for t in trajs for blk in t.memory]
    if not blocks:
        return ids, embeds, mask
    memory = torch.cat(blocks).to(dtype=torch.float32)  # (S_total, H), row-major order
    rows, cols = (ids == model.tokens.slot_id).nonzero(as_tuple=True)  # row-major, each row's slots in order
    if rows.numel() != memory.shape[0]:
        raise ValueError(f"{rows.numel()} slot positions for {memory.shape[0]} memory vectors")
    return ids, embeds.index_put((rows, cols), memory.to(embeds.dtype)), mask


def sequence_logprobs(model, trajs: Sequence[Trajectory], adapter: str | None = "generator",
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Replay trajectories -> log-probs of their generated tokens (B, L) and mask (B, L), L = max generated.

    Differentiable w.r.t. the adapter's weights. Non-generated positions hold 0 with mask 0.
    """
    ids, embeds, mask = sequence_embeds(model, trajs)  # (B, T), (B, T, H), (B, T)
    T = ids.shape[1]
    gen = torch.zeros_like(ids, dtype=torch.bool)  # (B, T)
    for b, t in enumerate(trajs):
        gen[b, T - len(t.ids):] = torch.tensor(t.generated, dtype=torch.bool)
    with model.using(adapter):
        hidden = model.lm.get_decoder()(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids_for(mask)
        ).last_hidden_state  # (B, T, H)
        target = gen[:, 1:]  # (B, T-1): the state at t predicts token t+1
        logits = model.lm.get_output_embeddings()(hidden[:, :-1][target])  # (N, V)
    lp = token_logprobs(logits, model.tokens.all_ids, temperature)  # (N, V)
    tok_lp = lp.gather(-1, ids[:, 1:][target][:, None]).squeeze(-1)  # (N,)
    counts = target.sum(1)  # (B,)
    L = max(1, int(counts.max()))
    out_mask = torch.arange(L, device=ids.device)[None] < counts[:, None]  # (B, L)
    out = torch.zeros(len(trajs), L, device=ids.device, dtype=tok_lp.dtype).masked_scatter(out_mask, tok_lp)
    return out, out_mask


# ---------------------------------------------------------------- the rollout loop


@dataclass(frozen=True)
class RolloutParams:
    max_turns: int = 4
    max_turn_tokens: int = 48
    temperature: float = 1.0


@torch.no_grad()
def _run_turn(model, trajs: list[Trajectory], rows: list[int], turn: int, policy, params: RolloutParams) -> list[str]:
    """Generate one turn for ``rows`` (the one decoding loop, ``clara.model.generation.decode``); appends
    tokens to their trajectories; returns each row's turn text."""
    banned = model.tokens.all_ids
    _, embeds, mask = sequence_embeds(model, [trajs[r] for r in rows])
    new: list[list[int]] = [[] for _ in rows]
    texts = [""] * len(rows)
    live = [True] * len(rows)
    eos = set(model.eos_ids)

    def step(logits: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        lp = token_logprobs(logits, banned, params.temperature)  # (B, V)
        token = policy.pick(lp, rows, turn, i).to(lp.device)  # (B,)
        tok_lp = lp.gather(-1, token[:, None]).squeeze(-1)  # (B,)
        allowed = logits.shape[-1] - len(banned)
        # KL(U ‖ p) over the allowed vocabulary = −log V' − mean_v log p_v
        sc = -math.log(allowed) - lp.masked_fill(torch.isinf(lp), 0.0).sum(-1) / allowed  # (B,)
        for j, r in enumerate(rows):
            if not live[j]:
                continue
            t, tid = trajs[r], int(token[j])
            t.ids.append(tid)
            t.generated.append(True)
            t.logp.append(float(tok_lp[j]))
            t.sc_sum += float(sc[j])
            new[j].append(tid)
            texts[j] = model.tokenizer.decode(new[j], skip_special_tokens=True)
            if tid in eos or SEARCH_CLOSE in texts[j] or ANSWER_CLOSE in texts[j]:
                live[j] = False
        return token, ~torch.tensor(live)

    decode(model.lm, embeds, mask, params.max_turn_tokens, step)
    return texts


def rollout(model, questions: Sequence[str], group_size: int, retriever: Retriever, policy,
            params: RolloutParams = RolloutParams()) -> list[Trajectory]:
    """G rollouts per question (rows q·G … q·G+G−1), each up to ``max_turns`` turns."""
    prompts = [agent_prompt_ids(model, q) for q in questions]
    trajs = [Trajectory(question=q, group=g, ids=list(prompts[g]), generated=[False] * len(prompts[g]))
             for g, q in enumerate(questions) for _ in range(group_size)]
    was_training = model.training
    model.eval()
    try:
        with model.using("generator"):
            for turn in range(params.max_turns):
                rows = [i for i, t in enumerate(trajs) if not t.finished]
                if not rows:
                    break
                texts = _run_turn(model, trajs, rows, turn, policy, params)
                searching = _close_turn(trajs, rows, texts, last=turn == params.max_turns - 1)
                if searching:
                    _inject_information(model, trajs, searching, retriever)
    finally:
        model.train(was_training)
    return trajs


def _close_turn(trajs, rows, texts, last: bool) -> list[int]:
    """Record each row's turn; return the rows that searched and get information."""
    searching = []
    for r, text in zip(rows, texts):
        t = trajs[r]
        t.turns.append(text)
        if ANSWER_CLOSE in text:
            t.answer, t.finished = between(text, ANSWER_OPEN, ANSWER_CLOSE), True
        elif SEARCH_CLOSE in text and not last:
            t.queries.append(between(text, SEARCH_OPEN, SEARCH_CLOSE) or "")
            searching.append(r)
        else:  # eos, budget spent, or a search with no turns left
            t.finished = True
    return searching


def _inject_information(model, trajs, rows: list[int], retriever: Retriever) -> None:
    queries = [trajs[r].queries[-1] for r in rows]
    mem, ids = retriever.retrieve(model, queries, [trajs[r].group for r in rows])  # (B, k, m, H)
    k, m = mem.shape[1], mem.shape[2]
    head, tail = text_ids(model, f"\n{INFO_OPEN}"), text_ids(model, f"{INFO_CLOSE}\n")
    block = head + [model.tokens.slot_id] * (k * m) + tail
    for i, r in enumerate(rows):
        t = trajs[r]
        t.ids.extend(block)
        t.generated.extend([False] * len(block))
        t.memory.append(mem[i].detach().float().cpu())
        t.retrieved.append(list(ids[i]))
