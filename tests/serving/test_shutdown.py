"""`clara serve` as a process: SIGTERM drains within --drain-seconds, even with a client holding an
incomplete body, and --api-key-file guards every path but /health (issue 29, row 4)."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest


DRAIN_S = 4.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bank_dir(tmp_path, town_bank):
    return town_bank(tmp_path, 12)


def start_server(bank, tmp_path, *flags):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    cmd = [sys.executable, "-m", "clara.cli.serve", "--bank", str(bank), "--model", "hashing:m=4,h=64,delay=0.5",
           "--port", str(port), *flags]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, port, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server not ready: " + (tmp_path / "server.log").read_text())


def test_sigterm_drains_in_flight_work_and_exits_within_the_bound_despite_a_slow_client(bank_dir, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    proc, port, url = start_server(bank_dir, tmp_path, "--drain-seconds", str(DRAIN_S), "--body-timeout", "120",
                                   "--api-key-file", str(key_file))
    auth = {"Authorization": "Bearer s3cret-key"}
    try:
        # a slow client: headers and part of the body, then nothing (the body timeout is far away)
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-key\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"queries\": [\"tow")
        answer = {}

        def ask():  # in flight at SIGTERM: about 1 s of model time (0.5 s encode + 0.5 s generate)
            answer["reply"] = httpx.post(url + "/v1/answer", json={"question": "town 3", "k": 2}, headers=auth,
                                         timeout=60)

        asker = threading.Thread(target=ask)
        asker.start()
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DRAIN_S + 30)
        exited = time.monotonic() - sent
        asker.join(10)
        slow.settimeout(5)
        reply = slow.recv(4096)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "server.log").read_text()
    assert proc.returncode == -signal.SIGTERM, log  # uvicorn ends by raising the signal it caught, once drained
    assert exited < DRAIN_S + 4.0, f"exit {exited:.1f} s after SIGTERM; drain bound {DRAIN_S} s\n{log}"
    assert answer["reply"].status_code == 200, answer["reply"].text  # in-flight work finished
    assert reply.startswith(b"HTTP/1.1 503") and b"shutting down" in reply, reply


def test_the_api_key_file_guards_every_path_but_health(bank_dir, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("  another-key  \n")
    proc, _, url = start_server(bank_dir, tmp_path, "--api-key-file", str(key_file), "--drain-seconds", "0")
    try:
        body = {"queries": ["town 3"], "k": 1}
        assert httpx.get(url + "/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "another-key"}):
            r = httpx.post(url + "/v1/retrieve", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
            assert "Authorization: Bearer" in r.json()["error"]["message"]
        assert httpx.get(url + "/openapi.json").status_code == 401
        r = httpx.post(url + "/v1/retrieve", json=body, headers={"Authorization": "Bearer another-key"})
        assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "d3"
    finally:
        proc.terminate()
        proc.wait(30)
