"""Answer metrics (DESIGN §10): a prediction against its gold answers.

All answer metrics compare *normalised* strings, as in SQuAD: lowercase, drop ASCII
punctuation, drop the articles a/an/the, collapse whitespace. Each takes a prediction and
a list of acceptable gold answers and returns the best score over the golds.

- ``exact_match``: normalised prediction == normalised gold.
- ``f1``: token-overlap F1 between normalised prediction and gold (bag of tokens).
- ``cover_em``: the normalised gold's tokens appear in the normalised prediction as a
  *contiguous token run* ("the capital is paris france" covers "Paris, France"; "parisian"
  does not cover "Paris"). It forgives verbose answers that still contain the gold.
- ``char_sim``: character similarity between normalised prediction and gold, ``2·M / (|p| + |g|)`` with M the
  characters of ``difflib``'s matching blocks (1 = equal). A graded view of spelling: a memory that
  holds a name but spells it "Teibath" for "Teisath" scores 0.86 here and 0 in EM.
"""

from __future__ import annotations

import collections
import difflib
import re
import string
from typing import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, strip punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answers given")
    return golds


def exact_match(pred: str, golds: str | Iterable[str]) -> float:
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _golds(golds)))


def _f1_single(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:  # SQuAD convention: both empty counts as a match
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1(pred: str, golds: str | Iterable[str]) -> float:
    p = normalize_answer(pred).split()
    return max(_f1_single(p, normalize_answer(g).split()) for g in _golds(golds))


def _contains_run(haystack: list[str], needle: list[str]) -> bool:
    if not needle:
        return not haystack
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def cover_em(pred: str, golds: str | Iterable[str]) -> float:
    p = normalize_answer(pred).split()
    return float(any(_contains_run(p, normalize_answer(g).split()) for g in _golds(golds)))


def char_sim(pred: str, golds: str | Iterable[str]) -> float:
    p = normalize_answer(pred)
    return max(difflib.SequenceMatcher(None, p, normalize_answer(g), autojunk=False).ratio() for g in _golds(golds))


def answer_scores(preds: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean EM, F1, Cover-EM and char similarity over a set of predictions, with the count ``n``."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} gold lists")
    n = len(preds)
    if n == 0:
        return {"n": 0, "em": 0.0, "f1": 0.0, "cover_em": 0.0, "char_sim": 0.0}
    return {
        "n": n,
        "em": sum(exact_match(p, g) for p, g in zip(preds, golds)) / n,
        "f1": sum(f1(p, g) for p, g in zip(preds, golds)) / n,
        "cover_em": sum(cover_em(p, g) for p, g in zip(preds, golds)) / n,
        "char_sim": sum(char_sim(p, g) for p, g in zip(preds, golds)) / n,
    }
