"""Fairness and shutdown of a live `clara serve` (issue 29): retrieval latency under heavy answers, and
the time from SIGTERM to exit while a client holds an incomplete body.

Starts ``python -m clara.cli.serve`` on a tiny random backbone (``loadtest``'s bank and adapters), sends
``--answers`` concurrent heavy /v1/answer requests and, while they run, trivial /v1/retrieve requests one
after another (their median and largest latency); then opens a connection that sends headers and half a body, sends
SIGTERM and times the exit (capped at ``--exit-cap`` s). ``--server-path`` runs the server from another
checkout (PYTHONPATH), so two trees compare in one run on one machine::

    python -m clara.eval.serve_fairness --server-path /tmp/main --label before
    python -m clara.eval.serve_fairness --label after --server-flag=--work-budget=20000 --server-flag=--drain-seconds=5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from clara.eval.loadtest import _synthetic_bank, _tiny_model, _wait_ready


def _start(bank: Path, spec: str, log: Path, server_path: str | None, flags: list[str]):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if server_path:
        env["PYTHONPATH"] = server_path
    cmd = [sys.executable, "-m", "clara.cli.serve", "--bank", str(bank), "--model", spec, "--port", str(port), *flags]
    # cwd: the log's folder, not this checkout, which `python -m` would put first on the path
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, cwd=log.parent), port


def retrieval_under_answers(url: str, answers: int, question: str, k: int, new_tokens: int) -> dict:
    """Trivial retrievals one after another, 0.2 s apart, for as long as the heavy answers run."""
    import httpx

    finished: list[float] = []
    codes: list[int] = []
    refusals: list[str] = []

    def heavy():
        r = httpx.post(url + "/v1/answer", json={"question": question, "k": k, "max_new_tokens": new_tokens},
                       timeout=3600)
        finished.append(time.monotonic())
        codes.append(r.status_code)
        if r.status_code != 200:
            refusals.append(r.text[:300])

    t0 = time.monotonic()
    threads = [threading.Thread(target=heavy) for _ in range(answers)]
    for t in threads:
        t.start()
    latencies = []
    while len(finished) < answers:
        start = time.monotonic()  # the loop runs only while an answer is still running
        r = httpx.post(url + "/v1/retrieve", json={"queries": ["person3 1003"], "k": 2}, timeout=3600)
        latencies.append(time.monotonic() - start)
        assert r.status_code == 200, r.text
        time.sleep(0.2)
    for t in threads:
        t.join()
    latencies.sort()
    return {"answers_status": sorted(codes), "answers_wall_s": round(max(finished) - t0, 2), "refusals": refusals[:1],
            "retrievals_during_answers": len(latencies),
            "retrieve_median_s": round(latencies[len(latencies) // 2], 2) if latencies else None,
            "retrieve_max_s": round(latencies[-1], 2) if latencies else None}


def exit_after_sigterm(proc: subprocess.Popen, port: int, cap: float) -> float | None:
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100\r\n\r\n{\"queries\": [")
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=cap)
        return round(time.monotonic() - sent, 2)
    except subprocess.TimeoutExpired:
        return None
    finally:
        slow.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default="this tree", help="name of this run in the report")
    p.add_argument("--server-path", default=None, help="PYTHONPATH of the server process (another checkout)")
    p.add_argument("--server-flag", action="append", default=[], help="extra `clara serve` flag (repeat)")
    p.add_argument("--answers", type=int, default=4, help="concurrent heavy answers (default %(default)s)")
    p.add_argument("--question-chars", type=int, default=4096, help="emoji in each question (default %(default)s)")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--exit-cap", type=float, default=60.0, help="seconds to wait for the exit (default %(default)s)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clara-fairness-") as tmp:
        work = Path(tmp)
        spec = _tiny_model(work)
        bank = _synthetic_bank(work, spec, 64)
        proc, port = _start(bank, spec, work / "server.log", args.server_path, args.server_flag)
        try:
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, proc)
            report = {"label": args.label, "flags": args.server_flag,
                      **retrieval_under_answers(url, args.answers, "😀" * args.question_chars, args.k, args.new_tokens)}
            report["exit_after_sigterm_s"] = exit_after_sigterm(proc, port, args.exit_cap)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
