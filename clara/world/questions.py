"""Questions over the world, each verified against the document texts.

Five kinds (DESIGN §7): single_hop, description (cues each shared by hard negatives, the
combination unique), comparison, two_hop_linked (the bridge document names the first
entity) and two_hop_hidden (the second document shares no content word with the
question, so only a second search with the bridge entity's name can find it).
Every answer is checked to be stated in the gold document that carries it.
"""

from __future__ import annotations

import random
from collections import Counter

from clara.world.entities import CITY, ORG, PERSON, Entity, KnowledgeBase
from clara.world.lexical import shared_content_words

# (entity type, relation) -> phrasings; {n} is the entity's name.
SINGLE_HOP = {
    (PERSON, "birth_year"): ("What year was {n} born?", "In which year was {n} born?", "When was {n} born?"),
    (PERSON, "birth_city"): ("Which city was {n} born in?", "Where was {n} born?", "What is the birthplace of {n}?"),
    (PERSON, "occupation"): (
        "What is {n}'s occupation?", "What does {n} do for a living?", "What is the profession of {n}?",
    ),
    (PERSON, "employer"): ("Which organisation does {n} work for?", "Who employs {n}?", "Where does {n} work?"),
    (PERSON, "mentor"): ("Who was {n}'s mentor?", "Under whom did {n} train?", "Who taught {n}?"),
    (PERSON, "founded"): ("Which organisation did {n} found?", "What did {n} establish?"),
    (ORG, "founder"): ("Who founded {n}?", "Who is the founder of {n}?"),
    (ORG, "hq_city"): (
        "Which city is {n} headquartered in?", "Where is {n} based?", "In which city does {n} have its head office?",
    ),
    (ORG, "founding_year"): ("In what year was {n} founded?", "When was {n} established?"),
    (ORG, "industry"): ("What industry does {n} operate in?", "What line of business is {n} in?"),
    (CITY, "country"): ("Which country is {n} in?", "In which country does {n} lie?"),
    (CITY, "population"): ("What is the population of {n}?", "How many people live in {n}?"),
    (CITY, "founding_year"): ("When was {n} founded?", "In what year was {n} established?"),
}  # fmt: skip
# Linked: (first type, bridge relation, second relation) -> phrasings; {n} is the first entity.
LINKED = {
    (PERSON, "employer", "hq_city"): (
        "In which city is the organisation that {n} works for headquartered?",
        "Where is the employer of {n} based?",
    ),
    (ORG, "founder", "birth_year"): (
        "In what year was the founder of {n} born?", "When was the person who founded {n} born?",
    ),
    (ORG, "hq_city", "country"): ("In which country is the city where {n} has its headquarters?",),
}  # fmt: skip
# Hidden: phrasings use words the second document avoids; the first that passes is used.
HIDDEN = {
    (PERSON, "mentor", "birth_year"): (
        "In what year was {n}'s mentor born?", "When was the teacher of {n} born?",
        "What year did {n}'s teacher come into the world?",
    ),
    (PERSON, "mentor", "occupation"): (
        "What does {n}'s mentor do for a living?", "What is the profession of the person who taught {n}?",
        "What trade does {n}'s teacher practise?",
    ),
    (PERSON, "mentor", "birth_city"): (
        "What is the hometown of {n}'s mentor?", "Which town does {n}'s teacher come from?",
    ),
    (PERSON, "employer", "industry"): (
        "What industry is {n}'s employer in?", "What line of business is the organisation that employs {n} in?",
        "In what industry does {n}'s employer operate?",
    ),
    (PERSON, "employer", "hq_city"): (
        "Which town is home to the employer of {n}?",
        "In which city does the organisation that employs {n} have its head office?",
        "Where is {n}'s employer headquartered?",
    ),
    (PERSON, "employer", "founder"): ("Who started the organisation that employs {n}?", "Who set up {n}'s employer?"),
    (PERSON, "birth_city", "country"): (
        "In which country lies the birthplace of {n}?", "What nation is {n}'s hometown part of?",
    ),
    (PERSON, "birth_city", "population"): (
        "How many inhabitants does {n}'s hometown have?", "What is the population of the place where {n} was born?",
    ),
}  # fmt: skip
DESCRIPTION = (
    "Which {occ} was born in {city} in {year}?",
    "Which {occ} born in {year} comes from {city}?",
    "Name the {occ} who was born in {city} in {year}.",
)
# Question-side names of occupations: with these, word matching cannot use the occupation.
OCCUPATION_PARAPHRASES = {
    "glassblower": "glass artist", "cartographer": "mapmaker", "violinist": "fiddler",
    "botanist": "plant scientist", "architect": "building designer", "chemist": "chemical scientist",
    "sculptor": "statue carver", "translator": "interpreter", "astronomer": "stargazer",
    "pharmacist": "druggist", "bookbinder": "binder of books", "surveyor": "land measurer",
    "clockmaker": "maker of clocks", "geologist": "earth scientist", "weaver": "loom artisan",
    "engraver": "etcher",
}  # fmt: skip
COMPARISON = {
    (PERSON, "birth_year"): (("Who was born earlier, {a} or {b}?", min), ("Who was born later, {a} or {b}?", max),
                             ("Which of {a} and {b} is older?", min)),
    (ORG, "founding_year"): (("Which was founded first, {a} or {b}?", min),
                             ("Which organisation is younger, {a} or {b}?", max)),
    (CITY, "population"): (("Which city has more inhabitants, {a} or {b}?", max),
                           ("Which has the smaller population, {a} or {b}?", min)),
}  # fmt: skip


