"""A bank that changes on disk is picked up without a restart, swapped whole, and refused when it
belongs to another model (issue 29, row 2)."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from clara.serving.bank import MemoryBank
from clara.serving.bank_build import add_to_bank, build_bank
from clara.serving.protocols import HashingModel
from clara.serving.schema import ServerSettings
from clara.serving.server import ServerThread, create_app

SETTINGS = ServerSettings(k_max=8, reload_s=0.2)


def corpus(path, ids, words):
    rows = [{"id": i, "title": i, "text": f"{w} lives in {w}ville."} for i, w in zip(ids, words)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def bank_dir(tmp_path):
    build_bank(corpus(tmp_path / "a.jsonl", ["a0", "a1", "a2"], ["alder", "birch", "cedar"]),
               HashingModel(4, 64), tmp_path / "bank", progress=False)
    return tmp_path / "bank"


def wait_for(client, check, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        health = client.get("/health").json()
        if check(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {health}")


def top_id(client, query):
    r = client.post("/v1/retrieve", json={"queries": [query], "k": 1})
    assert r.status_code == 200, r.text
    return r.json()["results"][0][0]["id"]


def test_a_grown_bank_is_served_without_a_restart(bank_dir, tmp_path):
    app = create_app(SETTINGS, model=HashingModel(4, 64), bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client:
        assert top_id(client, "walnut") != "b1"
        add_to_bank(bank_dir, corpus(tmp_path / "b.jsonl", ["b0", "b1"], ["spruce", "walnut"]), HashingModel(4, 64),
                    progress=False)
        wait_for(client, lambda h: h["bank"]["count"] == 5)
        assert top_id(client, "walnut") == "b1" and top_id(client, "cedar") == "a2"


def test_a_request_in_flight_finishes_on_the_bank_it_started_with(bank_dir, tmp_path):
    class Gated(HashingModel):
        def __init__(self):
            super().__init__(4, 64)
            self.gate, self.waiting = threading.Event(), threading.Event()

        def encode_query(self, questions):
            if "held" in questions[0]:
                self.waiting.set()
                assert self.gate.wait(30), "the test never opened the gate"
            return super().encode_query(questions)

    model = Gated()
    app = create_app(SETTINGS, model=model, bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client, ThreadPoolExecutor(1) as pool:
        held = pool.submit(client.post, "/v1/retrieve", json={"queries": ["held cedar"], "k": 1})
        assert model.waiting.wait(30)
        # another bank at the same path, swapped in while the request is held: rows 0..2 are other documents now
        build_bank(corpus(tmp_path / "c.jsonl", ["c0", "c1", "c2", "c3"], ["dogwood", "elm", "fir", "gum"]), model,
                   bank_dir, progress=False)
        wait_for(client, lambda h: h["bank"]["count"] == 4)
        model.gate.set()
        r = held.result(timeout=30)
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "a2"  # the old bank's row 2 and its id
        assert top_id(client, "fir") == "c2" and top_id(client, "cedar") != "a2"  # the new bank from now on


def test_a_bank_of_another_model_is_refused_and_the_old_one_kept(bank_dir, tmp_path):
    app = create_app(SETTINGS, model=HashingModel(4, 64), bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client:
        build_bank(corpus(tmp_path / "d.jsonl", ["d0"], ["gum"]), HashingModel(4, 64, seed=1), bank_dir, progress=False)
        health = wait_for(client, lambda h: "refused" in h["bank"])
        assert "built by compressor" in health["bank"]["refused"] and health["bank"]["count"] == 3
        assert top_id(client, "cedar") == "a2"
        build_bank(corpus(tmp_path / "e.jsonl", ["e0"], ["hazel"]), HashingModel(4, 64), bank_dir, progress=False)
        health = wait_for(client, lambda h: h["bank"]["count"] == 1)  # a good bank after a refused one is served
        assert "refused" not in health["bank"] and top_id(client, "hazel") == "e0"
