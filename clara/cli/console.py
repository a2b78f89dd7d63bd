"""What a command prints: our logging format, and known-harmless library noise kept out of it.

Progress bars and summaries stay; ``--verbose`` shows everything, library noise included.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


_DEEPSPEED_GUESS = _DropMessages("Setting accelerator to CPU")


def quiet_library_noise() -> None:
    """Silence, at each library's own logger, the lines that look like failures but are not.

    - DeepSpeed, imported by accelerate whenever it is installed (peft imports accelerate),
      warns "Setting accelerator to CPU" on every machine without CUDA: the right choice here.
      Its logger is configured at import with its own handler; a filter set on it before the
      import stays on it.
    - faiss's loader logs at INFO every instruction-set build it tries, including a
      ``ModuleNotFoundError`` for the AVX2 build on wheels that ship others; it then loads one.
    """
    logging.getLogger("DeepSpeed").addFilter(_DEEPSPEED_GUESS)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def configure_logging(verbose: bool = False, fmt: str = LOG_FORMAT) -> None:
    """Logging for a command: INFO and our format; ``verbose`` gives DEBUG and every library line."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, datefmt="%H:%M:%S")
    if not verbose:
        quiet_library_noise()
