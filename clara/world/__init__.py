"""The world corpus (DESIGN §7): a deterministic synthetic knowledge base from a seed.

    world = generate_world(seed=0, entities=300)     # documents, facts, questions per split
    write_world(world, "data/world-0")                # atomic; manifest with sha256 per file
    world = load_world("data/world-0")
    for doc in iter_fresh_documents(seed=1): ...      # endless, never-repeating entities

Names are invented syllables, so answers can only come from retrieval; near-identical
names, shared attributes and articles that name each other make hard negatives.
"""

from clara.world.generate import QUESTION_TYPES, World, generate_world, iter_fresh_documents
from clara.world.splits import SPLITS
from clara.world.writer import document_kinds, load_world, write_world

__all__ = [
    "QUESTION_TYPES",
    "SPLITS",
    "World",
    "document_kinds",
    "generate_world",
    "iter_fresh_documents",
    "load_world",
    "write_world",
]
