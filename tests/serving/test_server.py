"""The retrieval server through a real HTTP client against uvicorn on 127.0.0.1 (DESIGN §9)."""

import argparse
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
import numpy as np
import pytest

from clara.serving.bank import MemoryBank
from clara.serving.bank_build import build_bank
from clara.errors import CheckpointError
from clara.serving.server import ServerThread, create_app
from clara.serving.schema import ServerSettings
from clara.serving.protocols import HashingModel

SETTINGS = ServerSettings(k_max=8, max_body_bytes=32768, max_wait_ms=2.0)


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    rows = [{"id": f"d{i}", "title": f"Town {i}", "text": f"Town number {i} was founded by person{i} in {1000 + i}."}
            for i in range(30)]
    corpus = tmp / "docs.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    build_bank(corpus, HashingModel(4, 256), tmp / "bank", progress=False)
    return tmp / "bank"


@pytest.fixture(scope="module")
def server(bank_dir):
    app = create_app(SETTINGS, model=HashingModel(4, 256), bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=10) as client:
        yield client


def assert_error(r, code):
    assert r.status_code == code, r.text
    body = r.json()["error"]
    assert body["code"] == code and body["message"]
    return body["message"]


def test_health_and_openapi(server):
    r = server.get("/health")
    assert r.status_code == 200
    info = r.json()
    assert info["status"] == "ok" and info["bank"]["count"] == 30 and info["bank"]["dim"] == 1024
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/health", "/v1/retrieve", "/v1/answer", "/retrieve"} <= set(paths)


