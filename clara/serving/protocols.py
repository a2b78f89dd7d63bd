"""What the memory bank and the server need from a model, and how ``--model`` is loaded.

The bank and server talk to a model through three small protocols, so the real
:class:`clara.model.clara_model.ClaraModel` and a deterministic stand-in are interchangeable:

- :class:`Compressor`: ``compress(texts) -> (B, m, H)``, ``num_mem``, ``hidden_size``;
- :class:`QueryEncoder`: ``encode_query(questions) -> (B, m, H)`` in the space of ``compress``;
- :class:`Generator`: ``generate(questions, mem_blocks (B, k, m, H), max_new_tokens=...)``.

:func:`compressor_hash` names the compressor's identity (backbone, memory size and the exact
compressor weights): a bank records it and a server refuses a bank built by another one.

``--model`` accepts a directory written by ``ClaraModel.save_adapters`` or ``hashing:m=4,h=64``,
the :class:`HashingModel`: feature-hashed bag of words in the shape of memory states. It is a
test double and a lexical baseline, never a trained system.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

from clara.errors import ConfigError

log = logging.getLogger(__name__)

HASHING_PREFIX = "hashing:"


@runtime_checkable
class Compressor(Protocol):
    num_mem: int
    hidden_size: int

    def compress(self, texts: Sequence[str]): ...


@runtime_checkable
class QueryEncoder(Protocol):
    def encode_query(self, questions: Sequence[str]): ...


@runtime_checkable
class Generator(Protocol):
    """The server also passes ``reply_prefixes`` and ``stop`` (see ``clara.model.prompts.generate_asked``), and
    sizes a request with ``token_counter()`` where a model has one (its question's UTF-8 bytes otherwise)."""

    def generate(self, questions: Sequence[str], mem_blocks=None, *, max_new_tokens: int = 64, **kw) -> list[str]: ...


_WORD = re.compile(r"\w+", re.UNICODE)


class HashingModel:
    """Deterministic bag-of-words memory: each word adds ±1 at a hashed (slot, dim) of (m, H).

    Documents and questions sharing words get a positive cosine, so retrieval through it is
    meaningful in tests. ``delay_s`` makes every call slow (for queue-full tests).
    """

    def __init__(self, num_mem: int = 4, hidden_size: int = 64, seed: int = 0, delay_s: float = 0.0):
        if num_mem < 1 or hidden_size < 1:
            raise ConfigError(f"hashing model: m={num_mem} and h={hidden_size} must be at least 1")
        self.num_mem = num_mem
        self.hidden_size = hidden_size
        self.seed = seed
        self.delay_s = delay_s
        self.calls = {"compress": 0, "encode_query": 0, "generate": 0}

    def compressor_hash(self) -> str:
        return hashlib.sha256(f"hashing:m={self.num_mem},h={self.hidden_size},seed={self.seed}".encode()).hexdigest()[:16]

    def _encode(self, texts: Sequence[str]):
        import torch

        out = torch.zeros(len(texts), self.num_mem, self.hidden_size)  # (B, m, H)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                d = hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=8).digest()
                v = int.from_bytes(d, "little")
                slot, dim, sign = v % self.num_mem, (v >> 16) % self.hidden_size, 1.0 if (v >> 40) & 1 else -1.0
                out[i, slot, dim] += sign
        return out

    def _wait(self, what: str) -> None:
        self.calls[what] += 1
        if self.delay_s:
            time.sleep(self.delay_s)

    def compress(self, texts: Sequence[str]):
        self._wait("compress")
        return self._encode(texts)

    def encode_query(self, questions: Sequence[str]):
        self._wait("encode_query")
        return self._encode(questions)

    def token_counter(self):
        """A question's tokens for the server's work budget: its words, as ``_encode`` reads them."""
        return lambda text: len(_WORD.findall(text))

    def generate(self, questions: Sequence[str], mem_blocks=None, *, max_new_tokens: int = 64, **_) -> list[str]:
        self._wait("generate")
        k = 0 if mem_blocks is None else int(mem_blocks.shape[1])
        answers = []
        for i, q in enumerate(questions):
            energy = 0.0 if mem_blocks is None else float(mem_blocks[i].float().abs().sum())
            words = f"hashing answer to '{q}' from {k} memories (energy {energy:.0f})".split()
            answers.append(" ".join(words[:max_new_tokens]))
        return answers


def parse_hashing_spec(spec: str) -> HashingModel:
    """``hashing:m=4,h=64,seed=0,delay=0`` -> HashingModel."""
    keys = {"m": "num_mem", "h": "hidden_size", "seed": "seed", "delay": "delay_s"}
    kwargs = {}
    body = spec[len(HASHING_PREFIX):]
    for part in filter(None, body.split(",")):
        name, _, value = part.partition("=")
        if name not in keys or not value:
            raise ConfigError(f"--model {spec}: bad item {part!r}; use hashing:m=INT,h=INT[,seed=INT][,delay=SECONDS]")
        try:
            kwargs[keys[name]] = float(value) if name == "delay" else int(value)
        except ValueError:
            raise ConfigError(f"--model {spec}: {name}={value!r} is not a number") from None
    return HashingModel(**kwargs)


def compressor_hash(model) -> str:
    """Identity of the compressor that wrote memory: a bank from another compressor is refused."""
    return model.compressor_hash()


def load_model(spec: str | Path, backbone: str | Path | None = None, precision: str = "auto"):
    """Load ``--model``: ``hashing:...`` or an adapters directory (``ClaraModel.save_adapters``), whose
    recorded backbone is used unless ``backbone`` is given, its forwards in ``precision``
    (:func:`clara.model.loading.load_trained_model`; the hashing stand-in has no precision)."""
    spec = str(spec)
    if spec.startswith(HASHING_PREFIX):
        return parse_hashing_spec(spec)
    from clara.model.loading import MissingAdaptersError, load_trained_model

    try:
        return load_trained_model(spec, backbone, precision=precision)
    except MissingAdaptersError as e:
        raise MissingAdaptersError(f"{e}, or hashing:m=4,h=64 for the lexical stand-in") from None