def states(text: str, answer: str) -> bool:
    """True when ``answer`` occurs in ``text`` as whole words ("1975" not inside "19750")."""
    start = text.find(answer)
    while start >= 0:
        end = start + len(answer)
        if (start == 0 or not text[start - 1].isalnum()) and (end == len(text) or not text[end].isalnum()):
            return True
        start = text.find(answer, start + 1)
    return False


def answer_strings(entity: Entity, relation: str, kb: KnowledgeBase) -> list[str] | None:
    value = entity.attrs.get(relation)
    if value is None:
        return None
    if isinstance(value, str) and value in kb.entities:
        return [kb.name(value)]
    if relation == "population":
        return [f"{value:,}", str(value)]
    return [str(value)]


def entity_relations(entity: Entity) -> list[str]:
    return [rel for (kind, rel) in SINGLE_HOP if kind == entity.type and entity.attrs.get(rel) is not None]


class QuestionMaker:
    """Draws verified questions; ``texts`` maps entity id -> document text."""

    def __init__(self, kb: KnowledgeBase, texts: dict[str, str], rng: random.Random):
        self.kb, self.texts, self.rng = kb, texts, rng

    def _record(self, kind: str, relation: str, question: str, answers: list[str], gold: list[str]) -> dict:
        return {"question": question, "answers": answers, "type": kind, "relation": relation, "entity_ids": gold}

    def single_hop(self, entity: Entity, relation: str) -> dict | None:
        answers = answer_strings(entity, relation, self.kb)
        if not answers or not states(self.texts[entity.id], answers[0]):
            return None  # the fact was dropped from the article to fit max_words
        q = self.rng.choice(SINGLE_HOP[(entity.type, relation)]).format(n=entity.name)
        return self._record("single_hop", relation, q, answers, [entity.id])

    def description(self, person: Entity, cue_counts: Counter, combo_counts: Counter) -> dict | None:
        a = person.attrs
        cues = (("occupation", a["occupation"]), ("birth_city", a["birth_city"]), ("birth_year", a["birth_year"]))
        if combo_counts[tuple(v for _, v in cues)] != 1 or any(cue_counts[c] < 2 for c in cues):
            return None
        occ = a["occupation"]
        if self.rng.random() < 0.5:
            occ = OCCUPATION_PARAPHRASES[occ]
        q = self.rng.choice(DESCRIPTION).format(occ=occ, city=self.kb.name(a["birth_city"]), year=a["birth_year"])
        return self._record("description", "occupation+birth_city+birth_year", q, [person.name], [person.id])

    def comparison(self, a: Entity, b: Entity) -> dict | None:
        relation = next(rel for (kind, rel) in COMPARISON if kind == a.type)
        if a.attrs[relation] == b.attrs[relation]:
            return None
        template, pick = self.rng.choice(COMPARISON[(a.type, relation)])
        winner = pick((a, b), key=lambda e: e.attrs[relation])
        return self._record("comparison", relation, template.format(a=a.name, b=b.name), [winner.name], [a.id, b.id])

    def _second_hop(self, first: Entity, bridge_rel: str, rel: str) -> tuple[Entity, list[str]] | None:
        bridge_id = first.attrs.get(bridge_rel)
        if bridge_id is None:
            return None
        second = self.kb[bridge_id]
        answers = answer_strings(second, rel, self.kb)
        if not answers or not states(self.texts[second.id], answers[0]):
            return None
        if not states(self.texts[first.id], second.name):
            return None  # the first article must lead to the bridge entity
        return second, answers

    def linked(self, first: Entity, bridge_rel: str, rel: str) -> dict | None:
        hop = self._second_hop(first, bridge_rel, rel)
        if hop is None or not states(self.texts[hop[0].id], first.name):
            return None
        q = self.rng.choice(LINKED[(first.type, bridge_rel, rel)]).format(n=first.name)
        return self._record("two_hop_linked", f"{bridge_rel}>{rel}", q, hop[1], [first.id, hop[0].id])

    def hidden(self, first: Entity, bridge_rel: str, rel: str) -> dict | None:
        hop = self._second_hop(first, bridge_rel, rel)
        if hop is None:
            return None
        second, answers = hop
        phrasings = list(HIDDEN[(first.type, bridge_rel, rel)])
        self.rng.shuffle(phrasings)
        for template in phrasings:
            q = template.format(n=first.name)
            if not shared_content_words(q, self.texts[second.id]):
                return self._record("two_hop_hidden", f"{bridge_rel}>{rel}", q, answers, [first.id, second.id])
        return None


