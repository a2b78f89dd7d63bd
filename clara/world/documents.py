"""One encyclopedia-style article per entity: facts in varied templates, plus filler.

Several templates per relation, chosen at random and placed in random order, so that no
fixed position or phrase gives a fact away. Articles name related entities (employer,
founder, headquarters, notable staff) the way encyclopedia articles do; these mentions are
what makes *linked* two-hop questions and lexical hard negatives possible.
"""

from __future__ import annotations

import random

from clara.errors import ConfigError
from clara.world.entities import CITY, ORG, PERSON, Entity, KnowledgeBase

PERSON_LEAD = (
    "{name} (born {year} in {city}) is {a_occ}.",
    "{name} is {a_occ} who was born in {city} in {year}.",
    "{name}, {a_occ}, was born in {year} in the city of {city}.",
)
PERSON_BIRTH = (
    "{S} was born in {city} in {year}.",
    "{S} was born in {year}; {pos} place of birth is {city}.",
    "{Pos} birthplace is {city}, where {p} was born in {year}.",
)
PERSON_OCC = (
    "{name} is {a_occ}.",
    "{name} works as {a_occ}.",
    "By profession, {name} is {a_occ}.",
    "{name} earned a reputation as {a_occ}.",
)
PERSON_EMPLOYER = (
    "{S} works for {org}.",
    "{S} is employed by {org}.",
    "{S} has been on the staff of {org} for many years.",
    "{Pos} employer is {org}.",
)
PERSON_FOUNDED = ("In {fy}, {p} founded {org}.", "{S} is the founder of {org}.", "{S} established {org} in {fy}.")
PERSON_MENTOR = (
    "{S} trained under {mentor}.",
    "{S} learned the craft from {mentor}.",
    "{S} was an apprentice of {mentor}.",
    "{Pos} mentor was {mentor}.",
)
ORG_LEAD = (
    "{name} is {a_ind} company.",
    "{name} is a firm active in {ind}.",
    "{name} operates in the {ind} sector.",
)
ORG_FOUNDER = (
    "It was founded in {fy} by {founder}.",
    "{founder} founded {name} in {fy}.",
    "{name} was established by {founder} in {fy}.",
    "The firm was set up in {fy}; its founder is {founder}.",
)
ORG_HQ = (
    "{S} is headquartered in {city}.",
    "Its head office is in {city}.",
    "{S} has its headquarters in {city}.",
    "{S} is based in {city}.",
)
ORG_STAFF = (
    "Notable employees include {staff}.",
    "Among its staff: {staff}.",
    "Its best-known people include {staff}.",
)
CITY_LEAD = ("{name} is a city in {country}.", "{name} is a town in {country}.", "{name} lies in {country}.")
CITY_POP = (
    "It has a population of {pop}.",
    "About {pop} people live there.",
    "{S} is home to {pop} inhabitants.",
    "Its population is {pop}.",
)
CITY_FOUNDED = ("{S} was founded in {fy}.", "The town dates back to {fy}.", "{S} was established in {fy}.")
CITY_ORGS = ("Organisations based in {name} include {orgs}.", "{S} hosts the head office of {orgs}.")
FILLER = {
    PERSON: (
        "{S} has given talks at several regional gatherings.",
        "Little is recorded about {pos} early life.",
        "{S} keeps a small archive of letters and notes.",
        "{Pos} work is discussed in a handful of local journals.",
        "{S} rarely gives interviews.",
        "Colleagues describe {obj} as patient and exacting.",
        "{S} enjoys long walks along the coast.",
    ),
    ORG: (
        "The firm publishes an annual report.",
        "Its offices occupy a converted warehouse.",
        "The company has changed its logo twice.",
        "It sponsors a small scholarship programme.",
        "Its products are sold in several neighbouring regions.",
    ),
    CITY: (
        "The old market square is still in use.",
        "A river runs through the centre of the town.",
        "The local museum holds a collection of old maps.",
        "Winters there are mild and wet.",
        "A festival is held every autumn.",
    ),
}


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fill(template: str, entity: Entity, rng: random.Random, values: dict) -> str:
    p = entity.pronoun
    subject = entity.name if (p == "it" or rng.random() < 0.4) else p
    if p == "it" and rng.random() < 0.5:
        subject = "It"
    text = template.format(
        S=subject[0].upper() + subject[1:], p=p, pos=entity.possessive, Pos=entity.possessive.capitalize(),
        obj={"he": "him", "she": "her"}.get(p, "it"), name=entity.name, **values,
    )  # fmt: skip
    return text[0].upper() + text[1:]


