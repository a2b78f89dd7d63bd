"""Fairness (issue 29, row 4): a work budget per answer, and retrieval that long answers cannot starve."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from clara.serving.bank import MemoryBank
from clara.serving.protocols import HashingModel
from clara.serving.schema import ServerSettings
from clara.serving.server import ServerThread, create_app


@pytest.fixture(scope="module")
def hashing_bank(tmp_path_factory, town_bank):
    return town_bank(tmp_path_factory.mktemp("fair"), 30)


def test_an_answer_over_the_work_budget_is_refused_naming_it(hashing_bank):
    # hashing model: m = 4 and a question's tokens are its words; work = words + 4k + max_new_tokens
    settings = ServerSettings(k_max=8, work_budget=100, reload_s=0)
    app = create_app(settings, model=HashingModel(4, 64), bank=MemoryBank.open(hashing_bank))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client:
        heavy = {"question": " ".join(["town"] * 60), "k": 5, "max_new_tokens": 32}  # 60 + 20 + 32 = 112
        r = client.post("/v1/answer", json=heavy)
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert "work budget of 100" in message and "112 token positions" in message
        assert "60 question tokens" in message and "k=5 × 4 memory slots" in message
        within = {"question": " ".join(["town"] * 44), "k": 5, "max_new_tokens": 32}  # 44 + 20 + 32 = 96
        assert client.post("/v1/answer", json=within).status_code == 200
        assert client.get("/health").json()["work_budget"] == 100


@pytest.mark.slow
def test_retrieval_is_not_starved_by_four_heavy_answers(tmp_path, tiny_backbone, town_bank):
    """Four in-budget heavy answers (near 4,096 token positions each, k=20, 256 new tokens) on the tiny
    backbone, then a trivial /v1/retrieve: it must come back while the answers are still running."""
    from clara.config import LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    cfg = ModelConfig(backbone=str(tiny_backbone), kind="tiny", chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8, dropout=0.0))
    model = ClaraModel.from_config(cfg).eval()
    bank = town_bank(tmp_path, 24, model)
    generating = threading.Event()
    generate = model.generate

    def flagged_generate(*args, **kwargs):
        generating.set()
        return generate(*args, **kwargs)

    model.generate = flagged_generate
    settings = ServerSettings(k_max=20, max_wait_ms=200.0, reload_s=0)
    app = create_app(settings, model=model, bank=MemoryBank.open(bank))
    question = "😀" * 935  # 3,740 tokens + 20 × 4 slots + 256 new tokens = 4,076 <= 4,096
    done = {}
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=600) as client, ThreadPoolExecutor(4) as pool:
        def heavy(i):
            r = client.post("/v1/answer", json={"question": question, "k": 20, "max_new_tokens": 256})
            done[i] = time.monotonic()
            return r.status_code

        answers = [pool.submit(heavy, i) for i in range(4)]
        assert generating.wait(300), "the answers never reached the generator"
        start = time.monotonic()
        r = client.post("/v1/retrieve", json={"queries": ["person3 1003"], "k": 2})
        retrieved = time.monotonic()
        assert r.status_code == 200 and len(r.json()["results"][0]) == 2  # an untrained model: any two
        assert [a.result(timeout=600) for a in answers] == [200] * 4
    latency = retrieved - start
    assert retrieved < min(done.values()), (f"the retrieval took {latency:.1f} s and came back after the answers "
                                            f"({min(done.values()) - start:.1f} s)")
    assert latency < 10.0, f"retrieval took {latency:.1f} s under four heavy answers"