def test_retrieve_text_and_vectors(server, bank_dir):
    r = server.post("/v1/retrieve", json={"queries": ["person7 1007", "person21 1021"], "k": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [hits[0]["id"] for hits in results] == ["d7", "d21"]
    assert all(len(h) == 4 for h in results)
    assert results[0][0]["title"] == "Town 7" and "person7" in results[0][0]["text"]
    scores = [h["score"] for h in results[0]]
    assert scores == sorted(scores, reverse=True)
    vec = np.fromfile(bank_dir / "memory.bin", np.uint16)  # fp16 bits, rows of 4*256
    from clara.config import Scoring
    from clara.model.scoring import retrieval_vectors
    from clara.serving.bank import MemDtype, from_bits

    row12 = retrieval_vectors(from_bits(vec.reshape(30, 4, 256)[12:13], MemDtype.FP16), Scoring.FLATTENED)
    r = server.post("/v1/retrieve", json={"embeddings": row12.tolist(), "k": 1})
    assert r.json()["results"][0][0]["id"] == "d12"
    assert r.json()["results"][0][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_answer_returns_text_and_sources(server):
    r = server.post("/v1/answer", json={"question": "who is person3 of 1003", "k": 2, "max_new_tokens": 50})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "from 2 memories" in body["answer"]
    assert [s["id"] for s in body["sources"]][0] == "d3" and len(body["sources"]) == 2
    assert set(body["sources"][0]) == {"id", "title", "score"}


class ScpTrainedModel(HashingModel):
    """A stand-in whose generator was trained to be asked in stage 1's QA form (generator_prompt scp)."""

    generator_prompt = "scp"

    def generate(self, questions, mem_blocks=None, *, max_new_tokens=64, reply_prefixes=None, stop=()):
        self.asked = (list(questions), reply_prefixes, tuple(stop))
        return [" Venra.\nQuestion: next" for _ in questions]


def test_answer_asks_the_generator_as_its_training_run_recorded(bank_dir):
    from clara.model.prompts import QA_INSTRUCTION

    model = ScpTrainedModel(4, 256)
    app = create_app(SETTINGS, model=model, bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=10) as client:
        r = client.post("/v1/answer", json={"question": "who founded town 3", "k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "Venra"  # the short answer of the reply's first line
    assert model.asked == ([QA_INSTRUCTION], ["Question: who founded town 3\nAnswer:"], ("\n",))


def test_search_r1_protocol(server):
    r = server.post("/retrieve", json={"queries": ["person5 1005"], "topk": 2, "return_scores": True})
    assert r.status_code == 200, r.text
    hit = r.json()["result"][0][0]
    assert hit["document"] == {"id": "d5", "contents": "Town 5\nTown number 5 was founded by person5 in 1005."}
    assert isinstance(hit["score"], float) and len(r.json()["result"][0]) == 2
    plain = server.post("/retrieve", json={"queries": ["person5 1005", "person6"]}).json()["result"]
    assert len(plain) == 2 and len(plain[0]) == SETTINGS.default_topk  # default topk
    assert plain[0][0] == {"id": "d5", "contents": "Town 5\nTown number 5 was founded by person5 in 1005."}


@pytest.mark.parametrize("body", [
    {"k": 3},  # no queries
    {"queries": "not a list"},
    {"queries": []},
    {"queries": ["x"], "embeddings": [[0.0]]},  # both kinds
    {"queries": ["x"], "unknown": 1},
    {"queries": [""]},
])
def test_schema_errors_are_422(server, body):
    assert_error(server.post("/v1/retrieve", json=body), 422)


def test_bad_json_and_wrong_dimension_are_422(server):
    assert_error(server.post("/v1/retrieve", content=b"{nope", headers={"content-type": "application/json"}), 422)
    msg = assert_error(server.post("/v1/retrieve", json={"embeddings": [[0.5] * 10], "k": 1}), 422)
    assert "dimension is 1024" in msg


@pytest.mark.parametrize("path,body", [
    ("/v1/retrieve", {"queries": ["x"], "k": 0}),
    ("/v1/retrieve", {"queries": ["x"], "k": 9}),
    ("/v1/answer", {"question": "x", "k": 9}),
    ("/v1/answer", {"question": "x", "k": -1}),
    ("/retrieve", {"queries": ["x"], "topk": 0}),
    ("/retrieve", {"queries": ["x"], "topk": 9}),
])
def test_k_outside_range_is_422(server, path, body):
    msg = assert_error(server.post(path, json=body), 422)
    assert "k" in msg


def test_payload_too_large_is_413(server):
    big = {"queries": ["word " * 10000]}
    r = server.post("/v1/retrieve", json=big)
    assert_error(r, 413)  # Content-Length says so
    assert server.get("/health").status_code == 200  # the connection is still usable

    def chunks():  # no Content-Length: the bytes actually sent are counted
        for _ in range(50):
            yield b" " * 1000

    assert_error(server.post("/v1/retrieve", content=chunks(), headers={"content-type": "application/json"}), 413)


def test_unknown_path_is_json_404(server):
    assert_error(server.get("/nope"), 404)


def test_queue_full_is_429(bank_dir):
    """One request runs (held on a gate), one waits in the size-1 queue, the rest are refused.

    The gate makes this independent of timing: while the model is held no request can leave
    the queue, so exactly one of the five later requests is queued and four get 429.
    """

    class Gated(HashingModel):
        def __init__(self):
            super().__init__(4, 256)
            self.running, self.release = threading.Event(), threading.Event()

        def encode_query(self, questions):
            self.running.set()
            assert self.release.wait(20), "test never released the model"
            return super().encode_query(questions)

    model = Gated()
    settings = ServerSettings(k_max=8, max_batch=1, queue_size=1, max_wait_ms=0.0)
    app = create_app(settings, model=model, bank=MemoryBank.open(bank_dir))
    post = lambda client, i: client.post("/v1/retrieve", json={"queries": [f"person{i}"]}).status_code  # noqa: E731
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client, ThreadPoolExecutor(6) as pool:
        first = pool.submit(post, client, 0)
        assert model.running.wait(20), "the first request never reached the model"
        later = [pool.submit(post, client, i) for i in range(1, 6)]
        refused = []
        for fut in as_completed(later, timeout=20):  # four come back at once, refused
            refused.append(fut.result())
            if len(refused) == 4:
                break
        assert refused == [429] * 4, refused
        model.release.set()
        codes = [first.result(timeout=20)] + [f.result(timeout=20) for f in later]
        assert sorted(codes) == [200, 200, 429, 429, 429, 429], codes
        assert post(client, 1) == 200  # the server recovers once the queue drains


def test_model_failure_is_json_500(bank_dir):
    class Broken(HashingModel):
        def encode_query(self, questions):
            raise RuntimeError("boom")

    app = create_app(SETTINGS, model=Broken(4, 256), bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s:
        msg = assert_error(httpx.post(s.url + "/v1/retrieve", json={"queries": ["x"]}), 500)
        assert "boom" in msg


def test_health_is_503_until_loaded(bank_dir):
    release = threading.Event()

    def loader():
        release.wait(10)
        return HashingModel(4, 256), MemoryBank.open(bank_dir)

    with ServerThread(create_app(SETTINGS, loader=loader)) as s:
        r = httpx.get(s.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert_error(httpx.post(s.url + "/v1/retrieve", json={"queries": ["x"]}), 503)
        release.set()
        for _ in range(200):
            if httpx.get(s.url + "/health").status_code == 200:
                break
            time.sleep(0.02)
        assert httpx.get(s.url + "/health").status_code == 200
        assert httpx.post(s.url + "/v1/retrieve", json={"queries": ["x"]}).status_code == 200


def test_bank_of_another_compressor_is_refused(bank_dir):
    other = HashingModel(4, 256, seed=1)
    with ServerThread(create_app(SETTINGS, loader=lambda: (other, MemoryBank.open(bank_dir)))) as s:
        for _ in range(200):
            r = httpx.get(s.url + "/health")
            if r.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert r.status_code == 503 and "built by compressor" in r.json()["error"]
    from clara.cli import serve as serve_cli

    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--bank", str(bank_dir), "--model", "hashing:m=4,h=256,seed=1", "--port", "0"])
    with pytest.raises(CheckpointError, match="built by compressor"):
        args.func(args)  # refused before binding; clara's main prints it and exits 1


@pytest.mark.parametrize("flags,compiles", [([], True), (["--no-compile-search"], False)])
def test_serve_compiles_the_bank_search_unless_told_not_to(bank_dir, monkeypatch, flags, compiles):
    from clara.cli import serve as serve_cli
    from clara.serving import server as server_module

    compiled = []
    monkeypatch.setattr(MemoryBank, "compile_search", lambda self: compiled.append(self.directory))

    class Bound:  # the server as far as binding: run() returns at once
        started = True

        def __init__(self, app, **kw):
            pass

        def run(self):
            pass

    monkeypatch.setattr(server_module, "DrainingServer", Bound)
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--bank", str(bank_dir), "--model", "hashing:m=4,h=256", "--port", "0", *flags])
    assert args.func(args) == 0
    assert compiled == ([bank_dir] if compiles else [])


def test_concurrent_requests_are_batched(bank_dir):
    """Requests that arrive while the model is busy share its next calls (at most max_batch each)."""

    class Gated(HashingModel):
        def __init__(self):
            super().__init__(4, 256)
            self.release, self.held = threading.Event(), 0

        def generate(self, questions, *a, **kw):
            self.held = self.held or len(questions)  # size of the first batch, the one the gate holds
            assert self.release.wait(20), "test never released the model"
            return super().generate(questions, *a, **kw)

    settings = ServerSettings(k_max=8, max_batch=8, queue_size=64, max_wait_ms=20.0)
    model = Gated()
    app = create_app(settings, model=model, bank=MemoryBank.open(bank_dir))
    with ServerThread(app) as s, httpx.Client(base_url=s.url, timeout=30) as client, ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(lambda i: client.post("/v1/answer", json={"question": f"person{i}"}).status_code, i)
                   for i in range(16)]
        for _ in range(1000):  # the gate holds the first batch; wait until every other request is queued
            queue = client.get("/health").json()["queues"]["answer"]
            if model.held and model.held + queue["waiting"] == 16:
                break
            time.sleep(0.02)
        model.release.set()
        assert [f.result(timeout=20) for f in futures] == [200] * 16
        queue = client.get("/health").json()["queues"]["answer"]
    assert queue["requests"] == 16 and queue["batches"] <= 8  # 16 requests shared at most 8 model calls
    assert model.calls["generate"] == queue["batches"]  # one generator call per batch


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_server_with_a_mismatched_bank_does_not_start(bank_dir):
    app = create_app(SETTINGS, model=HashingModel(4, 256, seed=2), bank=MemoryBank.open(bank_dir))
    with pytest.raises(RuntimeError, match="failed to start"):
        with ServerThread(app):
            pass