def _person_sentences(e: Entity, kb: KnowledgeBase, rng: random.Random) -> tuple[list[str], list[str]]:
    a = e.attrs
    v = {"year": a["birth_year"], "city": kb.name(a["birth_city"]), "occ": a["occupation"],
         "a_occ": _article(a["occupation"])}  # fmt: skip
    if rng.random() < 0.5:
        core = [_fill(rng.choice(PERSON_LEAD), e, rng, v)]
    else:
        core = [_fill(rng.choice(PERSON_OCC), e, rng, v)]
        core.append(_fill(rng.choice(PERSON_BIRTH), e, rng, v))
    if a["founded"]:
        fy = kb[a["founded"]].attrs["founding_year"]
        core.append(_fill(rng.choice(PERSON_FOUNDED), e, rng, {"org": kb.name(a["founded"]), "fy": fy}))
    elif a["employer"]:
        core.append(_fill(rng.choice(PERSON_EMPLOYER), e, rng, {"org": kb.name(a["employer"])}))
    if a["mentor"]:
        core.append(_fill(rng.choice(PERSON_MENTOR), e, rng, {"mentor": kb.name(a["mentor"])}))
    return core, []


def _org_sentences(e: Entity, kb: KnowledgeBase, rng: random.Random) -> tuple[list[str], list[str]]:
    a = e.attrs
    v = {"ind": a["industry"], "a_ind": _article(a["industry"]), "fy": a["founding_year"],
         "founder": kb.name(a["founder"]), "city": kb.name(a["hq_city"])}  # fmt: skip
    core = [_fill(rng.choice(ORG_LEAD), e, rng, v), _fill(rng.choice(ORG_FOUNDER), e, rng, v),
            _fill(rng.choice(ORG_HQ), e, rng, v)]  # fmt: skip
    mentions = []
    if a["notable_employees"]:
        staff = _join([kb.name(i) for i in a["notable_employees"]])
        mentions.append(_fill(rng.choice(ORG_STAFF), e, rng, {"staff": staff}))
    return core, mentions


def _city_sentences(e: Entity, kb: KnowledgeBase, rng: random.Random) -> tuple[list[str], list[str]]:
    a = e.attrs
    v = {"country": a["country"], "pop": f"{a['population']:,}", "fy": a["founding_year"]}
    core = [_fill(rng.choice(CITY_LEAD), e, rng, v), _fill(rng.choice(CITY_POP), e, rng, v),
            _fill(rng.choice(CITY_FOUNDED), e, rng, v)]  # fmt: skip
    mentions = []
    if a["notable_orgs"]:
        orgs = _join([kb.name(i) for i in a["notable_orgs"]])
        mentions.append(_fill(rng.choice(CITY_ORGS), e, rng, {"orgs": orgs}))
    return core, mentions


_SENTENCES = {PERSON: _person_sentences, ORG: _org_sentences, CITY: _city_sentences}


def render_document(entity: Entity, kb: KnowledgeBase, rng: random.Random, max_words: int = 180) -> str:
    """The article of ``entity``: lead fact first, other facts and filler shuffled, ≤ max_words."""
    core, mentions = _SENTENCES[entity.type](entity, kb, rng)
    body = core[1:] + mentions
    rng.shuffle(body)
    sentences = [core[0]] + body
    count = sum(len(s.split()) for s in sentences)
    while len(mentions) and count > max_words:  # mentions are the first thing to go
        dropped = mentions.pop()
        sentences.remove(dropped)
        count -= len(dropped.split())
    if count > max_words:
        raise ConfigError(
            f"world.max_words={max_words} is too small for the facts of {entity.name!r} ({count} words); "
            "use at least 60"
        )
    fillers = list(FILLER[entity.type])
    rng.shuffle(fillers)
    for template in fillers[: rng.randint(2, 4)]:
        sentence = _fill(template, entity, rng, {})
        n = len(sentence.split())
        if count + n > max_words:
            break
        sentences.insert(rng.randint(1, len(sentences)), sentence)
        count += n
    return " ".join(sentences)
