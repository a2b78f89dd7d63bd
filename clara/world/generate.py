"""Build a whole world from a seed, and an endless stream of fresh documents.

Every random draw goes through a ``random.Random`` seeded from a string, so the same seed
gives byte-identical output on every platform and Python version that keeps
``random.Random``'s algorithm (string seeds hash with SHA-512, not ``hash()``).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from tqdm import tqdm

# Modules named in full: `from clara.world import documents` imports the package, whose
# __init__ imports this module back (an import loop).
import clara.world.documents as _documents
import clara.world.questions as _questions
from clara.errors import ConfigError
from clara.world.candidates import CandidateIndex, choose_candidates
from clara.world.documents import render_document
from clara.world.entities import INDUSTRIES, OCCUPATIONS, build_knowledge_base, entity_record
from clara.world.lexical import STOPWORDS, words
from clara.world.names import ORG_SUFFIXES, NameGenerator
from clara.world.questions import SINGLE_HOP, answer_strings, entity_relations, generate_questions, states
from clara.world.splits import SPLITS, split_questions

log = logging.getLogger(__name__)
QUESTION_TYPES = ("single_hop", "description", "comparison", "two_hop_linked", "two_hop_hidden")
MIN_WORDS = 60


@dataclass
class World:
    documents: list[dict]
    facts: list[dict]
    questions: dict[str, list[dict]]
    meta: dict = field(default_factory=dict)  # seed, entities, candidates, max_words

    def counts(self) -> dict:
        per_split = {s: dict(sorted(Counter(q["type"] for q in qs).items())) for s, qs in self.questions.items()}
        return {
            "documents": len(self.documents),
            "questions": {s: len(qs) for s, qs in self.questions.items()},
            "types": per_split,
        }

    def document_index(self) -> dict[str, dict]:
        return {d["id"]: d for d in self.documents}


def _strings(obj) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _strings(v)


def reserved_words() -> set[str]:
    """Every word a template, question or attribute value uses: names must avoid them all."""
    pools = [v for m in (_documents, _questions) for k, v in vars(m).items() if k.isupper()]
    pools += [OCCUPATIONS, INDUSTRIES, ORG_SUFFIXES]
    return {w for text in _strings(pools) for w in words(text)} | set(STOPWORDS)


def _check(seed: int, entities: int, candidates: int, max_words: int) -> None:
    if not isinstance(seed, int):
        raise ConfigError(f"world.seed: must be an integer, got {seed!r}")
    if entities < 10:
        raise ConfigError(f"world.entities: {entities} is too few; use at least 10")
    if not 2 <= candidates <= entities:
        raise ConfigError(f"world.candidates: {candidates} must be between 2 and the number of entities ({entities})")
    if max_words < MIN_WORDS:
        raise ConfigError(f"world.max_words: {max_words} is too small; use at least {MIN_WORDS}")


def generate_world(seed: int, entities: int, candidates: int = 20, max_words: int = 180) -> World:
    """The world of ``seed``: one document per entity, verified questions with candidates, splits."""
    _check(seed, entities, candidates, max_words)
    rng = random.Random(f"clara-world/{seed}")
    names = NameGenerator(random.Random(f"clara-world-names/{seed}"), reserved=reserved_words())
    kb = build_knowledge_base(rng, entities, names)
    order = list(kb.entities)
    rng.shuffle(order)  # doc ids must not reveal the entity type
    doc_id = {eid: f"doc-{i:06d}" for i, eid in enumerate(order)}
    texts = {eid: render_document(kb[eid], kb, rng, max_words) for eid in order}
    documents = [{"id": doc_id[e], "title": kb[e].name, "text": texts[e], "entity_id": e, "entity_type": kb[e].type}
                 for e in order]  # fmt: skip
    facts = [entity_record(kb[e], kb, doc_id[e]) for e in order]
    index = CandidateIndex(kb, texts)
    records = []
    questions = generate_questions(kb, texts, rng)
    for i, q in enumerate(tqdm(questions, desc="candidates", unit="q", disable=None, leave=False)):
        cands = choose_candidates(q, index, candidates, rng)
        records.append({
            "id": f"q-{i + 1:06d}", "question": q["question"], "answers": q["answers"], "type": q["type"],
            "relation": q["relation"], "gold_ids": [doc_id[e] for e in q["entity_ids"]],
            "doc_ids": [doc_id[c] for c in cands], "pos_index": [cands.index(e) for e in q["entity_ids"]],
            "entity_ids": q["entity_ids"],
        })  # fmt: skip
    splits = split_questions(records, order, rng)
    meta = {"seed": seed, "entities": entities, "candidates": candidates, "max_words": max_words}
    world = World(documents, facts, {s: splits[s] for s in SPLITS}, meta)
    log.info("world seed=%d: %d documents, %d questions", seed, len(documents), len(records))
    return world


def _fresh_record(entity, kb, text: str, rng: random.Random, doc_id: str) -> dict:
    facts, qa = [], []
    for rel in entity_relations(entity):
        answers = answer_strings(entity, rel, kb)
        if not states(text, answers[0]):
            continue  # dropped to fit max_words: not a fact of this document
        facts.append({"subject": entity.name, "relation": rel, "value": answers[0]})
        question = rng.choice(SINGLE_HOP[(entity.type, rel)]).format(n=entity.name)
        qa.append({"question": question, "answer": answers[0]})
    return {"id": doc_id, "title": entity.name, "text": text, "entity_id": entity.id, "entity_type": entity.type,
            "facts": facts, "qa": qa}  # fmt: skip


# Entities in each knowledge base of the fresh stream (small, so that articles name each other).
FRESH_BATCH_ENTITIES = 40


def iter_fresh_documents(
    seed: int, max_words: int = 180, batch_entities: int = FRESH_BATCH_ENTITIES, exclude_names: set[str] | None = None,
    world_ranges: int = 0,
) -> Iterator[dict]:
    """Endless documents about entities never seen before in this stream (nor in ``exclude_names``).

    ``world_ranges``: the value ranges (birth years, occupations, industries, countries) of a world of
    that many entities; 0 keeps each batch's own, as the stream always had (every birth year then in
    the 1990s, no mentors, 4 occupations, 3 industries; issue 28). Anything else changes the stream.

    Each record: ``{"id","title","text","entity_type","facts":[{"subject","relation","value"}],
    "qa":[{"question","answer"}]}`` — one QA pair per stated fact. Entities come in small
    related batches, so articles still name each other. Remembers every name it used
    (about 100 bytes each) to guarantee no repeats.
    """
    _check(seed, batch_entities, 2, max_words)
    if world_ranges and world_ranges < batch_entities:
        raise ConfigError(f"world_ranges: {world_ranges} must be 0 (each batch's own) or at least the batch's "
                          f"{batch_entities} entities")
    used = set(exclude_names or ())
    reserved = reserved_words()
    count = 0
    for batch in range(1 << 62):
        rng = random.Random(f"clara-fresh/{seed}/{batch}")
        names = NameGenerator(random.Random(f"clara-fresh-names/{seed}/{batch}"), used=used, reserved=reserved)
        kb = build_knowledge_base(rng, batch_entities, names, prefix=f"fresh{seed}.{batch}.", world_ranges=world_ranges)
        order = list(kb.entities)
        rng.shuffle(order)
        for eid in order:
            text = render_document(kb[eid], kb, rng, max_words)
            yield _fresh_record(kb[eid], kb, text, rng, f"fresh-{seed}-{count:09d}")
            count += 1
