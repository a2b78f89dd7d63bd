"""Teachers for guided synthesis (DESIGN §4): one interface, four implementations.

The interface, its lexical coverage check and the exact `world` teacher live here; `hf` and
`openai` prompt a model (:mod:`clara.pretrain.prompt_teachers`, :mod:`clara.pretrain.openai_teacher`),
`cloze` needs no model at all (:mod:`clara.pretrain.text_teachers`), and :func:`clara.pretrain.teacher_factory.make_teacher` picks one by name.

A teacher lists a document's facts, writes simple QA (one fact per pair), complex QA (pairs
needing several facts), a paraphrase, optionally a continuation, and judges whether a fact is covered by some pair.
The verify-and-regenerate loop in :mod:`clara.pretrain.synth` only talks to this interface.
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass, field

from clara.errors import ConfigError
from clara.data.records import Document, QAPair
from clara.world import documents as wdoc
from clara.world.entities import CITY, ORG, PERSON
from clara.world.lexical import STOPWORDS, stem, words
from clara.world.questions import DESCRIPTION, SINGLE_HOP, states


@dataclass(frozen=True)
class Fact:
    """One atomic statement of a document; structured parts when the teacher knows them."""

    text: str
    subject: str = ""
    relation: str = ""
    value: str = ""


@dataclass(frozen=True)
class SynthDoc:
    """A document to synthesise from; ``facts`` are structured facts (world documents only)."""

    id: str
    title: str
    text: str
    entity_type: str = ""
    facts: tuple[dict, ...] = field(default=(), compare=False)
    next_text: str = ""  # the next passage of the same source document, if the corpus has one


    def as_text(self) -> str:
        return Document(text=self.text, title=self.title, id=self.id).as_text()


class Teacher(abc.ABC):
    """The synthesis interface. ``workers`` is how many documents may be in flight at once."""

    name = "teacher"
    workers = 1
    paraphrase_instruction: str | None = None  # None: the synthesis loop's rewrite instruction

    @abc.abstractmethod
    def facts(self, doc: SynthDoc) -> list[Fact]:
        """The document's atomic facts (what the QA must cover)."""

    @abc.abstractmethod
    def simple_qa(self, doc: SynthDoc, facts: list[Fact], attempt: int = 0) -> list[QAPair]:
        """One pair per fact; ``attempt`` > 0 when regenerating for facts still uncovered."""

    @abc.abstractmethod
    def complex_qa(self, doc: SynthDoc, facts: list[Fact]) -> list[QAPair]:
        """Pairs whose answers need two or more of the facts."""

    @abc.abstractmethod
    def paraphrase(self, doc: SynthDoc) -> str:
        """The document in other words, same meaning."""

    def continuation(self, doc: SynthDoc) -> str:
        """The text that follows the document (a continuation target), or "" for none."""
        return ""

    def covered(self, fact: Fact, pairs: list[QAPair]) -> bool:
        """Whether some pair states ``fact`` (lexical by default)."""
        return any(lexical_covers(fact, p) for p in pairs)

    def close(self) -> None:
        """Release resources (HTTP pools, models)."""


# ---------------------------------------------------------------------------- lexical coverage


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w not in STOPWORDS}


def lexical_covers(fact: Fact, pair: QAPair, min_recall: float = 0.6) -> bool:
    """A pair covers a fact when its answer states the fact's value (structured facts), or when
    most of the fact's content words appear in question + answer and the answer adds one of them."""
    if fact.value:
        subject_ok = not fact.subject or fact.subject.lower() in (pair.question + " " + pair.answer).lower()
        return subject_ok and states(pair.answer, fact.value)
    need = content_stems(fact.text)
    if not need:
        return False
    answer = content_stems(pair.answer)
    got = need & (content_stems(pair.question) | answer)
    return len(got) / len(need) >= min_recall and bool(need & answer)


# ---------------------------------------------------------------------------- world teacher

# (entity type, templates from clara.world.documents, relations the templates state) — a
# template is used only when all of its relations are facts of the document.
_WORLD_TEMPLATES = {
    PERSON: ((wdoc.PERSON_LEAD, ("occupation", "birth_year", "birth_city")),
             (wdoc.PERSON_BIRTH, ("birth_year", "birth_city")), (wdoc.PERSON_OCC, ("occupation",)),
             (wdoc.PERSON_EMPLOYER, ("employer",)), (wdoc.PERSON_FOUNDED, ("founded",)),
             (wdoc.PERSON_MENTOR, ("mentor",))),
    ORG: ((wdoc.ORG_LEAD, ("industry",)), (wdoc.ORG_FOUNDER, ("founder", "founding_year")),
          (wdoc.ORG_HQ, ("hq_city",))),
    CITY: ((wdoc.CITY_LEAD, ("country",)), (wdoc.CITY_POP, ("population",)), (wdoc.CITY_FOUNDED, ("founding_year",))),
}  # fmt: skip
_PLAIN = "{subject}: {relation} is {value}."


