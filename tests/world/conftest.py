import pytest

from clara.world import generate_world


@pytest.fixture(scope="session")
def world300():
    """The world of the report: seed 0, 300 entities (about 0.5 s)."""
    return generate_world(seed=0, entities=300)


@pytest.fixture(scope="session")
def facts_by_doc(world300):
    return {f["doc_id"]: f for f in world300.facts}


@pytest.fixture(scope="session")
def all_questions(world300):
    return [q for qs in world300.questions.values() for q in qs]
