"""The knowledge base: people, organisations and cities with attributes and relations.

Relations point by entity id (a person's employer is an organisation id). Value ranges
shrink with the world so that every cue (occupation, birth city, birth year) is shared by
several entities even in small worlds: descriptions need each cue to have hard negatives.
``world_ranges`` gives a small knowledge base the ranges of a larger world instead (the fresh
stream's 40-entity batches: with their own, every birth year is in the 1990s, no one has a
mentor, and 4 occupations and 3 industries occur).
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass, field

from clara.world.names import NameGenerator

PERSON, ORG, CITY = "person", "organisation", "city"

OCCUPATIONS = (
    "glassblower", "cartographer", "violinist", "botanist", "architect", "chemist", "sculptor",
    "translator", "astronomer", "pharmacist", "bookbinder", "surveyor", "clockmaker",
    "geologist", "weaver", "engraver",
)  # fmt: skip
INDUSTRIES = (
    "shipbuilding", "textiles", "pharmaceuticals", "publishing", "mining", "software",
    "brewing", "aviation", "ceramics", "insurance",
)  # fmt: skip
LAST_YEAR = 2020


@dataclass
class Entity:
    id: str
    type: str  # PERSON | ORG | CITY
    name: str
    attrs: dict = field(default_factory=dict)
    pronoun: str = "it"  # he | she for people

    @property
    def possessive(self) -> str:
        return {"he": "his", "she": "her"}.get(self.pronoun, "its")


@dataclass
class KnowledgeBase:
    entities: dict[str, Entity] = field(default_factory=dict)

    def add(self, entity: Entity) -> Entity:
        self.entities[entity.id] = entity
        return entity

    def __getitem__(self, entity_id: str) -> Entity:
        return self.entities[entity_id]

    def of_type(self, kind: str) -> list[Entity]:
        return [e for e in self.entities.values() if e.type == kind]

    def name(self, entity_id: str | None) -> str | None:
        return None if entity_id is None else self.entities[entity_id].name



def _counts(n: int) -> tuple[int, int, int]:
    cities = max(3, round(0.15 * n))
    orgs = max(2, round(0.2 * n))
    return n - cities - orgs, orgs, cities


def _maybe_variant(names: NameGenerator, rng: random.Random, earlier: list[Entity], p: float, make, word: int = -1):
    """With probability ``p`` a near-identical copy of an earlier name (a hard negative)."""
    if earlier and rng.random() < p:
        name = names.variant(rng.choice(earlier).name, word=word)
        if name:
            return name
    return make()


def _make_cities(kb: KnowledgeBase, rng: random.Random, names: NameGenerator, n: int, prefix: str,
                 scale: int) -> None:
    countries = [names.country() for _ in range(max(2, min(8, scale // 4)))]
    made: list[Entity] = []
    for i in range(n):
        name = _maybe_variant(names, rng, made, 0.2, names.city)
        attrs = {
            "country": rng.choice(countries),
            "population": int(10 ** rng.uniform(3.5, 6.3)) // 100 * 100,
            "founding_year": rng.randint(700, 1899),
            "notable_orgs": [],
        }
        made.append(kb.add(Entity(f"{prefix}city-{i:05d}", CITY, name, attrs)))


def _make_people(kb: KnowledgeBase, rng: random.Random, names: NameGenerator, n: int, prefix: str,
                 scale: int) -> None:
    cities = [c.id for c in kb.of_type(CITY)]
    occupations = OCCUPATIONS[: max(4, min(len(OCCUPATIONS), scale // 8))]
    span = max(10, min(70, scale // 3))
    made: list[Entity] = []
    for i in range(n):
        r = rng.random()
        if made and r < 0.35:
            name = names.variant(rng.choice(made).name) or names.person()
        elif made and r < 0.5:  # shared first name, new surname: a lexical confuser
            name = names.person(first=rng.choice(made).name.split()[0])
        else:
            name = names.person()
        attrs = {
            "birth_year": rng.randint(1999 - span + 1, 1999),
            "birth_city": rng.choice(cities),
            "occupation": rng.choice(occupations),
            "employer": None,
            "founded": None,
            "mentor": None,
        }
        made.append(kb.add(Entity(f"{prefix}person-{i:05d}", PERSON, name, attrs, rng.choice(("he", "she")))))
    by_age = sorted(made, key=lambda q: q.attrs["birth_year"])
    years = [q.attrs["birth_year"] for q in by_age]
    for p in made:
        n_older = bisect.bisect_right(years, p.attrs["birth_year"] - 12)  # mentors are 12+ years older
        if n_older and rng.random() < 0.5:
            p.attrs["mentor"] = by_age[rng.randrange(n_older)].id


def _make_orgs(kb: KnowledgeBase, rng: random.Random, names: NameGenerator, n: int, prefix: str,
               scale: int) -> None:
    people = kb.of_type(PERSON)
    cities = [c.id for c in kb.of_type(CITY)]
    industries = INDUSTRIES[: max(3, min(len(INDUSTRIES), scale // 4))]
    founders = rng.sample(people, min(n, len(people)))
    made: list[Entity] = []
    for i in range(n):
        founder = founders[i % len(founders)]
        name = _maybe_variant(names, rng, made, 0.2, names.organisation, word=0)
        founded = min(LAST_YEAR, founder.attrs["birth_year"] + rng.randint(22, 45))
        attrs = {
            "founder": founder.id,
            "hq_city": rng.choice(cities),
            "founding_year": founded,
            "industry": rng.choice(industries),
            "notable_employees": [],
        }
        org = kb.add(Entity(f"{prefix}org-{i:05d}", ORG, name, attrs))
        made.append(org)
        if founder.attrs["founded"] is None:
            founder.attrs["founded"] = org.id
            founder.attrs["employer"] = org.id
    for p in people:
        if p.attrs["employer"] is None and rng.random() < 0.85:
            p.attrs["employer"] = rng.choice(made).id
    staff_of: dict[str, list[str]] = {}
    for p in people:
        if p.attrs["employer"] and p.attrs["founded"] != p.attrs["employer"]:
            staff_of.setdefault(p.attrs["employer"], []).append(p.id)
    for org in made:
        staff = staff_of.get(org.id, [])
        # At most two are named in the article: the others make "hidden" two-hop questions.
        org.attrs["notable_employees"] = sorted(rng.sample(staff, min(2, len(staff))))
        city = kb[org.attrs["hq_city"]]
        if len(city.attrs["notable_orgs"]) < 3:
            city.attrs["notable_orgs"].append(org.id)


def _plant_decoys(kb: KnowledgeBase, rng: random.Random) -> None:
    """Give some people a same-year namesake of another trade from the same city.

    A description that names the occupation in other words ("mapmaker" for cartographer)
    then matches the decoy's article on exactly as many words as the gold one.
    """
    by_year: dict[int, list[Entity]] = {}
    for p in kb.of_type(PERSON):
        by_year.setdefault(p.attrs["birth_year"], []).append(p)
    for p in kb.of_type(PERSON):
        others = [q for q in by_year[p.attrs["birth_year"]] if q.attrs["occupation"] != p.attrs["occupation"]]
        if others and rng.random() < 0.5:
            rng.choice(others).attrs["birth_city"] = p.attrs["birth_city"]


def build_knowledge_base(
    rng: random.Random, n_entities: int, names: NameGenerator, prefix: str = "", world_ranges: int = 0
) -> KnowledgeBase:
    """People, organisations and cities, related to each other, all named freshly, with the value
    ranges (birth years, occupations, industries, countries) of a world of ``world_ranges`` entities
    (0: ``n_entities``)."""
    people, orgs, cities = _counts(n_entities)
    scale_people, scale_orgs, scale_cities = _counts(world_ranges or n_entities)
    kb = KnowledgeBase()
    _make_cities(kb, rng, names, cities, prefix, scale_cities)
    _make_people(kb, rng, names, people, prefix, scale_people)
    _plant_decoys(kb, rng)
    _make_orgs(kb, rng, names, orgs, prefix, scale_orgs)
    return kb


def entity_record(entity: Entity, kb: KnowledgeBase, doc_id: str) -> dict:
    """The structured facts of one entity; references carry both id and name."""

    def ref(value):
        if isinstance(value, list):
            return [ref(v) for v in value]
        if isinstance(value, str) and value in kb.entities:
            return {"entity_id": value, "name": kb.name(value)}
        return value

    attrs = {k: ref(v) for k, v in entity.attrs.items() if v is not None}
    if entity.type == PERSON:
        attrs["pronoun"] = entity.pronoun
    return {"entity_id": entity.id, "entity_type": entity.type, "name": entity.name, "doc_id": doc_id,
            "attributes": attrs}
