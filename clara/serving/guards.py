"""What keeps the server stoppable and its log readable (DESIGN §9): the body limits, the API key,
the drain clock and the accept-error log limit.

- :class:`BodyLimit`: 413 above the size limit, 408 when a body does not arrive whole in time;
- :class:`ApiKey`: every path but ``/health`` needs ``Authorization: Bearer <key>``, else 401;
- :class:`Drain`: started by the exit signal; when it runs out, waiting requests get 503;
- :class:`RepeatLimiter`: one ``socket.accept() out of system resource`` line per interval, with a count.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from pathlib import Path
from typing import Awaitable, Callable, TypeVar

from fastapi.responses import JSONResponse

from clara.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

ERROR_TYPES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               408: "request_timeout", 413: "payload_too_large", 422: "validation_error", 429: "queue_full",
               500: "internal_error", 503: "not_ready"}


def error_response(code: int, message: str, headers: dict | None = None) -> JSONResponse:
    body = {"error": {"code": code, "type": ERROR_TYPES.get(code, "error"), "message": message}}
    return JSONResponse(body, status_code=code, headers=headers)


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


SHUTTING_DOWN = "the server is shutting down; retry on another instance or after it restarts"


class Drain:
    """The drain clock. :meth:`start` (any thread, a signal handler included) gives in-flight requests
    ``seconds`` to finish; after that :meth:`within` answers 503 for whatever still waits."""

    def __init__(self):
        self.deadline: float | None = None  # time.monotonic() at which the drain time is over
        self._loop: asyncio.AbstractEventLoop | None = None
        self._over: asyncio.Event | None = None
        self._callbacks: list[Callable[[float], None]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop, self._over = loop, asyncio.Event()

    def on_start(self, callback: Callable[[float], None]) -> None:
        """``callback(deadline)`` when the drain starts (the model thread's stop time)."""
        self._callbacks.append(callback)

    def start(self, seconds: float) -> None:
        if self.deadline is not None or self._loop is None:
            return
        self.deadline = time.monotonic() + seconds
        log.info("draining: in-flight requests have %.1f s to finish", seconds)
        for callback in self._callbacks:
            callback(self.deadline)
        self._loop.call_soon_threadsafe(self._loop.call_later, seconds, self._over.set)

    @property
    def over(self) -> bool:
        return self._over is not None and self._over.is_set()

    async def within(self, awaitable: Awaitable[T]) -> T:
        """The result of ``awaitable``, or ApiError 503 if the drain time runs out first."""
        if self._over is None:
            return await awaitable
        task = asyncio.ensure_future(awaitable)
        over = asyncio.ensure_future(self._over.wait())
        try:
            done, _ = await asyncio.wait({task, over}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            over.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise ApiError(503, SHUTTING_DOWN)


# uvicorn drains an unread body after an early response and keeps the connection; closing it
# instead made clients that were still uploading see resets (load test: 392 of 416 lost).
# Only an absurd declared size, or a body that stopped coming, gets the connection closed.
DRAIN_FACTOR = 64


class BodyLimit:
    """ASGI middleware: 413 when Content-Length or the bytes actually sent exceed the limit; 408 when
    the body has not arrived whole ``timeout_s`` after the request began (503 once the drain is over).

    The body is read here (at most limit + one chunk) and replayed to the app, so a client
    that lies about, or omits, Content-Length is caught too.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float, drain: Drain):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.drain = drain

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body exceeds {self.max_bytes} bytes; send fewer or shorter queries"
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await error_response(400, "Content-Length is not an integer")(scope, receive, send)
            if size > self.max_bytes:
                close = {"Connection": "close"} if size > DRAIN_FACTOR * self.max_bytes else None
                return await error_response(413, too_big, headers=close)(scope, receive, send)
        body, more = bytearray(), True
        deadline = time.monotonic() + self.timeout_s
        while more:
            try:
                message = await self.drain.within(asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic())))
            except asyncio.TimeoutError:
                slow = f"the request body did not arrive within {self.timeout_s:g} s; send it whole, faster"
                return await error_response(408, slow, headers={"Connection": "close"})(scope, receive, send)
            except ApiError as e:
                return await error_response(e.code, e.message, headers={"Connection": "close"})(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await error_response(413, too_big)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


OPEN_PATHS = frozenset({"/health"})  # load balancers probe it without a key


class ApiKey:
    """ASGI middleware: every path but ``/health`` needs ``Authorization: Bearer <key>``; 401 otherwise."""

    def __init__(self, app, key: str):
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        scheme, _, token = dict(scope.get("headers") or []).get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        problem = "wrong API key" if scheme else "no API key"
        return await error_response(401, f"{problem}: send the header 'Authorization: Bearer <key>'",
                                    headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def read_api_key(path: str | Path) -> str:
    """The key in ``path``: one line of printable characters, surrounding whitespace ignored."""
    path = Path(path)
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--api-key-file {path}: cannot read it ({e})") from None
    if not key:
        raise ConfigError(f"--api-key-file {path}: the file is empty; write the key on its first line")
    if any(c.isspace() or not c.isprintable() for c in key) or not key.isascii():
        raise ConfigError(f"--api-key-file {path}: the key must be one word of printable ASCII (no spaces, "
                          "one line)")
    return key


ACCEPT_ERROR = "socket.accept() out of system resource"


class RepeatLimiter(logging.Filter):
    """Lets one record containing ``marker`` through per ``interval_s``; the next one let through says how
    many were dropped. asyncio logs the accept error once per waiting connection, on every retry, while the
    process is out of file descriptors: 465,661 lines (33 MB) in 10 s in one test (issue 29)."""

    def __init__(self, marker: str = ACCEPT_ERROR, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.marker = marker
        self.interval_s = interval_s
        self.clock = clock
        self._last: float | None = None
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self.marker not in message:
            return True
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last < self.interval_s:
                self._dropped += 1
                return False
            dropped, self._dropped, self._last = self._dropped, 0, now
        if dropped:
            record.msg, record.args = f"{message}\n({dropped} more like it were not logged)", ()
        return True


def limit_accept_errors(interval_s: float = 10.0) -> RepeatLimiter:
    """Install (once) the :class:`RepeatLimiter` on the asyncio logger, which logs accept errors."""
    logger = logging.getLogger("asyncio")
    for existing in logger.filters:
        if isinstance(existing, RepeatLimiter) and existing.marker == ACCEPT_ERROR:
            return existing
    limiter = RepeatLimiter(ACCEPT_ERROR, interval_s)
    logger.addFilter(limiter)
    return limiter
