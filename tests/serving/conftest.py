"""Fixtures of the server tests."""

import json

import pytest


@pytest.fixture(scope="session")
def town_bank():
    """``build(directory, n, model=HashingModel(4, 64))``: a bank at ``directory / "bank"`` of n documents
    ``d{i}`` "Town {i} was founded by person{i} in {1000 + i}."."""
    from clara.serving.bank_build import build_bank
    from clara.serving.protocols import HashingModel

    def build(directory, n, model=None):
        rows = [{"id": f"d{i}", "title": f"Town {i}", "text": f"Town {i} was founded by person{i} in {1000 + i}."}
                for i in range(n)]
        (directory / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        build_bank(directory / "docs.jsonl", model or HashingModel(4, 64), directory / "bank", progress=False)
        return directory / "bank"

    return build
