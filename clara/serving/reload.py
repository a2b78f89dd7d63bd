"""A server picks up a bank that changed on disk, without a restart (DESIGN §9).

Every ``reload_s`` seconds the server looks at ``BANK/manifest.json``. A bank swapped into place
(``clara index add`` appending documents, or a rebuild) always brings a new manifest file, so a
changed :func:`~clara.serving.bank.manifest_stamp` means a changed bank. It is opened and verified
in a worker thread, checked against the served model, and swapped in whole: a request in flight
finishes on the bank its batch started with. A bank from another compressor, or one that fails to
open, is refused with an error in the log and in ``/health``; the old bank stays in service.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from clara.serving.bank import MemoryBank, manifest_stamp

log = logging.getLogger(__name__)


async def watch_bank(service, reopen: Callable[[str], MemoryBank], interval_s: float) -> None:
    """Run until cancelled: swap ``service``'s bank for the one at its path whenever the manifest changes."""
    seen = service.bank.stamp
    while True:
        await asyncio.sleep(interval_s)
        directory = service.bank.directory
        stamp = manifest_stamp(directory)
        if stamp is None or stamp == seen:  # None: no manifest at this instant (a swap by two renames)
            continue
        seen = stamp  # tried once per change: a refused bank is not reopened every interval
        try:
            bank = await in_daemon_thread(reopen, directory)
            service.swap_bank(bank)
        except Exception as e:  # noqa: BLE001 - the watcher outlives any one bad bank
            service.bank_error = f"{e}"[:500]
            log.error("kept serving the bank of %d documents; the new one at %s was refused: %s",
                      len(service.bank), directory, e)
            continue
        seen = bank.stamp or stamp


async def in_daemon_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own that exit does not wait for (asyncio.to_thread's would be
    joined at exit: a long sha256 check of a large bank would then outlast the drain bound)."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(result, error) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def work() -> None:
        try:
            outcome = (fn(*args), None)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting task
            outcome = (None, e)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop has closed: nobody waits any more
            pass

    threading.Thread(target=work, name="clara-bank-reload", daemon=True).start()
    return await future