def _template_values(etype: str, facts: dict[str, str]) -> dict[str, str]:
    v = dict(facts)
    if etype == PERSON:
        v.update(year=facts.get("birth_year"), city=facts.get("birth_city"), org=facts.get("employer") or facts.get("founded"),
                 mentor=facts.get("mentor"))  # fmt: skip
        if "occupation" in facts:
            v.update(occ=facts["occupation"], a_occ=wdoc._article(facts["occupation"]))
    elif etype == ORG:
        v.update(fy=facts.get("founding_year"), founder=facts.get("founder"), city=facts.get("hq_city"))
        if "industry" in facts:
            v.update(ind=facts["industry"], a_ind=wdoc._article(facts["industry"]))
    else:
        v.update(country=facts.get("country"), pop=facts.get("population"), fy=facts.get("founding_year"))
    return {k: val for k, val in v.items() if val is not None}


def _pronoun(text: str) -> str | None:
    ws = words(text)
    she, he = sum(w in ("she", "her") for w in ws), sum(w in ("he", "his", "him") for w in ws)
    return "she" if she > he else "he" if he > she else None


def _render(template: str, name: str, etype: str, pronoun: str | None, values: dict, rng: random.Random) -> str:
    """A template filled with the name as subject, or a pronoun where the article used one."""
    p = pronoun if etype == PERSON else "it"
    use_name = p is None or rng.random() < 0.5
    subj = name if use_name else p
    pos = f"{name}'s" if p is None else {"he": "his", "she": "her"}.get(p, "its")
    obj = name if p is None else {"he": "him", "she": "her"}.get(p, "it")
    text = template.format(S=subj, p=name if use_name else p, pos=pos, Pos=pos, obj=obj, name=name, **values)
    return text[0].upper() + text[1:]


class WorldTeacher(Teacher):
    """Exact synthesis from the structured facts of world documents (no model involved)."""

    name = "world"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def _rng(self, doc: SynthDoc, purpose: str) -> random.Random:
        return random.Random(f"clara-synth/{self.seed}/{doc.id}/{purpose}")

    def facts(self, doc: SynthDoc) -> list[Fact]:
        if not doc.facts:
            raise ConfigError(f"document {doc.id!r} has no structured facts; the world teacher needs world documents "
                              "(--world-fresh N, or a file written by iter_fresh_documents); use --teacher hf|openai")  # fmt: skip
        return [Fact(f"{f['subject']} {f['relation']} {f['value']}", f["subject"], f["relation"], str(f["value"]))
                for f in doc.facts]  # fmt: skip

    def simple_qa(self, doc: SynthDoc, facts: list[Fact], attempt: int = 0) -> list[QAPair]:
        rng = self._rng(doc, f"simple/{attempt}")
        out = []
        for f in facts:
            phrasings = SINGLE_HOP.get((doc.entity_type, f.relation))
            q = rng.choice(phrasings).format(n=f.subject) if phrasings else f"What is the {f.relation} of {f.subject}?"
            out.append(QAPair(q, f.value))
        return out

    def complex_qa(self, doc: SynthDoc, facts: list[Fact]) -> list[QAPair]:
        rng = self._rng(doc, "complex")
        by_rel = {f.relation: f for f in facts}
        out = []
        if doc.entity_type == PERSON and {"occupation", "birth_city", "birth_year"} <= by_rel.keys():
            q = rng.choice(DESCRIPTION).format(occ=by_rel["occupation"].value, city=by_rel["birth_city"].value,
                                               year=by_rel["birth_year"].value)  # fmt: skip
            out.append(QAPair(q, doc.title))
        # pairs of facts asked together: the answer needs both
        order = list(facts)
        rng.shuffle(order)
        for a, b in zip(order[0::2], order[1::2]):
            qa, qb = self.simple_qa(doc, [a, b], attempt=rng.randrange(1 << 30))
            second = qb.question[0].lower() + qb.question[1:]
            out.append(QAPair(f"{qa.question.rstrip('?')}, and {second}", f"{a.value}; {b.value}"))
        return out

    def paraphrase(self, doc: SynthDoc) -> str:
        """The same facts in other templates and another order; every value is checked to be stated."""
        rng = self._rng(doc, "paraphrase")
        facts = {f["relation"]: str(f["value"]) for f in doc.facts}
        values = _template_values(doc.entity_type, facts)
        pronoun = _pronoun(doc.text)
        sentences, stated = [], set()
        for templates, relations in _WORLD_TEMPLATES.get(doc.entity_type, ()):
            if not set(relations) <= facts.keys() or set(relations) <= stated:
                continue
            usable = [t for t in templates if _fields(t) <= values.keys() | {"S", "p", "pos", "Pos", "obj", "name"}]
            if usable:
                sentences.append(_render(rng.choice(usable), doc.title, doc.entity_type, pronoun, values, rng))
                stated |= set(relations)
        rng.shuffle(sentences)
        text = " ".join(sentences)
        for rel, value in facts.items():  # anything no template could say is said plainly
            if not states(text, value):
                text += " " + _PLAIN.format(subject=doc.title, relation=rel.replace("_", " "), value=value)
        return text.strip()

    def covered(self, fact: Fact, pairs: list[QAPair]) -> bool:
        return any(lexical_covers(fact, p) for p in pairs)


def _fields(template: str) -> set[str]:
    import string

    return {name for _, name, _, _ in string.Formatter().parse(template) if name}

