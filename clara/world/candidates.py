"""Candidate lists: gold documents + hard negatives + a few random documents.

Hard negatives share the question's words under other relations, in this order:
articles that name a gold entity (an organisation's article listing the person, a mentee's
article naming the mentor), entities with near-identical names, entities sharing an
attribute with a gold entity (same employer, birth city, birth year, occupation, mentor,
headquarters, industry, country) and, for descriptions, everyone sharing one of the cues.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from clara.world.entities import CITY, ORG, PERSON, KnowledgeBase
from clara.world.questions import states

_SHARED_ATTRS = {
    PERSON: ("employer", "birth_city", "birth_year", "occupation", "mentor"),
    ORG: ("hq_city", "industry", "founding_year"),
    CITY: ("country",),
}
_REFERENCES = ("birth_city", "employer", "founded", "mentor", "founder", "hq_city")
_LISTS = ("notable_employees", "notable_orgs")


def _skeleton(name: str) -> str:
    # Names that differ in one vowel share a skeleton: "Mara Kellen" ~ "Mara Kellan".
    return re.sub(r"[aeiouy]", "*", name.lower())


class CandidateIndex:
    """Precomputed relations between entities, so candidate lists cost O(candidates)."""

    def __init__(self, kb: KnowledgeBase, texts: dict[str, str]):
        self.kb = kb
        self.ids = list(kb.entities)
        self.mentioned_by: dict[str, set[str]] = defaultdict(set)
        for e in kb.entities.values():
            refs = [e.attrs.get(k) for k in _REFERENCES] + [i for k in _LISTS for i in e.attrs.get(k, ())]
            for ref in refs:
                if ref and states(texts[e.id], kb.name(ref)):
                    self.mentioned_by[ref].add(e.id)
        self.similar: dict[str, list[str]] = defaultdict(list)
        self.by_value: dict[tuple, list[str]] = defaultdict(list)
        for e in kb.entities.values():
            self.similar[_skeleton(e.name)].append(e.id)
            if e.type == PERSON:
                self.similar["first:" + e.name.split()[0]].append(e.id)
            for attr in _SHARED_ATTRS[e.type]:
                if e.attrs.get(attr) is not None:
                    self.by_value[(e.type, attr, e.attrs[attr])].append(e.id)

    def hard_negatives(self, entity_id: str, rng: random.Random, limit: int) -> list[str]:
        """Up to ``limit`` entity ids per tier confusable with ``entity_id``, most confusable first."""
        e = self.kb[entity_id]
        tiers = [sorted(self.mentioned_by[entity_id]), list(self.similar[_skeleton(e.name)])]
        if e.type == PERSON:
            tiers.append(list(self.similar["first:" + e.name.split()[0]]))
        shared = []
        for attr in _SHARED_ATTRS[e.type]:
            if e.attrs.get(attr) is not None:
                same = self.by_value[(e.type, attr, e.attrs[attr])]
                shared += rng.sample(same, min(limit, len(same)))
        tiers.append(shared)
        out = []
        for tier in tiers:
            out += rng.sample(tier, min(limit, len(tier)))
        return out


def choose_candidates(question: dict, index: CandidateIndex, n: int, rng: random.Random) -> list[str]:
    """``n`` distinct entity ids: the gold entities + hard negatives + random ones, shuffled."""
    gold = list(question["entity_ids"])
    n_random = (n - len(gold)) // 5
    seen = set(gold)
    chosen = list(gold)
    per_gold = [index.hard_negatives(g, rng, n) for g in gold]
    # Interleave the gold entities' lists so that each gets its most confusable negatives in.
    for group in zip(*[iter_pad(lst, max(map(len, per_gold))) for lst in per_gold]):
        for eid in group:
            if eid is not None and eid not in seen and len(chosen) < n - n_random:
                seen.add(eid)
                chosen.append(eid)
    while len(chosen) < n:  # rejection sampling: n is far below the number of entities
        eid = rng.choice(index.ids)
        if eid not in seen:
            seen.add(eid)
            chosen.append(eid)
    rng.shuffle(chosen)
    return chosen


def iter_pad(items: list, length: int) -> list:
    return items + [None] * (length - len(items))
