"""Micro-batching for the server: concurrent requests share one model call.

Requests wait in a bounded asyncio queue; one worker takes the first, gathers more for up to
``max_wait_ms`` or until ``max_batch``, and runs the batch function in an executor so the event
loop keeps accepting requests. A server's batchers have separate queues and workers, and their
executors are lanes of one model thread (:mod:`clara.serving.model_thread`): the model switches
adapters by mutating itself, so its calls must not overlap, and retrieval's lane goes first.
A full queue is refused at once (:class:`QueueFull`, HTTP 429) rather than growing latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Any, Callable, Sequence

from clara.serving.model_thread import Draining

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The request queue is at capacity; the client should retry later."""


class MicroBatcher:
    def __init__(
        self, name: str, run_batch: Callable[[Sequence[Any]], Sequence[Any]], executor: Executor, *,
        max_batch: int = 16, max_wait_ms: float = 5.0, queue_size: int = 256,
    ):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError(f"{name}: max_batch={max_batch}, queue_size={queue_size} >= 1 and max_wait_ms >= 0")
        self.name = name
        self.run_batch = run_batch
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.batches = 0
        self.items = 0
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._worker(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def submit(self, item: Any) -> Any:
        """Queue ``item``; return its result once its batch has run (raises QueueFull if full)."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFull(f"{self.name} queue is full ({self.queue.maxsize} waiting); retry later") from None
        return await future

    async def _gather(self) -> list[tuple[Any, asyncio.Future]]:
        batch = [await self.queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except asyncio.TimeoutError:
                break
        # whatever else is already waiting joins too, up to max_batch, at no extra wait
        while len(batch) < self.max_batch and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # client may have gone
            if not live:
                continue
            try:
                results = await self._run(loop, [item for item, _ in live])
            except Exception as e:  # noqa: BLE001 - one request may have broken the batch: find it
                if isinstance(e, Draining):  # the server's drain time is over: no request is to blame
                    results = [e] * len(live)
                elif len(live) == 1:
                    log.exception("%s request failed", self.name)
                    results = [e]
                else:
                    log.warning("%s batch of %d failed (%s); running its requests one by one", self.name,
                                len(live), e)
                    results = [await self._run_alone(loop, item) for item, _ in live]
            self.batches += 1
            self.items += len(live)
            for (_, fut), result in zip(live, results):
                if fut.done():
                    continue
                if isinstance(result, Exception):  # this item's own error, never its neighbours'
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def _run(self, loop, items: list) -> Sequence[Any]:
        results = await loop.run_in_executor(self.executor, self.run_batch, items)
        if len(results) != len(items):
            raise RuntimeError(f"{self.name}: batch function returned {len(results)} results for {len(items)} items")
        return results

    async def _run_alone(self, loop, item) -> Any:
        try:
            return (await self._run(loop, [item]))[0]
        except Exception as e:  # noqa: BLE001 - delivered to this request alone
            log.exception("%s request failed", self.name)
            return e
