"""The retrieval space (DESIGN §5, §9): how a query and a document's memory are compared, and how a
ranking is scored. One home for training (stage 2's straight-through top-k), the RL agent's
searches, the bank, the server and the evaluations.

A memory ``(..., m, H)`` becomes one vector ``(..., D)``: flattened (``D = m·H``) or mean-pooled
(``D = H``), as :class:`~clara.config.Scoring` says. Before that, a model with a retrieval space
of its own (``ClaraModel.retrieval_memory``: memory normalised as the generator reads it) maps
both sides into it; a model without one (the hashing stand-in) is compared as is.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Iterable, Sequence

from clara.config import Scoring

if TYPE_CHECKING:
    import numpy as np
    import torch

EPS = 1e-8
ALL = "all"  # the recall table's row over every question type


def in_retrieval_space(model, states: torch.Tensor) -> torch.Tensor:
    """Query or document states (..., m, H) in the space ``model`` scores in (identity if it has none)."""
    space = getattr(model, "retrieval_memory", None)
    return space(states) if space is not None else states


def score_vectors(mem: torch.Tensor, scoring: Scoring | str) -> torch.Tensor:
    """(..., m, H) memory -> (..., D) vectors to compare: flattened m·H or mean-pooled H."""
    if Scoring(scoring) is Scoring.POOLED:
        return mem.mean(-2)  # (..., H)
    return mem.flatten(-2)  # (..., m·H)


def candidate_scores(query: torch.Tensor, cand_mem: torch.Tensor, scoring: Scoring | str) -> torch.Tensor:
    """query (B, m, H), candidates (B, N, m, H) -> cosine scores (B, N), differentiable (the kernels)."""
    from clara.kernels.dispatch import cosine_scores

    q = score_vectors(query, scoring)  # (B, D)
    docs = score_vectors(cand_mem, scoring).to(q.dtype)  # (B, N, D)
    return cosine_scores(q.contiguous(), docs.contiguous())  # (B, N)


def model_scores(model, query: torch.Tensor, cand_mem: torch.Tensor, scoring: Scoring | str) -> torch.Tensor:
    """Cosine scores (B, N) of raw query and candidate states in ``model``'s retrieval space."""
    return candidate_scores(in_retrieval_space(model, query), in_retrieval_space(model, cand_mem), scoring)


def retrieval_vectors(mem: torch.Tensor, scoring: Scoring | str) -> np.ndarray:
    """(B, m, H) states, already in the retrieval space -> L2-normalised float32 (B, D) for an
    inner-product index (inner product = cosine): the bank's keys and the server's queries."""
    import numpy as np

    flat = score_vectors(mem, scoring).float()  # (B, D)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp(min=EPS)
    return flat.numpy().astype(np.float32, copy=False)


def rank_with_query_model(model, records: Sequence, cache, scoring: Scoring | str = Scoring.FLATTENED,
                          batch_size: int = 16) -> list[list[int]]:
    """Every record's candidate indices, best first, by the query reasoner's cosine to their memory
    (``cache``: a :class:`~clara.model.memory_store.MemoryStore` of the candidates)."""
    import torch
    from tqdm.auto import tqdm

    cache.fill(model, (d for r in records for d in r.candidates))
    rankings: list[list[int]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(records), batch_size), desc="ranking", unit="batch", leave=False):
                for r in records[start : start + batch_size]:  # candidate counts may differ: one by one
                    mem = cache.candidates([r], model.device)  # (1, N, m, H)
                    query = model.encode_query([r.question])  # (1, m, H)
                    scores = model_scores(model, query, mem, scoring)[0]  # (N,)
                    rankings.append(torch.argsort(scores, descending=True, stable=True).tolist())
    finally:
        model.train(was_training)
    return rankings


def recall_at_k(ranked_indices: Sequence[int], pos_index: int | Iterable[int], k: int) -> float:
    """Fraction of the gold candidates (``pos_index``) that appear among the first ``k`` ranked."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    gold = {int(pos_index)} if isinstance(pos_index, int) else {int(i) for i in pos_index}
    if not gold:
        raise ValueError("pos_index is empty")
    top = {int(i) for i in list(ranked_indices)[:k]}
    return len(gold & top) / len(gold)


def recall_by_type(rankings: Sequence[Sequence[int]], records: Sequence,
                   ks: Sequence[int] = (1, 2, 3, 5)) -> dict[str, dict[str, float]]:
    """Mean Recall@k per question type and over all (records without ``pos_index`` are left out)."""
    if len(rankings) != len(records):
        raise ValueError(f"{len(rankings)} rankings for {len(records)} records")
    sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for ranking, r in zip(rankings, records):
        if not r.pos_index:
            continue
        for group in (r.type or "untyped", ALL):
            sums[group]["n"] += 1
            for k in ks:
                sums[group][f"R@{k}"] += recall_at_k(ranking, r.pos_index, min(k, len(ranking)))
    table = {}
    for group in sorted(sums, key=lambda g: (g == ALL, g)):
        n = sums[group]["n"]
        table[group] = {"n": int(n), **{f"R@{k}": sums[group][f"R@{k}"] / n for k in ks}}
    return table
