"""Bounded load test of the retrieval server: loopback only, fixed request count, duration cap.

Sends ``--requests`` requests from ``--concurrency`` clients, a fixed mix of valid ones (every
endpoint) and invalid ones (bad schema, k out of range, wrong vector dimension, bad JSON,
oversized body), then reports: responses counted against requests sent (nothing may be
lost), 5xx count (must be 0), invalid requests answered with anything but a 4xx (must be 0),
valid requests not answered 200, and latency quantiles. Exit status 0 only if all hold.

Without ``--url`` it builds a synthetic bank and starts ``python -m clara.cli.serve`` itself
(hashing model by default, ``--tiny-model`` for a real ClaraModel on a tiny backbone)::

    python -m clara.eval.loadtest --requests 5000 --concurrency 64
    python -m clara.eval.loadtest --url http://127.0.0.1:8000 --requests 5000
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse


def require_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    addrs = {info[4][0] for info in socket.getaddrinfo(host, None)} if host else set()
    if not addrs or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addrs):
        raise SystemExit(f"error: {url}: the load test only targets loopback hosts (127.0.0.1, ::1, localhost)")


def request_plan(i: int, k_max: int, dim: int) -> tuple[str, str, dict | bytes, bool]:
    """The i-th request: (method, path, json body or raw bytes, valid?). A fixed cycle of 12."""
    n = i % 12
    q = f"person{i % 50} {1000 + i % 50}"
    plan = [
        ("POST", "/v1/retrieve", {"queries": [q, "person7"], "k": 3}, True),
        ("POST", "/retrieve", {"queries": [q], "topk": 3, "return_scores": True}, True),
        ("POST", "/v1/answer", {"question": q, "k": 2, "max_new_tokens": 8}, True),
        ("GET", "/health", {}, True),
        ("POST", "/retrieve", {"queries": [q, q]}, True),
        ("POST", "/v1/retrieve", {"queries": [q], "k": 0}, False),  # k below range
        ("POST", "/v1/answer", {"question": q, "k": k_max + 1}, False),  # k above range
        ("POST", "/v1/retrieve", {"queries": "not a list"}, False),  # schema
        ("POST", "/v1/retrieve", b"{broken json", False),
        ("POST", "/v1/retrieve", {"embeddings": [[0.1] * (dim + 1)], "k": 1}, False),  # dimension
        ("POST", "/retrieve", {"queries": ["x" * 1_100_000]}, False),  # body over the 1 MiB default: 413
        ("POST", "/v1/retrieve", {"queries": [q], "k": 2}, True),
    ]
    return plan[n]


async def run_load(url: str, requests: int, concurrency: int, duration: float, k_max: int, dim: int) -> dict:
    import httpx

    stats = {"sent": 0, "responses": 0, "lost": 0, "by_status": {}, "server_errors": 0, "invalid_not_4xx": 0,
             "valid_not_200": 0, "examples": []}
    latencies: list[float] = []
    next_index = 0
    deadline = time.monotonic() + duration

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index
        while next_index < requests and time.monotonic() < deadline:
            i = next_index
            next_index += 1
            method, path, body, valid = request_plan(i, k_max, dim)
            stats["sent"] += 1
            start = time.perf_counter()
            try:
                if method == "GET":
                    r = await http.get(path)
                elif isinstance(body, bytes):
                    r = await http.post(path, content=body, headers={"content-type": "application/json"})
                else:
                    r = await http.post(path, json=body)
            except httpx.HTTPError as e:
                stats["lost"] += 1
                stats["examples"].append(f"{path}: {type(e).__name__}: {e}"[:200])
                continue
            latencies.append(time.perf_counter() - start)
            stats["responses"] += 1
            code = r.status_code
            stats["by_status"][str(code)] = stats["by_status"].get(str(code), 0) + 1
            stats["server_errors"] += code >= 500
            if not valid and not 400 <= code < 500:
                stats["invalid_not_4xx"] += 1
                stats["examples"].append(f"invalid {path} -> {code}")
            if valid and code != 200:
                stats["valid_not_200"] += 1
                stats["examples"].append(f"valid {path} -> {code}: {r.text[:120]}")

    # expire idle connections well before uvicorn's 5 s keep-alive, so no request is sent on a
    # socket the server is closing at that moment
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=1.0)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    latencies.sort()
    q = lambda p: round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 2) if latencies else None
    stats.update(requested=requests, concurrency=concurrency, wall_s=round(wall, 2),
                 requests_per_s=round(stats["responses"] / wall, 1), not_sent=requests - stats["sent"],
                 latency_ms={"p50": q(0.5), "p95": q(0.95), "p99": q(0.99), "max": q(1.0)})
    stats["examples"] = stats["examples"][:10]
    stats["ok"] = (stats["sent"] == requests and stats["responses"] == stats["sent"] and stats["server_errors"] == 0
                   and stats["invalid_not_4xx"] == 0 and stats["valid_not_200"] == 0)
    return stats


def _synthetic_bank(work: Path, model_spec: str, docs: int) -> Path:
    from clara.serving.bank_build import build_bank
    from clara.serving.protocols import load_model

    corpus = work / "docs.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(docs):
            f.write(json.dumps({"id": f"d{i}", "title": f"Town {i}",
                                "text": f"Town number {i} was founded by person{i} in {1000 + i}."}) + "\n")
    build_bank(corpus, load_model(model_spec), work / "bank", progress=False)
    return work / "bank"


def _tiny_model(work: Path) -> str:
    from clara.model.backbone import build_tiny_backbone
    from clara.config import BackboneKind, LoraConfig, ModelConfig
    from clara.model.clara_model import ClaraModel

    backbone = build_tiny_backbone(work / "tiny", seed=0)
    cfg = ModelConfig(backbone=str(backbone), kind=BackboneKind.TINY, chunk_len=32, compression_rate=8,
                      lora=LoraConfig(r=4, alpha=8))
    ClaraModel.from_config(cfg).save_adapters(work / "adapters")
    return str(work / "adapters")


def _start_server(bank: Path, model_spec: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "clara.cli.serve", "--bank", str(bank), "--model", model_spec,
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> dict:
    import httpx

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: server exited with status {proc.returncode}")
        try:
            r = httpx.get(url + "/health", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: {url} not ready after {timeout:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None, help="a running server on loopback (default: start one)")
    p.add_argument("--requests", type=int, default=5000, help="requests to send (default %(default)s)")
    p.add_argument("--concurrency", type=int, default=64, help="concurrent clients (default %(default)s)")
    p.add_argument("--duration", type=float, default=300.0, help="stop sending after this many seconds (default %(default)s)")
    p.add_argument("--model", default="hashing:m=4,h=256", help="model for the server this script starts")
    p.add_argument("--tiny-model", action="store_true", help="serve a real ClaraModel on a tiny random backbone")
    p.add_argument("--docs", type=int, default=2000, help="documents in the synthetic bank (default %(default)s)")
    p.add_argument("--out", default=None, help="write the report JSON here too")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    proc = None
    with tempfile.TemporaryDirectory(prefix="clara-loadtest-") as tmp:
        work = Path(tmp)
        url = args.url
        if url is None:
            spec = _tiny_model(work) if args.tiny_model else args.model
            proc, url = _start_server(_synthetic_bank(work, spec, args.docs), spec, work / "server.log")
        require_loopback(url)
        try:
            health = _wait_ready(url, proc)
            k_max = 20  # server default; the k_max+1 request must be refused
            report = asyncio.run(run_load(url, args.requests, args.concurrency, args.duration, k_max,
                                          health["bank"]["dim"]))
            report["server"] = {"url": url, "model": health["model"], "bank_count": health["bank"]["count"],
                                "queues": _wait_ready(url, None)["queues"]}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
