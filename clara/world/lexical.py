"""Word-level helpers: content words, a crude stemmer, and a word-overlap scorer.

Used to *verify* the world (a hidden two-hop document shares no content word with its
question) and to measure how far pure word matching gets on the candidates.
"""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or but as is are was were be been being
    who whom whose what which when where why how does do did has have had it its he she his
    her him they their them this that these those there than then into about over under
    after before while s not no also one""".split()
)
_SUFFIXES = ("ings", "ing", "ers", "er", "ed", "es", "s")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def stem(word: str) -> str:
    """Strip one common suffix so that "founded"/"founder"/"founds" meet at "found"."""
    for suf in _SUFFIXES:
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)]
    return word


def content_words(text: str) -> set[str]:
    """Stems of the non-stopwords of ``text``."""
    return {stem(w) for w in words(text) if w not in STOPWORDS}


def shared_content_words(question: str, document: str) -> set[str]:
    return content_words(question) & content_words(document)


def overlap_scores(question: str, documents: list[str]) -> list[int]:
    """How many distinct question content words each document contains."""
    q = content_words(question)
    return [len(q & content_words(d)) for d in documents]


def overlap_top1(question: str, documents: list[str]) -> int:
    """Index of the best document by overlap; ties go to the earliest candidate."""
    scores = overlap_scores(question, documents)
    return max(range(len(scores)), key=lambda i: (scores[i], -i))
