"""The body-read timeout, the accept-error log limit and the start-up bounds (issue 29, row 4)."""

import asyncio
import errno
import logging
import socket
import time

import httpx
import pytest

from clara.cli.main import main
from clara.serving.bank import MemoryBank
from clara.serving.guards import ACCEPT_ERROR, RepeatLimiter, limit_accept_errors
from clara.serving.protocols import HashingModel
from clara.serving.schema import ServerSettings
from clara.serving.server import ServerThread, create_app


@pytest.fixture(scope="module")
def server_url(tmp_path_factory, town_bank):
    bank = town_bank(tmp_path_factory.mktemp("guards"), 6)
    settings = ServerSettings(k_max=8, body_timeout_s=0.5, reload_s=0)
    with ServerThread(create_app(settings, model=HashingModel(4, 64), bank=MemoryBank.open(bank))) as s:
        yield s.url


def read_reply(sock: socket.socket, limit_s: float) -> tuple[bytes, bool]:
    """(everything the server sent within limit_s, whether it closed the connection)."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
        return data, True
    except socket.timeout:
        return data, False
    except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset after the reply
        return data, True


def test_an_incomplete_body_is_cut_off_with_408(server_url):
    port = int(server_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 50\r\n\r\n{\"queries\": [")
        start = time.monotonic()
        reply, closed = read_reply(sock, 10)
    assert reply.startswith(b"HTTP/1.1 408"), reply
    assert b"did not arrive within 0.5 s" in reply and closed
    assert time.monotonic() - start < 5
    # a body trickled in pieces counts as a whole against the same clock
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(10):  # a byte every 0.1 s: never idle for 0.5 s, yet 1 s in all
                sock.sendall(b"1\r\n \r\n")
                time.sleep(0.1)
        except OSError:  # the server has closed the connection
            pass
        reply, closed = read_reply(sock, 10)
    assert reply.startswith(b"HTTP/1.1 408") and closed, reply
    r = httpx.post(server_url + "/v1/retrieve", json={"queries": ["person2"], "k": 1})
    assert r.status_code == 200 and r.json()["results"][0][0]["id"] == "d2"  # a whole body in time is served


def test_repeated_accept_errors_are_one_line_per_interval_with_a_count():
    now = [0.0]
    limiter = RepeatLimiter(ACCEPT_ERROR, interval_s=10.0, clock=lambda: now[0])
    record = lambda msg: logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, (), None)  # noqa: E731
    passed = [limiter.filter(record(ACCEPT_ERROR + "\nsocket: <...>")) for _ in range(1000)]
    assert passed == [True] + [False] * 999
    assert limiter.filter(record("Task exception was never retrieved"))  # other lines are untouched
    now[0] = 10.5
    later = record(ACCEPT_ERROR)
    assert limiter.filter(later) and "999 more like it were not logged" in later.getMessage()
    assert not limiter.filter(record(ACCEPT_ERROR))


def test_the_server_limits_the_asyncio_accept_error_log(caplog):
    """What asyncio itself logs when accept() fails with EMFILE, 500 times in a row: one line gets through."""
    limit_accept_errors()

    async def storm():
        loop = asyncio.get_running_loop()
        for _ in range(500):
            loop.call_exception_handler({"message": ACCEPT_ERROR, "exception": OSError(errno.EMFILE, "Too many open files")})

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        asyncio.run(storm())
    lines = [r for r in caplog.records if ACCEPT_ERROR in r.getMessage()]
    assert len(lines) <= 1


@pytest.mark.parametrize("flag, value, message", [
    ("--drain-seconds", "inf", "drain_s=inf must be between 0 and 3600 s"),
    ("--drain-seconds", "nan", "drain_s=nan must be between 0 and 3600 s"),
    ("--body-timeout", "0", "body_timeout_s=0.0 must be between 0.01 and 3600 s"),
    ("--reload-seconds", "0.001", "reload_s=0.001 must be 0 (never) or at least 0.1 s"),
    ("--k-max", "100000", "k_max=100000 must be between 1 and 1024"),
    ("--max-body-bytes", str(1 << 40), "max_body_bytes=1099511627776 must be between 1 and 1073741824 bytes"),
])
def test_serve_flags_are_bounded_at_start_up(tmp_path, capsys, flag, value, message):
    # refused before the bank or the model is touched (neither exists here)
    assert main(["serve", "--bank", str(tmp_path / "none"), "--model", "hashing:m=4,h=32", flag, value]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: server setting {message}"


def test_an_empty_api_key_file_is_one_line(tmp_path, capsys):
    (tmp_path / "key").write_text("\n")
    assert main(["serve", "--bank", str(tmp_path / "none"), "--model", "hashing:m=4,h=32",
                 "--api-key-file", str(tmp_path / "key")]) == 1
    assert capsys.readouterr().err.strip() == f"error: --api-key-file {tmp_path / 'key'}: the file is empty; write the key on its first line"