def _cue_counters(people: list[Entity]) -> tuple[Counter, Counter]:
    cues, combos = Counter(), Counter()
    for p in people:
        a = p.attrs
        for key in ("occupation", "birth_city", "birth_year"):
            cues[(key, a[key])] += 1
        combos[(a["occupation"], a["birth_city"], a["birth_year"])] += 1
    return cues, combos


def _sample(rng: random.Random, items: list, cap: int) -> list:
    items = [q for q in items if q is not None]
    return rng.sample(items, min(cap, len(items)))


def _balanced_sample(rng: random.Random, items: list, cap: int) -> list:
    """Up to ``cap`` items, taken round-robin over relations so that no path dominates."""
    groups: dict[str, list] = {}
    for q in items:
        if q is not None:
            groups.setdefault(q["relation"], []).append(q)
    for group in groups.values():
        rng.shuffle(group)
    out: list = []
    while len(out) < cap and any(groups.values()):
        for relation in sorted(groups):
            if groups[relation] and len(out) < cap:
                out.append(groups[relation].pop())
    return out


def generate_questions(kb: KnowledgeBase, texts: dict[str, str], rng: random.Random) -> list[dict]:
    """All question kinds for one world, in a deterministic order."""
    maker = QuestionMaker(kb, texts, rng)
    entities = list(kb.entities.values())
    n = len(entities)
    single = []
    for e in entities:
        rels = entity_relations(e)
        single += [maker.single_hop(e, r) for r in rng.sample(rels, min(2, len(rels)))]
    people = kb.of_type(PERSON)
    cues, combos = _cue_counters(people)
    described = [maker.description(p, cues, combos) for p in people]
    compared = []
    for kind in (PERSON, ORG, CITY):
        group = kb.of_type(kind)
        for _ in range(len(group) // 2):
            a, b = rng.sample(group, 2)
            compared.append(maker.comparison(a, b))
    linked = [maker.linked(e, br, r) for e in entities for (k, br, r) in LINKED if k == e.type]
    hidden = [maker.hidden(p, br, r) for p in people for (_, br, r) in HIDDEN]
    return (_sample(rng, single, 2 * n) + _sample(rng, described, n // 3) + _sample(rng, compared, n // 3)
            + _balanced_sample(rng, linked, n // 2) + _balanced_sample(rng, hidden, n // 2))  # fmt: skip
