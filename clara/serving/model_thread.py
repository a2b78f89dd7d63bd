"""The one thread that runs every model call of a server, retrieval first (DESIGN §9).

The model switches adapters by mutating itself, so its calls must never overlap: one thread runs
them all. Two lanes feed it. Retrieval jobs (encode the queries, search the bank) are short; answer
jobs run a prompt and up to ``max_new_tokens`` decoding steps. Retrieval goes first, and also runs
at the yield points of a running answer (:func:`clara.model.generation.yield_points`: after every
prompt chunk and decoding step), so it waits for one chunk or step rather than a whole batch of long
answers. After :meth:`ModelThread.stop_at`'s deadline the next yield point raises :class:`Draining`,
which ends an answer batch at the server's drain bound.
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable

from clara.model.generation import yield_points

PREFILL_TOKENS = 2048  # prompt tokens per forward over a whole answer batch: retrieval waits for one such chunk


class Draining(RuntimeError):
    """The server's drain time ran out while this work was waiting or running."""


class ModelThread:
    def __init__(self, name: str = "clara-model", prefill_tokens: int = PREFILL_TOKENS):
        self.prefill_tokens = prefill_tokens
        self._jobs: dict[bool, collections.deque] = {True: collections.deque(), False: collections.deque()}
        self._cond = threading.Condition()
        self._closed = False
        self._deadline: float | None = None
        self._yielding = False
        self.interleaved = 0  # retrieval jobs run inside a running answer
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def lane(self, urgent: bool) -> Executor:
        """An executor whose jobs run in this thread: ``urgent`` ones first and between an answer's forwards."""
        return _Lane(self, urgent)

    def submit(self, urgent: bool, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise Draining("the server is shutting down")
            self._jobs[urgent].append((future, fn, args))
            self._cond.notify()
        return future

    def stop_at(self, deadline: float) -> None:
        """From ``deadline`` (time.monotonic) on, a running answer stops at its next yield point."""
        self._deadline = deadline

    def close(self, timeout: float) -> bool:
        """Take no more jobs, cancel the queued ones, wait up to ``timeout`` s for the running one.
        True if the thread has ended (it is a daemon: a model call that cannot stop does not hold up exit)."""
        with self._cond:
            self._closed = True
            queued = [job for jobs in self._jobs.values() for job in jobs]
            for jobs in self._jobs.values():
                jobs.clear()
            self._cond.notify()
        for future, _, _ in queued:
            future.cancel()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _take(self, lanes: tuple[bool, ...]):
        for urgent in lanes:
            if self._jobs[urgent]:
                return urgent, self._jobs[urgent].popleft()
        return None

    def _loop(self) -> None:
        while True:
            with self._cond:
                taken = self._take((True, False))
                while taken is None and not self._closed:
                    self._cond.wait()
                    taken = self._take((True, False))
            if taken is None:
                return
            urgent, job = taken
            if urgent:
                _run(job)
            else:
                with yield_points(self._yield_point, self.prefill_tokens):
                    _run(job)

    def _yield_point(self) -> None:
        """Between two forwards of an answer: stop it past the deadline, else run the retrieval jobs waiting now."""
        if self._yielding:  # a retrieval job that decodes does not nest another round
            return
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise Draining("the server's drain time ran out before this answer was finished")
        self._yielding = True
        try:
            with self._cond:
                waiting = len(self._jobs[True])
            for _ in range(waiting):  # only those waiting now: a stream of retrievals cannot stall the answer
                with self._cond:
                    taken = self._take((True,))
                if taken is None:
                    break
                self.interleaved += 1
                _run(taken[1])
        finally:
            self._yielding = False


def _run(job) -> None:
    future, fn, args = job
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn(*args)
    except BaseException as e:  # noqa: BLE001 - delivered to the caller through its future
        future.set_exception(e)
    else:
        future.set_result(result)


class _Lane(Executor):
    def __init__(self, thread: ModelThread, urgent: bool):
        self.thread = thread
        self.urgent = urgent

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if kwargs:
            raise TypeError("model thread jobs take positional arguments only")
        return self.thread.submit(self.urgent, fn, *args)
