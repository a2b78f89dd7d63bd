"""Fixtures shared by the stage-1 tests."""

import pytest


@pytest.fixture(scope="module")
def fresh_docs():
    """Six world documents with their synthesised QA, as pretrain record dicts."""
    from clara.pretrain.synth import fresh_world_documents, result_records, synthesize_document
    from clara.pretrain.teacher_factory import make_teacher

    teacher = make_teacher("world")
    return [rec for d in fresh_world_documents(6, seed=7) for rec in result_records(synthesize_document(d, teacher), "world")]
