"""Retrieval and answer evaluation on candidate lists (DESIGN §10).

    records = load_eval_records(world="out/world-0", splits=["test"])
    rankings = rank_with_query_model(model, records, cache)          # clara.model.scoring; or a baseline's
    table = recall_by_type(rankings, records, ks=(1, 2, 3, 5))      # clara.model.scoring: {type: {"n", "R@1", ...}}
    answers = answer_eval(model, records, cache, rankings, k=5)      # EM/F1/Cover-EM normal, oracle, no_gold

A *ranking* is every candidate index of a record, best first. Recall@k = |gold ∩ top-k| /
|gold| against ``pos_index``, averaged per question type and over all (``"all"``).
*Oracle*: the gold documents are guaranteed among the k selected (each missing gold
replaces the lowest-ranked non-gold pick); *normal*: the retriever's top-k as is; *no_gold*: its top-k non-gold candidates (wrong memory).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Sequence

from clara.errors import DataError
from clara.answers import answer_scores

if TYPE_CHECKING:
    from clara.model.memory_cache import MemoryCache
    from clara.model.clara_model import ClaraModel

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 2, 3, 5)


def load_eval_records(
    *,
    world: str | None = None,
    splits: Sequence[str] = ("test",),
    data: str | None = None,
    corpus: str | None = None,
    candidates: str | None = None,
    types: Sequence[str] | None = None,
    limit: int | None = None,
    kind: str = "eval",
) -> list:
    """Question records with candidates, from a world directory's splits or a JSONL file.

    World questions carry ``doc_ids``, resolved against the world's ``documents.jsonl``.
    """
    from pathlib import Path

    from clara.data.jsonl import read_records

    if bool(world) == bool(data):
        raise DataError("give exactly one of a world directory (--world) or a data file (--data)")
    records = []
    if world:
        for split in splits:
            path = Path(world) / "questions" / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path}: no such split file; splits are train, dev, test, test_unseen")
            records += read_records(path, kind, corpus=Path(world) / "documents.jsonl")
    else:
        records = read_records(data, kind, corpus=corpus, candidates=candidates)
    if types:
        records = [r for r in records if r.type in types]
    records = records[:limit] if limit else records
    if not records:
        raise DataError(f"{world or data}: no questions selected (types {list(types or [])})")
    return records


def format_recall_tables(tables: dict[str, dict[str, dict[str, float]]], ks: Sequence[int] = DEFAULT_KS) -> str:
    """Markdown: one row per (retriever, question type)."""
    head = "| retriever | type | n | " + " | ".join(f"R@{k}" for k in ks) + " |"
    lines = [head, "|" + "---|" * (3 + len(ks))]
    for name, table in tables.items():
        for group, row in table.items():
            cells = " | ".join(f"{row[f'R@{k}']:.3f}" for k in ks)
            lines.append(f"| {name} | {group} | {row['n']} | {cells} |")
    return "\n".join(lines)


def oracle_selection(ranking: Sequence[int], pos_index: Sequence[int], k: int) -> list[int]:
    """The top-k of ``ranking`` with every gold index guaranteed in (at most k golds)."""
    picked = list(ranking[:k])
    missing = [g for g in pos_index if g not in picked][:k]
    for g in missing:
        # replace the lowest-ranked pick that is not gold
        for j in range(len(picked) - 1, -1, -1):
            if picked[j] not in pos_index:
                picked[j] = g
                break
    return picked


def no_gold_selection(ranking: Sequence[int], pos_index: Sequence[int], k: int) -> list[int]:
    """The k best-ranked candidates that are not gold: wrong memory, the DESIGN §11 control."""
    return [c for c in ranking if c not in pos_index][:k]


SELECTIONS = {
    "normal": lambda ranking, pos, k: list(ranking[:k]),
    "oracle": oracle_selection,
    "no_gold": no_gold_selection,
}


def answer_eval(
    model: ClaraModel,
    records: Sequence,
    cache: MemoryCache,
    rankings: Sequence[Sequence[int]],
    *,
    k: int = 5,
    settings: Sequence[str] = ("normal", "oracle", "no_gold"),
    batch_size: int = 8,
    max_new_tokens: int = 32,
    prompt: str = "direct",
) -> dict[str, Any]:
    """EM / F1 / Cover-EM of the generator reading the memory of the k selected candidates, asked in the
    form ``prompt`` names (``joint.prompt`` of the run that trained it).

    normal: the retriever's top-k; oracle: the gold guaranteed among them; no_gold: the top-k with
    every gold left out (wrong memory: equal scores to normal mean the memory is not read).
    """
    import torch

    from clara.model.prompts import extract_answer
    from clara.model.prompts import generate_asked

    unknown = [s for s in settings if s not in SELECTIONS]
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}; use one of {sorted(SELECTIONS)}")
    preds: dict[str, list[str]] = {s: [] for s in settings}
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        mems = [cache.candidates([r], model.device)[0] for r in batch]  # (N, m, H) each, looked up once
        for setting in settings:
            blocks = [mem[torch.tensor(SELECTIONS[setting](ranking, r.pos_index, min(k, len(r.candidates))))]
                      for r, ranking, mem in zip(batch, rankings[start : start + batch_size], mems)]  # (k, m, H) each
            replies = generate_asked(model, [r.question for r in batch], torch.stack(blocks), prompt,
                                     max_new_tokens=max_new_tokens)
            preds[setting] += [extract_answer(t) for t in replies]
    golds = [list(r.answers) for r in records]
    return {s: {**answer_scores(preds[s], golds), "predictions": preds[s]} for s in settings}
