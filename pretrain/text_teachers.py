"""Teacher-free SCP targets for any corpus (issue 27): cloze QA, reconstruction, continuation.

Stage 1 on a user's own text needs no LLM teacher with :class:`ClozeTeacher`
(``clara pretrain synth --corpus passages.jsonl --teacher cloze``). Per passage it writes:

- **cloze QA**: in each sentence one salient span (a date, a number, or a run of capitalised
  words that does not open the sentence) is blanked, and the span is the answer. A span is kept
  only if it occurs exactly once in the passage (so the blank has one answer) and not in the
  question. One pair per sentence that has such a span; the span is a stable draw per sentence.
- **reconstruction**: the passage itself, asked for with :data:`RECONSTRUCTION_INSTRUCTION`
  (written as the ``paraphrase`` record, so every trainer that reads paraphrases reads it).
- **continuation**: the next passage of the same source document, where the corpus has one
  (``SynthDoc.next_text``, filled by :func:`clara.pretrain.synth.read_documents` from adjacent
  passages ``ID#n``, ``ID#n+1``), asked for with :data:`CONTINUATION_INSTRUCTION`.

A passage without any blankable span is dropped by the synthesis loop ("the teacher found no
facts"), so the coverage summary says how much of a corpus the cloze targets reach.
"""

from __future__ import annotations

import random
import re

from clara.data.records import QAPair
from clara.pretrain.prompt_teachers import split_sentences
from clara.pretrain.teachers import Fact, SynthDoc, Teacher
from clara.world.lexical import STOPWORDS

BLANK = "____"
CLOZE_QUESTION = "Fill in the blank: {sentence}"
RECONSTRUCTION_INSTRUCTION = "Repeat the document word for word."
CONTINUATION_INSTRUCTION = "Continue the text after the document."

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE = re.compile(rf"\b(?:\d{{1,2}} {_MONTH}(?:,? \d{{3,4}})?|{_MONTH} \d{{1,2}}(?:, \d{{3,4}})?|{_MONTH} \d{{3,4}})\b")
_NUMBER = re.compile(r"(?<![\w.,-])\d[\d,]*(?:\.\d+)?(?:\s?(?:%|percent|million|billion|thousand))?(?![\w])")
# Capitalised words, joined by a few lower-case particles ("Bank of England", "Leonardo da Vinci").
_PARTICLES = ("of", "the", "de", "da", "la", "le", "von", "van", "del", "al")
_NAMED = re.compile(rf"\b[A-Z][\w'’-]*(?:(?:\s+(?:{'|'.join(_PARTICLES)}))*\s+[A-Z][\w'’-]*)*")
_KINDS = (("date", _DATE), ("number", _NUMBER), ("named", _NAMED))


def occurrences(text: str, span: str) -> int:
    """How often ``span`` occurs in ``text`` as whole words ("1975" is not inside "19750")."""
    return len(re.findall(rf"(?<![\w]){re.escape(span)}(?![\w])", text))


def salient_spans(sentence: str) -> list[tuple[str, int, str]]:
    """Candidate (span, start, kind) of one sentence, dates before the numbers inside them."""
    taken: list[tuple[int, int]] = []
    out = []
    for kind, pattern in _KINDS:
        for m in pattern.finditer(sentence):
            a, b = m.span()
            span = m.group(0).strip(" ,")
            if not span or any(a < y and x < b for x, y in taken):
                continue
            if kind == "named":
                span, a = _trim_name(span, a)
                if not _is_name(span, opens=a == 0 or sentence[:a].rstrip().endswith((".", ":", '"'))):
                    continue
            taken.append((a, b))
            out.append((span, a, kind))
    return out


def _trim_name(span: str, start: int) -> tuple[str, int]:
    """Drop leading function words a sentence opened with ("In the UK" -> "UK")."""
    ws = span.split(" ")
    while len(ws) > 1 and (ws[0].lower() in STOPWORDS or ws[0] in _PARTICLES):
        start += len(ws[0]) + 1
        ws = ws[1:]
    return " ".join(ws), start


def _is_name(span: str, opens: bool) -> bool:
    ws = span.split(" ")
    if ws[0].lower() in STOPWORDS:
        return False
    if len(ws) == 1:  # one word: not the sentence's first, and no short abbreviation ("St", "Dr") unless an acronym
        return not opens and (len(span) > 3 or span.isupper())
    return len(ws[-1]) > 1  # "William B" is a name cut at an initial's full stop


def cloze_pairs(text: str, title: str, key: str) -> list[tuple[str, QAPair]]:
    """(sentence, pair) for every sentence of ``text`` with a blankable span; stable per ``key``."""
    out = []
    sentences = [s for line in text.splitlines() for s in split_sentences(line)]
    for i, sentence in enumerate(sentences):
        usable = []
        for span, start, _ in salient_spans(sentence):
            question = CLOZE_QUESTION.format(sentence=sentence[:start] + BLANK + sentence[start + len(span):])
            if occurrences(text, span) == 1 and occurrences(question, span) == 0 and span != title:
                usable.append(QAPair(question, span))
        if usable:
            out.append((sentence, random.Random(f"cloze/{key}/{i}").choice(usable)))
    return out


class ClozeTeacher(Teacher):
    """Cloze QA, reconstruction and continuation from the text alone (no model involved)."""

    name = "cloze"
    paraphrase_instruction = RECONSTRUCTION_INSTRUCTION

    def facts(self, doc: SynthDoc) -> list[Fact]:
        return [Fact(sentence, value=pair.answer) for sentence, pair in cloze_pairs(doc.text, doc.title, doc.id)]

    def simple_qa(self, doc: SynthDoc, facts: list[Fact], attempt: int = 0) -> list[QAPair]:
        wanted = {f.text for f in facts}
        return [pair for sentence, pair in cloze_pairs(doc.text, doc.title, doc.id) if sentence in wanted]

    def complex_qa(self, doc: SynthDoc, facts: list[Fact]) -> list[QAPair]:
        return []

    def paraphrase(self, doc: SynthDoc) -> str:
        return doc.text

    def continuation(self, doc: SynthDoc) -> str:
        return doc.next_text

    def covered(self, fact: Fact, pairs: list[QAPair]) -> bool:
        return any(p.answer == fact.value and BLANK in p.question for p in pairs)
